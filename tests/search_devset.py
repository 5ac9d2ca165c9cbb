"""The search development set: queries and judgements are committed (tests/data/search_dev),
the corpus is built from ../shared/data at run time (that data is never copied into the repo).

Corpus: the first 300 petitions (title + text) and the first 200 headlines (the headline is
the title, there is no body), as `{"id","title","text"}` lines for `doctag search eval`.

    python -m tests.search_devset ../shared/data /tmp/corpus.jsonl

A second, larger and harder set, generated whole from ../shared/data: known-item search with
petition titles as the queries (`known-item`). Each of 2,000 petitions (those after the first 300)
is a document without its title; its title, written by the citizen as a summary in other words
than the text (questions, demands, slogans), is the query, and that petition the one relevant
document. It judges ranking at a size where bigrams, BM25 and the embeddings disagree.

    python -m tests.search_devset known-item ../shared/data /tmp/known-item
    doctag search eval --corpus /tmp/known-item/corpus.jsonl --queries /tmp/known-item/queries.jsonl \
        --qrels /tmp/known-item/qrels.tsv --baselines
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
KNOWN_ITEMS = 2000


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


def write_known_item(data_dir: Path, out_dir: Path, size: int = KNOWN_ITEMS) -> Path:
    """corpus.jsonl, queries.jsonl and qrels.tsv of the known-item set in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "petitions_train.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in itertools.islice(f, N_PETITIONS, N_PETITIONS + size)]
    rows = [r for r in rows if r["title"].strip() and r["text"].strip()]
    with (out_dir / "corpus.jsonl").open("w", encoding="utf-8") as corpus, \
            (out_dir / "queries.jsonl").open("w", encoding="utf-8") as queries, \
            (out_dir / "qrels.tsv").open("w", encoding="utf-8") as qrels:
        for r in rows:
            corpus.write(json.dumps({"id": r["id"], "title": "", "text": r["text"]}, ensure_ascii=False) + "\n")
            queries.write(json.dumps({"id": f"t-{r['id']}", "text": " ".join(r["title"].split())[:200]},
                                     ensure_ascii=False) + "\n")
            qrels.write(f"t-{r['id']}\t{r['id']}\t1\n")
    return out_dir


if __name__ == "__main__":
    if sys.argv[1] == "known-item":
        print(write_known_item(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        print(write_corpus(Path(sys.argv[1]), Path(sys.argv[2])))
