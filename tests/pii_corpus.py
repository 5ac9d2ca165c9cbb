"""A labelled corpus for the personal-data detector (services/common/pii.py), generated with a
fixed seed, and its evaluation: precision and recall per kind at the level of matches (a
detection counts when its kind and span equal a labelled one).

The numbers are fake but real-format: registration numbers with valid dates and correct
checksums (or, for the post-2020 case, deliberately wrong ones), Luhn-valid cards. Look-alikes
(dates, order and reference numbers, amounts, phone-like amounts, account-like reference
numbers, version numbers, ISBNs) carry no label, so any detection in them is a false positive.
A "hard" share uses variants the detector may miss (full-width hyphens, odd spacing), so the
recall printed is not 1.0 by construction.

    python -m tests.pii_corpus          # prints the table
"""
from __future__ import annotations

import random
import string
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta

from services.common.pii import KINDS, find_pii

SEED = 20260501


@dataclass
class Example:
    text: str
    labels: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, start, end)
    group: str = "positive"


class _Builder:
    """Concatenates pieces, remembering the spans of the labelled ones."""

    def __init__(self) -> None:
        self.text = ""
        self.labels: list[tuple[str, int, int]] = []

    def add(self, piece: str, kind: str | None = None) -> _Builder:
        if kind is not None:
            self.labels.append((kind, len(self.text), len(self.text) + len(piece)))
        self.text += piece
        return self


# -- number generators ---------------------------------------------------------------------------
_W = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)


def _rrn_check(d12: str) -> int:
    return (11 - sum(int(d) * w for d, w in zip(d12, _W, strict=True)) % 11) % 10


def _frn_check(d12: str) -> int:
    c = 11 - sum(int(d) * w for d, w in zip(d12, _W, strict=True)) % 11
    c = c - 10 if c >= 10 else c
    c += 2
    return c - 10 if c >= 10 else c


def _birth(rng: random.Random, lo: int = 1940, hi: int = 2019) -> date:
    start = date(lo, 1, 1)
    return start + timedelta(days=rng.randrange((date(hi, 12, 31) - start).days))


def rrn(rng: random.Random, *, valid: bool = True, foreign: bool = False) -> str:
    """YYMMDDGNNNNNN (no separator): checksum right (valid) or wrong (a post-2020 style number)."""
    born = _birth(rng)
    if foreign:
        gender = rng.choice("56" if born.year < 2000 else "78")
        office = f"{rng.randrange(0, 50) * 2:02d}"  # even registration office
        d12 = born.strftime("%y%m%d") + gender + office + f"{rng.randrange(1000):03d}"
        check = _frn_check(d12)
    else:
        gender = rng.choice("12" if born.year < 2000 else "34")
        d12 = born.strftime("%y%m%d") + gender + f"{rng.randrange(100000):05d}"
        check = _rrn_check(d12)
    if not valid:
        check = (check + rng.randrange(1, 10)) % 10
    return d12 + str(check)


def luhn_complete(partial: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return partial + str((10 - total % 10) % 10)


def card(rng: random.Random, length: int = 16) -> str:
    prefix = rng.choice(["4", "51", "52", "55", "9410", "6253"] if length == 16 else ["34", "37"])
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - 1 - len(prefix)))
    return luhn_complete(body)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


NAMES = ["김민준", "이서연", "박지호", "최수아", "정우진", "강하은", "조예준", "윤지우", "장서준", "임하린"]
LATIN = ["minjun.kim", "seoyeon", "jiho_park", "sua.choi77", "wjjung", "haeun.kang", "yejun", "jiwoo.yoon"]
DOMAINS = ["korea.kr", "gmail.com", "naver.com", "daum.net", "seoul.go.kr", "example.co.kr", "hanmail.net"]
BANKS = ["국민은행", "신한은행", "우리은행", "하나은행", "농협", "IBK기업은행", "카카오뱅크", "우체국"]
AREAS = ["02", "031", "032", "033", "041", "042", "043", "044", "051", "052", "053", "054", "055",
         "061", "062", "063", "064", "070"]


