"""The data quality gate: what a labelled file must pass before anything of it is stored for training.

`parse_records` reads JSONL (`{"text", "label", "title"?, "id"?, "negative"?}` per line, as
../shared/data) or CSV (header with `text` and `label`, optional `title` and `negative`); a record
that does not fit the schema raises SchemaError naming the row (1-based line of the file) and the field, answered 400.

`run_gate` then, in this order, for every row:
1. masks personal data in title and text with services.common.pii.mask_pii (the platform's one
   masking rule): nothing after this step sees the raw text, and only masked text is returned;
2. drops empty texts and texts over `max_chars`;
3. drops rows whose label is not in the task's label set (when one is known);
4. drops rows that are in the task's evaluation set (leakage: same normalised text);
5. drops exact duplicates (same normalised text: the first is kept; the same text under two labels
   is a conflict and all its rows are dropped) and near duplicates (character 5-gram Jaccard ≥
   `near_threshold`, found with MinHash banding and then checked exactly);
6. reports label counts, class balance (largest / smallest class), length distribution.
The version is `blocked` (never trainable) when fewer than `min_rows` rows or fewer than two labels
remain; otherwise it waits for an admin's review.

A *negative* row (`negative: true`; from the feedback path: a model tag a person removed) says the
text is NOT its label. Negatives pass steps 1-4 like any row and are de-duplicated by (text, label);
a positive row with the same text and label as a negative is dropped (`contradicted_by_negative`);
negatives never count towards the rows, labels or balance that decide whether a version is blocked.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.pii import count_pii, mask_pii

MAX_LISTED = 50       # row numbers listed per issue in the report
_SPACE = re.compile(r"\s+")


class SchemaError(ValueError):
    """A record that does not fit the schema: `row` is its 1-based line in the file, `field` the key."""

    def __init__(self, message: str, *, row: int | None, field: str) -> None:
        super().__init__(message)
        self.row = row
        self.field = field


@dataclass(frozen=True)
class Record:
    row: int            # 1-based line of the file (CSV: the header is line 1)
    text: str
    label: str
    title: str | None = None
    negative: bool = False   # the text is NOT `label` (a model tag a person removed)


@dataclass(frozen=True)
class GateSettings:
    max_chars: int = 200_000
    min_rows: int = 10
    near_threshold: float = 0.9
    min_per_label: int = 5          # fewer rows of a label is a warning (the class is too small to learn)
    imbalance_warning: float = 20.0  # largest / smallest class above this is a warning


@dataclass
class GateResult:
    rows: list[Record]              # kept rows, masked, in file order
    report: dict[str, Any]
    stats: dict[str, Any]
    blocked: bool
    content_sha256: str = ""
    issues: dict[str, list[int]] = field(default_factory=dict)


def parse_records(data: bytes, fmt: str) -> list[Record]:
    """Records of a JSONL or CSV file (UTF-8, a BOM allowed)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"the file is not UTF-8 (byte {exc.start})", row=None, field="file") from None
    records = _parse_jsonl(text) if fmt == "jsonl" else _parse_csv(text)
    if not records:
        raise SchemaError("the file has no records", row=None, field="file")
    return records


def _field(value: Any, row: int, name: str, *, required: bool) -> str | None:
    if value is None or (isinstance(value, str) and not required and value == ""):
        if required:
            raise SchemaError(f"row {row}: '{name}' is missing", row=row, field=name)
        return None
    if not isinstance(value, str):
        raise SchemaError(f"row {row}: '{name}' must be a string, not {type(value).__name__}", row=row, field=name)
    return value


def _record(obj: dict[str, Any], row: int) -> Record:
    text = _field(obj.get("text"), row, "text", required=True)
    label = _field(obj.get("label"), row, "label", required=True)
    title = _field(obj.get("title"), row, "title", required=False)
    negative = _negative(obj.get("negative"), row)
    assert text is not None and label is not None
    label = unicodedata.normalize("NFC", label).strip()
    if not label or len(label) > 100 or any(unicodedata.category(c) == "Cc" for c in label):
        raise SchemaError(f"row {row}: 'label' must be 1-100 characters without control characters",
                          row=row, field="label")
    return Record(row, text, label, title, negative)


def _negative(value: Any, row: int) -> bool:
    """JSONL: true/false (or absent); CSV: "true"/"false"/"1"/"0" or empty."""
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "false", "0"):
        return value.strip().lower() in ("true", "1")
    raise SchemaError(f"row {row}: 'negative' must be true or false", row=row, field="negative")


