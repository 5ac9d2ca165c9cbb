"""The search development set: queries and judgements are committed (tests/data/search_dev),
the corpus is built from ../shared/data at run time (that data is never copied into the repo).

Corpus: the first 300 petitions (title + text) and the first 200 headlines (the headline is
the title, there is no body), as `{"id","title","text"}` lines for `doctag search eval`.

    python -m tests.search_devset ../shared/data /tmp/corpus.jsonl
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

DEV_DIR = Path(__file__).resolve().parent / "data" / "search_dev"
QUERIES = DEV_DIR / "queries.jsonl"
QRELS = DEV_DIR / "qrels.tsv"
N_PETITIONS = 300
N_HEADLINES = 200


def corpus_rows(data_dir: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    with (data_dir / "petitions_train.jsonl").open(encoding="utf-8") as f:
        for line in itertools.islice(f, N_PETITIONS):
            r = json.loads(line)
            rows.append({"id": r["id"], "title": r["title"], "text": r["text"]})
    with (data_dir / "headlines_train.jsonl").open(encoding="utf-8") as f:
        for line in itertools.islice(f, N_HEADLINES):
            r = json.loads(line)
            rows.append({"id": r["id"], "title": r["text"], "text": ""})
    return rows


def write_corpus(data_dir: Path, out: Path) -> Path:
    with out.open("w", encoding="utf-8") as f:
        for row in corpus_rows(data_dir):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


if __name__ == "__main__":
    print(write_corpus(Path(sys.argv[1]), Path(sys.argv[2])))
