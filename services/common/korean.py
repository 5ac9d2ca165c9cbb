"""Korean analysis for ranked search (kiwipiepy): one analyser for documents and queries.

Korean attaches particles and endings to words (예산을, 예산이, 예산은), so raw words never
match the bare word. Index and query both go through `morphemes` (terms with their
offsets; `analyze` gives just the terms), so a query term and a document term meet exactly
when they were written alike. What becomes a term:

- content morphemes: nouns, foreign words, numbers, Chinese characters, roots, and verb or
  adjective stems as dictionary forms (늘렸다 -> 늘리다), lower-cased;
- compounds both whole and by their parts: Kiwi splits 디지털정부혁신 into nouns, and
  the concatenation of adjacent nouns written together (2 to 4 of them) is a term too; a
  long noun Kiwi keeps whole (운전면허) is also split into its parts when Kiwi can split
  it into nouns of two or more syllables. So 운전면허 and 운전 면허 share 운전 and 면허;
- codes kept whole: ASCII letters and digits joined by - _ . / : or parentheses, or mixing
  letters and digits (W-2, W2 -> w2; 401(k) -> 401k; F-35A -> f35a), plus their parts of
  two or more characters (covid-19 -> covid19, covid, 19); a number followed directly by a
  unit noun is also kept with it (2027년 -> 2027, 2027년);
- not terms: particles and endings, punctuation, bound nouns, pronouns and numerals,
  question and filler words (`STOP_TERMS`: 무엇, 어디, 누구, 얼마, 정의, 의미, 있다, 하다 ...)
  and single syllables that are particles (a lone 을), so a query made only of those
  matches nothing.
"""
from __future__ import annotations

import re
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_NOUN_TAGS = ("NNG", "NNP")
_KEEP_TAGS = ("NNG", "NNP", "SL", "SH", "SN", "XR")
_STEM_TAGS = ("VV", "VA")
_MAX_CHARS_PER_CHUNK = 5000
# Adjacent nouns joined into compound terms: runs of 2..this many.
MAX_COMPOUND_PARTS = 4
# Kiwi is asked to split a whole noun into parts from this many syllables on.
MIN_SPLIT_CHARS = 4
# Part-of-a-code terms need at least this many characters (w-2 gives no 'w').
MIN_CODE_PART_CHARS = 2

STOP_TERMS = frozenset({
    # question and filler nouns
    "무엇", "뭐", "무슨", "어디", "누구", "얼마", "언제", "어느", "정의", "의미", "뜻", "방법",
    "것", "거", "수", "등", "때", "중", "및", "건",
    # auxiliary and filler verbs / adjectives (dictionary form)
    "하다", "되다", "있다", "없다", "않다", "같다", "이다", "아니다", "알다", "알리다", "보다",
    "주다", "싶다", "어떻다", "이렇다", "그렇다", "저렇다", "어떠하다",
})
# Particles Kiwi may tag as nouns when they stand alone (을 -> NNG).
PARTICLES = frozenset({"을", "를", "이", "가", "은", "는", "의", "에", "도", "와", "과", "로", "만", "께", "서", "랑"})

# ASCII letter/digit runs joined by code punctuation: W-2, 401(k), F-35A, covid19, 3.5, a/b.
_CODE = re.compile(r"[0-9A-Za-z]+(?:(?:[-_./:]|\()[0-9A-Za-z]+\)?)*")
_CODE_JOINERS = re.compile(r"[-_()]")
_CODE_PARTS = re.compile(r"[a-z]+|[0-9]+")

_lock = threading.Lock()
_load_lock = threading.Lock()


def _kiwi() -> Any:  # kiwipiepy.Kiwi (the module is imported lazily)
    """The process's one Kiwi, built on first use (threads arriving meanwhile wait for it
    rather than each building their own, which costs a second and 100s of MB apiece)."""
    with _load_lock:
        return _build_kiwi()

# The analyser's version, stored with each document's postings (documents.analyser_version).
# Bump the rule revision whenever a change here (or a new kiwipiepy) can give other terms for the
# same text: `doctag search reindex` then re-analyses every document indexed with another version.
ANALYSER_RULES = 1


@lru_cache(maxsize=1)
def analyser_version() -> str:
    """`kiwi-<kiwipiepy version>/rules-<ANALYSER_RULES>`."""
    from importlib.metadata import version

    return f"kiwi-{version('kiwipiepy')}/rules-{ANALYSER_RULES}"


@lru_cache(maxsize=1)
def _build_kiwi():  # type: ignore[no-untyped-def]
    from kiwipiepy import Kiwi

    # num_workers=0: analyse in the calling thread (the services run one analysis per request thread).
    # kiwipiepy >= 0.21 warns that 0 used to mean "all cores"; single-threaded is what is meant here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="behavior of `num_workers=0`", category=DeprecationWarning)
        return Kiwi(num_workers=0)


def _chunks(text: str) -> list[str]:
    """Splits long text on whitespace into pieces Kiwi handles quickly."""
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + _MAX_CHARS_PER_CHUNK)
        if end < len(text):
            cut = text.rfind(" ", start, end)
            end = cut if cut > start else end
        out.append(text[start:end])
        start = end
    return out


@dataclass(frozen=True)
class Morpheme:
    term: str   # as indexed: lower-cased; verb/adjective stems get 다 (늘렸다 -> 늘리다)
    start: int  # character offsets into the analysed text
    end: int


MAX_TERM_CHARS = 100


def _term(form: str, tag: str) -> str | None:
    """The term of one Kiwi token, or None for particles, endings, punctuation and the like."""
    if tag.startswith(_KEEP_TAGS):
        term = form
    elif tag.startswith(_STEM_TAGS):
        term = form + "다"
    else:
        return None
    return term.strip().lower() or None