def _parse_jsonl(text: str) -> list[Record]:
    records = []
    for row, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"row {row}: not a JSON object ({exc.msg})", row=row, field="file") from None
        if not isinstance(obj, dict):
            raise SchemaError(f"row {row}: not a JSON object", row=row, field="file")
        records.append(_record(obj, row))
    return records


def _parse_csv(text: str) -> list[Record]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    for name in ("text", "label"):
        if name not in header:
            raise SchemaError(f"the CSV header has no '{name}' column", row=1, field=name)
    try:
        return [_record(dict(obj), reader.line_num) for obj in reader]
    except csv.Error as exc:
        raise SchemaError(f"row {reader.line_num}: {exc}", row=reader.line_num, field="file") from None


def normalise(text: str) -> str:
    """The form duplicates and leakage are compared in: NFC, lower case, whitespace collapsed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip().lower()


def text_key(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def document_text(title: str | None, text: str) -> str:
    """What the model reads (as services.model_training.evaluation.document_text): title, then body."""
    title = (title or "").strip()
    body = text.strip()
    return f"{title}\n{body}" if title else body


def content_sha256(rows: Iterable[Record]) -> str:
    """The version's address: SHA-256 over the stored rows (masked title, text, label), in order.
    A negative row adds its flag (so positive-only versions keep the address they had before)."""
    digest = hashlib.sha256()
    for r in rows:
        fields: list[Any] = [r.title, r.text, r.label, *(["negative"] if r.negative else [])]
        digest.update(json.dumps(fields, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


# -- near duplicates ------------------------------------------------------------------------------------
_PRIME = (1 << 61) - 1
_PERMS = 64
_BANDS = 16
_rng = np.random.default_rng(20261130)
_A = _rng.integers(1, _PRIME, _PERMS, dtype=np.uint64)
_B = _rng.integers(0, _PRIME, _PERMS, dtype=np.uint64)


def shingles(text: str, k: int = 5) -> set[int]:
    s = normalise(text)
    if len(s) <= k:
        return {zlib.crc32(s.encode("utf-8"))}
    return {zlib.crc32(s[i:i + k].encode("utf-8")) for i in range(len(s) - k + 1)}


def _minhash(sh: set[int]) -> np.ndarray:
    x = np.fromiter(sh, dtype=np.uint64, count=len(sh))
    # (a*x + b) mod p on uint64 wraps; good enough as a hash family for banding (checked exactly after).
    return np.asarray(((np.outer(_A, x) + _B[:, None]) % np.uint64(_PRIME)).min(axis=1), dtype=np.uint64)


def near_duplicates(texts: list[str], threshold: float) -> dict[int, int]:
    """index → the earlier index it nearly duplicates (character 5-gram Jaccard ≥ threshold)."""
    sets = [shingles(t) for t in texts]
    buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    rows = _PERMS // _BANDS
    found: dict[int, int] = {}
    for i, sh in enumerate(sets):
        sig = _minhash(sh)
        candidates: set[int] = set()
        for band in range(_BANDS):
            key = (band, sig[band * rows:(band + 1) * rows].tobytes())
            candidates.update(buckets[key])
            buckets[key].append(i)
        for j in sorted(candidates):
            if j in found:
                continue
            inter = len(sh & sets[j])
            if inter / (len(sh) + len(sets[j]) - inter) >= threshold:
                found[i] = j
                break
    return found


# -- the gate -----------------------------------------------------------------------------------------------
def _length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    arr = np.array(lengths)
    return {"min": int(arr.min()), "p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)), "max": int(arr.max()), "mean": round(float(arr.mean()), 1)}


def statistics(rows: list[Record]) -> dict[str, Any]:
    """`rows` and `labels` count positive rows; `negatives` the negative rows per label (when any)."""
    positive = [r for r in rows if not r.negative]
    labels = Counter(r.label for r in positive)
    stats = {"rows": len(positive), "labels": dict(sorted(labels.items())),
             "length_chars": _length_stats([len(document_text(r.title, r.text)) for r in positive])}
    negatives = Counter(r.label for r in rows if r.negative)
    if negatives:
        stats["negatives"] = dict(sorted(negatives.items()))
    return stats


def run_gate(records: list[Record], settings: GateSettings, *, label_set: frozenset[str] | None,
             eval_keys: frozenset[str], eval_set: dict[str, Any] | None) -> GateResult:
    issues: dict[str, list[int]] = defaultdict(list)
    pii: Counter[str] = Counter()
    masked: list[Record] = []
    for r in records:   # 1. mask first: nothing below reads raw text
        for part in (r.title or "", r.text):
            pii.update(count_pii(part))
        masked.append(Record(r.row, mask_pii(r.text), r.label, mask_pii(r.title) if r.title else r.title,
                             r.negative))
    kept: list[Record] = []
    for r in masked:
        body = document_text(r.title, r.text)
        if not r.text.strip():
            issues["empty_text"].append(r.row)
        elif len(body) > settings.max_chars:
            issues["too_long"].append(r.row)
        elif label_set is not None and r.label not in label_set:
            issues["unknown_label"].append(r.row)
        elif text_key(body) in eval_keys:
            issues["in_evaluation_set"].append(r.row)
        else:
            kept.append(r)
    negatives = _negatives([r for r in kept if r.negative], issues)
    rejected = {(text_key(document_text(r.title, r.text)), r.label) for r in negatives}
    positives = []
    for r in kept:
        if r.negative:
            continue
        if (text_key(document_text(r.title, r.text)), r.label) in rejected:
            issues["contradicted_by_negative"].append(r.row)
        else:
            positives.append(r)
    kept = positives
    # exact duplicates and label conflicts
    by_key: dict[str, list[Record]] = defaultdict(list)
    for r in kept:
        by_key[text_key(document_text(r.title, r.text))].append(r)
    unique: list[Record] = []
    for r in kept:
        group = by_key[text_key(document_text(r.title, r.text))]
        if len({g.label for g in group}) > 1:
            issues["conflicting_labels"].append(r.row)
        elif group[0] is not r:
            issues["exact_duplicate"].append(r.row)
        else:
            unique.append(r)
    near = near_duplicates([document_text(r.title, r.text) for r in unique], settings.near_threshold)
    final = [r for i, r in enumerate(unique) if i not in near]
    issues["near_duplicate"].extend(unique[i].row for i in sorted(near))
    final = sorted([*final, *negatives], key=lambda r: r.row)   # file order
    positive_rows = sum(1 for r in final if not r.negative)

    stats = statistics(final)
    counts = stats["labels"]
    warnings: list[str] = []
    blocking: list[str] = []
    small = sorted(label for label, n in counts.items() if n < settings.min_per_label)
    if small:
        warnings.append(f"labels with fewer than {settings.min_per_label} rows: {', '.join(small)}")
    balance = (max(counts.values()) / min(counts.values())) if counts else None
    if balance is not None and balance > settings.imbalance_warning:
        warnings.append(f"class imbalance: the largest class has {balance:.1f}× the rows of the smallest")
    if label_set is not None:
        missing = sorted(label_set - set(counts))
        if missing:
            warnings.append(f"labels of the task without any row: {', '.join(missing)}")
    if positive_rows < settings.min_rows:
        blocking.append(f"only {positive_rows} rows passed the gate (at least {settings.min_rows} are needed)")
    if len(counts) < 2:
        blocking.append("fewer than two labels passed the gate")
    report = {
        "rows_in": len(records), "rows_kept": positive_rows, "negative_rows_kept": len(negatives),
        "dropped": {k: {"count": len(v), "rows": v[:MAX_LISTED]} for k, v in issues.items() if v},
        "pii_masked": dict(sorted(pii.items())),
        "class_balance": {"largest_to_smallest": round(balance, 2) if balance else None,
                          "small_labels": small},
        "label_set": sorted(label_set) if label_set is not None else None,
        "evaluation_set": eval_set,
        "warnings": warnings, "blocking": blocking,
        "settings": {"max_chars": settings.max_chars, "near_threshold": settings.near_threshold,
                     "min_rows": settings.min_rows},
    }
    return GateResult(final, report, stats, bool(blocking), content_sha256(final), dict(issues))


def _negatives(rows: list[Record], issues: dict[str, list[int]]) -> list[Record]:
    """The negative rows with each (text, label) once; repeats are `exact_duplicate`."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for r in rows:
        key = (text_key(document_text(r.title, r.text)), r.label)
        if key in seen:
            issues["exact_duplicate"].append(r.row)
        else:
            seen.add(key)
            kept.append(r)
    return kept
