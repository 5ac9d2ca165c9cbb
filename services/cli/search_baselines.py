"""Classical baselines for `doctag search eval --baselines`, run in-process on the same corpus and queries.

- `bm25_kiwi`: plain Okapi BM25 (k1 1.2, b 0.75, one field: title + text) over the Kiwi terms of
  services/common/korean.py, the analyser the platform indexes with; no operators, no title boost.
- `tantivy_bigrams`: Tantivy (the `tantivy` package, MIT) over Hangul character bigrams (how
  paperless-ngx-style indexes read Korean): each Hangul run becomes its overlapping bigrams (a
  lone syllable stays itself), Latin letters and digits stay whole words, lower-cased; a query
  is the OR of its tokens, ranked by Tantivy's BM25.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

K1 = 1.2
B = 0.75
_WORD = re.compile(r"\w+")
_HANGUL_RUN = re.compile(r"[\uac00-\ud7a3]+|[^\uac00-\ud7a3]+")


class Doc(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def text(self) -> str: ...


def hangul_bigrams(text: str) -> list[str]:
    tokens: list[str] = []
    for word in _WORD.findall(text.lower()):
        for part in _HANGUL_RUN.findall(word):
            if "\uac00" <= part[0] <= "\ud7a3" and len(part) > 1:
                tokens.extend(part[i:i + 2] for i in range(len(part) - 1))
            elif part.strip("_"):
                tokens.append(part)
    return tokens


def bm25_kiwi(corpus: Sequence[Doc], queries: Sequence[tuple[str, str]], k: int = 10) -> dict[str, list[str]]:
    from services.common.korean import analyze

    docs = [Counter(analyze(f"{d.title}\n{d.text}")) for d in corpus]
    lengths = [sum(c.values()) for c in docs]
    avg = max(sum(lengths) / max(len(docs), 1), 1.0)
    df: Counter[str] = Counter()
    postings: dict[str, list[int]] = {}
    for i, counts in enumerate(docs):
        for term in counts:
            df[term] += 1
            postings.setdefault(term, []).append(i)
    n = len(docs)
    runs: dict[str, list[str]] = {}
    for qid, text in queries:
        scores: dict[int, float] = {}
        for term in set(analyze(text)):
            idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
            for i in postings.get(term, ()):
                tf = docs[i][term]
                scores[i] = scores.get(i, 0.0) + idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * lengths[i] / avg))
        best = sorted(scores, key=lambda i: (-scores[i], i))[:k]
        runs[qid] = [corpus[i].id for i in best]
    return runs


def tantivy_bigrams(corpus: Sequence[Doc], queries: Sequence[tuple[str, str]], k: int = 10) -> dict[str, list[str]]:
    import tantivy

    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw")
    builder.add_text_field("body", tokenizer_name="whitespace")
    schema = builder.build()
    index = tantivy.Index(schema)
    writer = index.writer(50_000_000, 1)
    for d in corpus:
        writer.add_document(tantivy.Document(id=d.id, body=" ".join(hangul_bigrams(f"{d.title}\n{d.text}"))))
    writer.commit()
    index.reload()
    searcher = index.searcher()
    runs: dict[str, list[str]] = {}
    for qid, text in queries:
        tokens = sorted(set(hangul_bigrams(text)))
        if not tokens:
            runs[qid] = []
            continue
        query = tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, tantivy.Query.term_query(schema, "body", t)) for t in tokens])
        runs[qid] = [searcher.doc(address)["id"][0] for _, address in searcher.search(query, k).hits]
    return runs
