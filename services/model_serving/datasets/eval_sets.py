"""The fixed, versioned evaluation set of each task: `<DOCTAG_EVAL_SETS_DIR>/<task>.jsonl`.

Records are shaped like the training data (`text`, optional `title`, `label`). Its version is the
file's SHA-256: every evaluation and every leakage check names it. `doctag model eval-sets` (the
training package) writes them from ../shared/data as the training's own seeded validation split,
the split no training or selection step reads.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .gate import document_text, text_key

TASK_RE = re.compile(r"^[a-z][a-z0-9_-]{0,40}$")


@dataclass(frozen=True)
class EvalSet:
    task: str
    sha256: str
    texts: list[str]
    labels: list[str]

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(text_key(t) for t in self.texts)

    def describe(self) -> dict[str, object]:
        return {"task": self.task, "sha256": self.sha256, "rows": len(self.texts)}


def load_eval_set(directory: Path, task: str) -> EvalSet | None:
    """The task's evaluation set, or None when there is none."""
    if not TASK_RE.match(task):
        return None
    path = directory / f"{task}.jsonl"
    if not path.is_file():
        return None
    data = path.read_bytes()
    texts, labels = [], []
    for line in data.decode("utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            texts.append(document_text(record.get("title"), str(record["text"])))
            labels.append(str(record["label"]))
    return EvalSet(task, hashlib.sha256(data).hexdigest(), texts, labels)