def _mobile(rng: random.Random) -> str:
    mid, last = _digits(rng, 4), _digits(rng, 4)
    return rng.choice([f"010-{mid}-{last}", f"010 {mid} {last}", f"010.{mid}.{last}", f"010{mid}{last}",
                       f"+82 10-{mid}-{last}", f"+82-10-{mid}-{last}", f"+8210{mid}{last}",
                       f"011-{mid[:3]}-{last}"])


def _landline(rng: random.Random) -> str:
    area = rng.choice(AREAS)
    mid = _digits(rng, rng.choice([3, 4])).lstrip("0").rjust(3, "1")
    last = _digits(rng, 4)
    return rng.choice([f"{area}-{mid}-{last}", f"({area}) {mid}-{last}", f"{area}.{mid}.{last}",
                       f"{area}) {mid}-{last}", f"+82 {area[1:]}-{mid}-{last}"])


def _account(rng: random.Random) -> tuple[str, str]:
    bank = rng.choice(BANKS)
    number = rng.choice([f"110-{_digits(rng, 3)}-{_digits(rng, 6)}", f"{_digits(rng, 6)}-{_digits(rng, 2)}-"
                         f"{_digits(rng, 6)}", f"302-{_digits(rng, 4)}-{_digits(rng, 4)}-{_digits(rng, 2)}",
                         f"1002-{_digits(rng, 3)}-{_digits(rng, 6)}", f"{_digits(rng, 3)}-{_digits(rng, 6)}-"
                         f"{_digits(rng, 2)}-{_digits(rng, 3)}"])
    return bank, number


def _email(rng: random.Random) -> str:
    return f"{rng.choice(LATIN)}{rng.choice(['', str(rng.randrange(100))])}@{rng.choice(DOMAINS)}"


# -- positive sentences ---------------------------------------------------------------------------


def _positive(rng: random.Random) -> Example:
    name = rng.choice(NAMES)
    b = _Builder()
    choice = rng.randrange(12)
    if choice == 0:
        n = rrn(rng)
        b.add(f"신청인 {name}(주민등록번호 ").add(f"{n[:6]}-{n[6:]}", "rrn").add(")은 아래와 같이 신청합니다.")
    elif choice == 1:
        n = rrn(rng)
        b.add(f"{name} 주민번호: ").add(n, "rrn").add(" 확인 요망")
    elif choice == 2:
        n = rrn(rng, valid=False)  # issued since 2020-10: random last digits
        b.add(f"민원인 {name}의 주민등록번호는 ").add(f"{n[:6]}-{n[6:]}", "rrn_unverified")
        b.add("이며 본인 확인을 마쳤다.")
    elif choice == 3:
        n = rrn(rng, valid=False)
        b.add("대상자 ").add(f"{n[:6]}-{n[6:]}", "rrn_unverified").add(f" {name}에게 통지서를 발송하였다.")
    elif choice == 4:
        valid = rng.random() < 0.7
        n = rrn(rng, foreign=True, valid=valid)
        b.add("외국인등록번호 ").add(f"{n[:6]}-{n[6:]}", "frn" if valid else "frn_unverified")
        b.add("인 근로자의 체류 기간 연장 신청")
    elif choice == 5:
        b.add(f"담당자 {name} 주무관(").add(_mobile(rng), "mobile").add(")에게 문의하시기 바랍니다.")
    elif choice == 6:
        b.add("민원 상담: ").add(_landline(rng), "landline").add(", 팩스 ").add(_landline(rng), "landline")
    elif choice == 7:
        b.add("자료는 ").add(_email(rng), "email").add("로 제출해 주십시오.")
    elif choice == 8:
        bank, number = _account(rng)
        b.add(f"지원금은 {bank} ").add(number, "bank_account").add(f" (예금주 {name})로 입금됩니다.")
    elif choice == 9:
        b.add("환급 계좌번호: ").add(_digits(rng, 1).replace("0", "1") + _digits(rng, 12), "bank_account")
        b.add(" 로 이체 예정")
    elif choice == 10:
        c = card(rng)
        sep = rng.choice(["-", " "])
        b.add("결제 카드 ").add(sep.join(c[i:i + 4] for i in range(0, 16, 4)), "card").add(" 로 승인되었습니다.")
    else:
        c = card(rng, 15) if rng.random() < 0.5 else card(rng)
        written = f"{c[:4]}-{c[4:10]}-{c[10:]}" if len(c) == 15 else c
        b.add("법인카드 번호 ").add(written, "card").add(" 사용 내역")
    return Example(b.text, b.labels, "positive")