def _indexable(term: str) -> bool:
    return term not in STOP_TERMS and term not in PARTICLES and len(term) <= MAX_TERM_CHARS


def _lone_particle(text: str, start: int, end: int) -> bool:
    """A particle written as a word of its own (Kiwi may read a lone 를 as a verb 르)."""
    return (text[start:end] in PARTICLES and (start == 0 or not text[start - 1].isalnum())
            and (end == len(text) or not text[end].isalnum()))


def _is_hangul_word(text: str) -> bool:
    return all("\uac00" <= ch <= "\ud7a3" for ch in text)


@lru_cache(maxsize=65_536)
def _compound_parts(noun: str) -> tuple[str, ...]:
    """The parts of a long noun Kiwi keeps whole (운전면허 -> 운전, 면허), or () when it has none.

    Kiwi is asked again with the whole noun blocked; its answer counts only if it is nouns of
    two or more syllables that spell the word (so 손흥민 is not cut into 손 + 흥 + 민).
    Cached: a collection repeats its compounds.
    """
    if len(noun) < MIN_SPLIT_CHARS or not _is_hangul_word(noun):
        return ()
    from kiwipiepy import MorphemeSet

    kiwi = _kiwi()
    with _lock:
        blocked = MorphemeSet(kiwi, [f"{noun}/{tag}" for tag in _NOUN_TAGS])
        tokens = kiwi.tokenize(noun, blocklist=blocked)
    parts = tuple(t.form for t in tokens)
    if len(parts) < 2 or "".join(parts) != noun:
        return ()
    if any(not t.tag.startswith(_NOUN_TAGS) or len(t.form) < 2 for t in tokens):
        return ()
    return parts


def _is_code(raw: str) -> bool:
    """Joined by code punctuation, or letters and digits together (W-2, 401(k), S8)."""
    has_alpha = any(c.isalpha() for c in raw)
    has_digit = any(c.isdigit() for c in raw)
    return not raw.isalnum() or (has_alpha and has_digit)


def _code_terms(raw: str, start: int, end: int) -> list[Morpheme]:
    low = raw.lower()
    whole = _CODE_JOINERS.sub("", low)
    out = [Morpheme(whole, start, end)]
    for part in dict.fromkeys(_CODE_PARTS.findall(low)):
        if part != whole and len(part) >= MIN_CODE_PART_CHARS:
            out.append(Morpheme(part, start, end))
    return out


def _compounds(run: list[Morpheme]) -> list[Morpheme]:
    """Concatenations of 2..MAX_COMPOUND_PARTS adjacent nouns written together."""
    out = []
    for n in range(2, min(len(run), MAX_COMPOUND_PARTS) + 1):
        for i in range(len(run) - n + 1):
            parts = run[i:i + n]
            out.append(Morpheme("".join(p.term for p in parts), parts[0].start, parts[-1].end))
    return out


def _analyse_chunk(chunk: str, offset: int) -> list[Morpheme]:
    kiwi = _kiwi()
    with _lock:
        tokens = kiwi.tokenize(chunk)
    out: list[Morpheme] = []
    codes = [(m.start(), m.end()) for m in _CODE.finditer(chunk) if _is_code(m.group())]
    in_codes = bytearray(len(chunk))  # 1 where a character belongs to a code
    for start, end in codes:
        out.extend(_code_terms(chunk[start:end], offset + start, offset + end))
        in_codes[start:end] = b"\x01" * (end - start)
    run: list[Morpheme] = []  # adjacent nouns so far
    for i, tok in enumerate(tokens):
        start, end = tok.start, tok.start + tok.len
        # Inside a code the code's own terms stand for it.
        in_code = any(in_codes[start:end])
        term = None if in_code or _lone_particle(chunk, start, end) else _term(tok.form, tok.tag)
        here = Morpheme(term, offset + start, offset + end) if term else None
        is_noun = here is not None and tok.tag.startswith(_NOUN_TAGS)
        if here is not None and is_noun and run and run[-1].end == here.start:
            run.append(here)
        else:
            out.extend(_compounds(run))
            run = [here] if here is not None and is_noun else []
        if here is None:
            continue
        out.append(here)
        if is_noun:
            parts = _compound_parts(here.term)
            exact = chunk[start:end].lower() == here.term
            pos = here.start
            for part in parts:
                out.append(Morpheme(part, pos, pos + len(part)) if exact else Morpheme(part, here.start, here.end))
                pos += len(part)
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if (tok.tag == "SN" and nxt is not None and nxt.start == end and nxt.tag in ("NNB", "NNG")
                and len(nxt.form) <= 2):
            out.append(Morpheme(here.term + nxt.form, here.start, offset + nxt.start + nxt.len))
    out.extend(_compounds(run))
    return out


def morphemes(text: str) -> list[Morpheme]:
    """The terms of `text` with their offsets, ordered by position (duplicates kept).

    The one analyser behind the index (upload) and queries and highlights (search). Every term,
    whatever produced it (a token, a compound, a part, a code, a number with its unit), passes
    the one filter `_indexable`: no stop word, no particle, none longer than MAX_TERM_CHARS."""
    if not text or not text.strip():
        return []
    out: list[Morpheme] = []
    offset = 0
    for chunk in _chunks(text):
        out.extend(m for m in _analyse_chunk(chunk, offset) if _indexable(m.term))
        offset += len(chunk)
    out.sort(key=lambda m: (m.start, m.end))
    return out


def analyze(text: str) -> list[str]:
    """The terms of `text`, in order (duplicates kept)."""
    return [m.term for m in morphemes(text)]

