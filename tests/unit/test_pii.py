"""The personal-data detector and the masking rule (services/common/pii.py)."""
from __future__ import annotations

from datetime import date

import pytest

from services.common.pii import (
    birth_date_ok,
    count_pii,
    find_pii,
    frn_checksum_ok,
    luhn_ok,
    mask_pii,
    rrn_checksum_ok,
)
from tests import pii_corpus


def kinds(text: str) -> list[tuple[str, str]]:
    return [(m.kind, m.value) for m in find_pii(text)]


# -- checksums -----------------------------------------------------------------------------------


def test_rrn_checksum() -> None:
    # 900101-123456?: 9*2+0*3+0*4+1*5+0*6+1*7+1*8+2*9+3*2+4*3+5*4+6*5 = 124; (11 - 124 % 11) % 10 = 8
    assert rrn_checksum_ok("9001011234568")
    assert not rrn_checksum_ok("9001011234567")
    assert not rrn_checksum_ok("900101123456")      # 12 digits
    assert not rrn_checksum_ok("90010112345a8")


def test_frn_checksum() -> None:
    number = pii_corpus.rrn(__import__("random").Random(1), foreign=True)
    assert frn_checksum_ok(number)
    assert not frn_checksum_ok(number[:12] + str((int(number[12]) + 1) % 10))
    odd_office = number[:7] + "13" + number[9:]
    assert not frn_checksum_ok(odd_office)


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("5500000000000004") and luhn_ok("378282246310005")
    assert not luhn_ok("4111111111111112")
    assert not luhn_ok("1") and not luhn_ok("41a1")


def test_birth_date_and_century_digit() -> None:
    today = date(2026, 5, 1)
    assert birth_date_ok("900101", "1", today) and birth_date_ok("050229", "3", today) is False  # 2005 no leap
    assert birth_date_ok("000229", "4", today)          # 2000 is a leap year
    assert not birth_date_ok("901301", "1", today)      # month 13
    assert not birth_date_ok("270101", "3", today)      # born 2027: in the future
    assert not birth_date_ok("900101", "9", today)      # 1800s digits not accepted
    assert not birth_date_ok("900101", "0", today)


# -- clear positives ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("신청인 주민등록번호 900101-1234568 입니다", [("rrn", "900101-1234568")]),
    ("주민번호: 9001011234568", [("rrn", "9001011234568")]),
    ("주민등록번호 900101\uff0d1234568", [("rrn", "900101\uff0d1234568")]),  # full-width hyphen
    ("대상자 900101-1234567 에게 통지", [("rrn_unverified", "900101-1234567")]),       # post-2020 style
    ("주민등록번호 9001011234567", [("rrn_unverified", "9001011234567")]),              # label, no hyphen
    ("연락처 010-1234-5678로", [("mobile", "010-1234-5678")]),
    ("휴대폰 010 1234 5678", [("mobile", "010 1234 5678")]),
    ("010.1234.5678 / 01012345678", [("mobile", "010.1234.5678"), ("mobile", "01012345678")]),
    ("Tel +82 10-1234-5678, +821012345678", [("mobile", "+82 10-1234-5678"), ("mobile", "+821012345678")]),
    ("문의 02-2100-1234, (031) 123-4567", [("landline", "02-2100-1234"), ("landline", "(031) 123-4567")]),
    ("팩스 051.123.4567", [("landline", "051.123.4567")]),
    ("자료는 kim.cs@korea.kr로 보내 주십시오", [("email", "kim.cs@korea.kr")]),
    ("신한은행 110-123-456789 (예금주 홍길동)", [("bank_account", "110-123-456789")]),
    ("예금주 홍길동 / 국민 123456-01-123456", [("bank_account", "123456-01-123456")]),
    ("환급 계좌번호: 1002123456789", [("bank_account", "1002123456789")]),
    ("결제 카드 4111-1111-1111-1111 승인", [("card", "4111-1111-1111-1111")]),
    ("Card: 5500 0000 0000 0004", [("card", "5500 0000 0000 0004")]),
    ("법인카드 3782-822463-10005", [("card", "3782-822463-10005")]),
    ("카드번호 4111111111111111", [("card", "4111111111111111")]),
])
def test_detects_clear_positives(text: str, expected: list[tuple[str, str]]) -> None:
    assert kinds(text) == expected