def _hard_positive(rng: random.Random) -> Example:
    """Real but less usual writing: full-width or spaced hyphens, brackets, line breaks."""
    b = _Builder()
    choice = rng.randrange(6)
    if choice == 0:
        n = rrn(rng)
        b.add("주민등록번호 ").add(f"{n[:6]}\uff0d{n[6:]}", "rrn").add(" (전각 하이픈)")
    elif choice == 1:
        mid, last = _digits(rng, 4), _digits(rng, 4)
        b.add("휴대전화 ").add(f"010 - {mid} - {last}", "mobile")
    elif choice == 2:
        mid, last = _digits(rng, 4), _digits(rng, 4)
        b.add("☎ ").add(f"010){mid}-{last}", "mobile")
    elif choice == 3:
        b.add("E-mail: ").add(_email(rng).upper(), "email")
    elif choice == 4:
        n = rrn(rng)
        b.add("생년월일 및 주민등록번호\n").add(f"{n[:6]}-{n[6:]}", "rrn")
    else:
        bank, number = _account(rng)
        b.add("입금처: ").add(number, "bank_account").add(f" ({bank})")
    return Example(b.text, b.labels, "hard")


# -- look-alikes ------------------------------------------------------------------------------------


def _look_alike(rng: random.Random) -> Example:
    d = _birth(rng, 2000, 2025)
    choice = rng.randrange(16)
    if choice == 0:
        text = f"시행일: {d.isoformat()}, 개정일 {d:%Y.%m.%d}. 공고 {d:%Y%m%d}호"
    elif choice == 1:
        text = f"주문번호 {d:%Y%m%d}{_digits(rng, 8)} 의 배송이 시작되었습니다."
    elif choice == 2:
        n = rrn(rng)
        text = f"주문번호: {n[:6]}-{n[6:]} (온라인 주문)"   # RRN-shaped order number
    elif choice == 3:
        text = f"접수번호 {d:%Y}-{d:%m%d}-{_digits(rng, 6)}, 처리 기한 {d + timedelta(days=14)}"
    elif choice == 4:
        text = (f"총 사업비는 {rng.randrange(1, 999):,},{rng.randrange(1000):03d},000원이며 "
                f"금 {rng.randrange(10**6, 10**9):,}원을 지원한다.")
    elif choice == 5:
        text = f"합계 010{_digits(rng, 8)}원, 잔액 ₩{rng.randrange(10**7, 10**9)}"   # phone-like amounts
    elif choice == 6:
        text = f"문서번호 110-{_digits(rng, 3)}-{_digits(rng, 6)} 참조"   # account-like reference
    elif choice == 7:
        text = (f"사업자등록번호 {_digits(rng, 3)}-{_digits(rng, 2)}-{_digits(rng, 5)}, "
                f"법인등록번호 110111-{_digits(rng, 7)}")
    elif choice == 8:
        text = (f"버전 {rng.randrange(1, 20)}.{rng.randrange(10)}.{rng.randrange(100)} 배포, "
                f"빌드 10.0.19045.{_digits(rng, 4)}, 버전 010.{_digits(rng, 4)}.{_digits(rng, 4)}")
    elif choice == 9:
        text = (f"ISBN 978-89-{_digits(rng, 3)}-{_digits(rng, 4)}-{_digits(rng, 1)}, "
                f"ISBN 89-{_digits(rng, 4)}-{_digits(rng, 3)}-X")
    elif choice == 10:
        text = f"관리번호 302-{_digits(rng, 4)}-{_digits(rng, 4)}-{_digits(rng, 2)} 설비 점검"
    elif choice == 11:
        c = card(rng)
        text = f"주문번호 {c[:4]}-{c[4:8]}-{c[8:12]}-{c[12:]} 취소 완료"
    elif choice == 12:
        text = f"일련번호 2010{_digits(rng, 11)} 제품, 좌표 37.{_digits(rng, 4)}, 126.{_digits(rng, 4)}"
    elif choice == 13:
        text = (f"운영 시간 09:00-18:00, 인구 {rng.randrange(10**5, 10**7):,}명, "
                f"면적 {rng.randrange(100, 999)}.{_digits(rng, 2)}㎢")
    elif choice == 14:
        c = card(rng)
        text = f"거래 참조 {c} 로 조회하세요"   # a bare Luhn-valid 16-digit number without a card keyword
    else:
        text = f"예산 {rng.randrange(1, 99)}-{rng.randrange(100, 999)}-{_digits(rng, 4)}호 사업, 전화번호 없음"
    return Example(text, [], "look-alike")


def corpus(seed: int = SEED, positives: int = 600, hard: int = 60, look_alikes: int = 600) -> list[Example]:
    rng = random.Random(seed)
    examples = [_positive(rng) for _ in range(positives)]
    examples += [_hard_positive(rng) for _ in range(hard)]
    examples += [_look_alike(rng) for _ in range(look_alikes)]
    # Mixed documents: a few sentences of both joined, as in a real 공문.
    for _ in range(100):
        parts = [rng.choice(examples) for _ in range(rng.randrange(2, 6))]
        b = _Builder()
        for part in parts:
            offset = len(b.text)
            b.text += part.text + "\n"
            b.labels += [(k, s + offset, e + offset) for k, s, e in part.labels]
        examples.append(Example(b.text, b.labels, "mixed"))
    return examples


@dataclass
class Scores:
    tp: Counter[str] = field(default_factory=Counter)
    fp: Counter[str] = field(default_factory=Counter)
    fn: Counter[str] = field(default_factory=Counter)
    false_positives: list[tuple[str, str]] = field(default_factory=list)
    misses: list[tuple[str, str]] = field(default_factory=list)

    def precision(self, kind: str) -> float:
        n = self.tp[kind] + self.fp[kind]
        return self.tp[kind] / n if n else 1.0

    def recall(self, kind: str) -> float:
        n = self.tp[kind] + self.fn[kind]
        return self.tp[kind] / n if n else 1.0

    def total(self) -> tuple[float, float]:
        tp, fp, fn = sum(self.tp.values()), sum(self.fp.values()), sum(self.fn.values())
        return tp / (tp + fp) if tp + fp else 1.0, tp / (tp + fn) if tp + fn else 1.0


def evaluate(examples: list[Example], groups: tuple[str, ...] | None = None) -> Scores:
    scores = Scores()
    for ex in examples:
        if groups is not None and ex.group not in groups:
            continue
        expected = set(ex.labels)
        found = {(m.kind, m.start, m.end) for m in find_pii(ex.text)}
        for kind, _s, _e in found & expected:
            scores.tp[kind] += 1
        for kind, s, e in found - expected:
            scores.fp[kind] += 1
            scores.false_positives.append((kind, ex.text[s:e] + "  ⟵  " + ex.text.replace("\n", " ")[:80]))
        for kind, s, e in expected - found:
            scores.fn[kind] += 1
            scores.misses.append((kind, ex.text[s:e]))
    return scores


def table(scores: Scores) -> str:
    lines = [f"{'kind':<16}{'TP':>5}{'FP':>5}{'FN':>5}{'precision':>11}{'recall':>8}"]
    for kind in KINDS:
        lines.append(f"{kind:<16}{scores.tp[kind]:>5}{scores.fp[kind]:>5}{scores.fn[kind]:>5}"
                     f"{scores.precision(kind):>11.3f}{scores.recall(kind):>8.3f}")
    p, r = scores.total()
    lines.append(f"{'all':<16}{sum(scores.tp.values()):>5}{sum(scores.fp.values()):>5}{sum(scores.fn.values()):>5}"
                 f"{p:>11.3f}{r:>8.3f}")
    return "\n".join(lines)


def main() -> None:
    examples = corpus()
    print(f"{len(examples)} examples (seed {SEED}); {sum(len(e.labels) for e in examples)} labelled matches")
    for title, groups in (("all", None),
                          ("regular positives + look-alikes + mixed", ("positive", "look-alike", "mixed")),
                          ("hard variants only", ("hard",))):
        scores = evaluate(examples, groups)
        print(f"\n== {title}\n{table(scores)}")
        for kind, what in sorted(set(scores.false_positives))[:15]:
            print(f"  FP {kind}: {what}")
        for kind, what in sorted(set(scores.misses))[:15]:
            print(f"  FN {kind}: {what}")


if __name__ == "__main__":
    main()