def test_counts_and_spans() -> None:
    text = "홍길동(900101-1234568) 010-1234-5678, 010-9876-5432, hong@example.com"
    assert count_pii(text) == {"rrn": 1, "mobile": 2, "email": 1}
    first = find_pii(text)[0]
    assert text[first.start:first.end] == "900101-1234568"
    assert count_pii("개인정보가 없는 문서입니다.") == {}


# -- look-alikes --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "시행일 2024-01-15, 개정 2024.01.15., 공고 20240115호",
    "회의는 2024. 3. 15.(금) 14:00, 운영 시간 09:00-18:00",
    "주문번호 2024011512345678 배송 시작",
    "주문번호: 900101-1234568 (온라인 주문)",          # RRN-shaped, checksum right, but an order number
    "법인등록번호 110111-1234567",
    "사업자등록번호 123-81-12345",
    "접수번호 2024-0115-001234",
    "총 사업비 1,000,000원, 금 12,345,678원, ₩1,234,567",
    "합계 01012345678원",                              # a phone-like amount
    "문서번호 110-123-456789 참조",                    # account-like reference without a bank keyword
    "관리번호 302-1234-5678-91 설비 점검",
    "계좌 개설 신청서 접수번호 123-456-789012",          # the reference label is nearer than 계좌
    "버전 1.2.3, 빌드 10.0.19045.3803, 버전 010.1234.5678",
    "ISBN 978-89-374-1234-5, ISBN 979-11-6224-123-4, ISBN 89-7914-063-0",
    "신청번호 4111-1111-1111-1111",                    # Luhn-valid but labelled as a reference
    "거래 참조 4111111111111111 조회",                 # bare 16 digits without a card keyword
    "바코드 8801234567893",                            # EAN-13 from Korea: born 2088 would be the future
    "010-1234-5678-01 은 내부 코드",                    # inside a longer number
    "IP 192.168.10.1, 좌표 127.0276, 37.4979, 우편번호 03154, 대표번호 1588-1234",
    "제2024-1234567호",
])
def test_no_detection_on_look_alikes(text: str) -> None:
    assert find_pii(text) == []


# -- masking -------------------------------------------------------------------------------------


def test_masking_rule() -> None:
    text = ("주민등록번호 900101-1234568, 휴대폰 010-1234-5678, 전화 (02) 123-4567, 메일 kim.cs@korea.kr로, "
            "신한은행 110-123-456789, 카드 4111 1111 1111 1111, 주민번호: 9001011234568")
    assert mask_pii(text) == (
        "주민등록번호 900101-1******, 휴대폰 010-****-5678, 전화 (02) ***-4567, 메일 k***@korea.kr로, "
        "신한은행 110-***-******, 카드 4111 **** **** 1111, 주민번호: 9001011******")
    assert mask_pii("+82 10-1234-5678") == "+82 10-****-5678"
    assert mask_pii("개인정보 없음 2024-01-15") == "개인정보 없음 2024-01-15"


def test_masked_text_has_no_personal_data_left() -> None:
    examples = pii_corpus.corpus(positives=200, hard=20, look_alikes=0)
    for ex in examples:
        assert find_pii(mask_pii(ex.text)) == [], ex.text


# -- measured on the labelled corpus ----------------------------------------------------------


def test_precision_and_recall_on_the_labelled_corpus() -> None:
    """The table is printed by `python -m tests.pii_corpus`, and in this test's failure message."""
    scores = pii_corpus.evaluate(pii_corpus.corpus())
    precision, recall = scores.total()
    assert precision >= 0.99 and recall >= 0.97, pii_corpus.table(scores)
    for kind in ("rrn", "mobile", "landline", "email", "card", "bank_account"):
        assert scores.precision(kind) >= 0.98 and scores.recall(kind) >= 0.95, kind
