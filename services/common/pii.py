"""Personal data (개인정보) in Korean text: detection and the one masking rule.

`find_pii(text)` returns every match with its kind and span; `count_pii(text)` the counts per
kind (what the tagging worker reports and upload stores per document); `mask_pii(text)` the
text with every match masked. Pure Python (`re`), no dependency.

Kinds
-----
- `rrn`: 주민등록번호 YYMMDD-GNNNNNN with a valid birth date, a valid gender/century digit
  (1-4) and a valid checksum (numbers issued before October 2020).
- `rrn_unverified`: the same shape, valid date and gender digit, but the checksum does not hold.
  Since 2020-10 the last six digits of new numbers are random (no checksum), so a failed
  checksum no longer proves "not a resident registration number". Accepting every date-shaped
  13-digit string would flag order numbers and references, so an unverified number is only
  reported when it is written the way people write RRNs: with a hyphen between the two parts,
  or with a label (주민등록번호, 주민번호, 생년월일 ...) just before it. Either way a reference
  label just before it (주문번호, 접수번호, 법인등록번호 ...) excludes it.
- `frn` / `frn_unverified`: 외국인등록번호, the same layout with gender digit 5-8 and the
  foreigner checksum (the 8th-9th digits, the registration office, are even; the check digit
  is computed with the +2 rule), treated like `rrn` / `rrn_unverified`.
- `mobile`: 010/011/016/017/018/019 numbers (010-1234-5678, 010 1234 5678, 010.1234.5678,
  01012345678, +82 10-1234-5678, +82-10-..., +821012345678).
- `landline`: area code numbers (02, 031-064, 070 internet phones) with separators only
  (02-123-4567, (031) 123-4567, 051.123.4567, +82 2-123-4567): a bare 9-10 digit run is too
  often something else.
- `email`: addresses with a dotted domain ending in letters.
- `bank_account`: 10-14 digits in 3-4 hyphenated groups (or a bare run right after
  계좌/계좌번호) within a short distance after a bank name or an account keyword
  (은행, 계좌, 입금, 예금주, 농협, 신한 ...). Conservative on purpose: without such a keyword
  a hyphenated number is a reference, not an account.
- `card`: 13-19 digits passing the Luhn check and starting like a card (2-6 or 9), written in
  groups of four (1234-5678-9012-3456, 1234 5678 ...) or the 4-6-5 Amex layout; a bare run
  only right after a card keyword (카드, card).

Look-alikes that are not matched: dates (2024-01-15, 2024.01.15, 20240115), amounts
(1,000,000원; a number followed by 원/₩/KRW or preceded by ₩/금 is an amount), version numbers
(v1.2.3, 버전 010.1234.5678), ISBNs (978-89-..., the month 8x is no date), order and reference numbers (a
reference label right before them), phone-shaped digits inside longer digit runs.

Overlaps are resolved by priority: registration numbers, then cards, phones, accounts, e-mail.

Masking rule (the only one: the inference log, exports and training data must use `mask_pii`)
----------------------------------------------------------------------------------------------
Each match keeps a short prefix that says what it was and every other digit or letter
becomes `*`; separators stay:
- registration numbers: birth date and gender digit kept: `900101-1******`;
- phones: the prefix (010, 02, +82 10) and the last four digits kept: `010-****-5678`;
- e-mail: the first character of the local part, then `***`: `k***@example.com`;
- cards: first and last four digits kept: `4111-****-****-1111`;
- bank accounts: the first group kept: `110-***-******`.
Model-serving's inference log stores no text at all (a SHA-256 of the input), so nothing is
masked there today; any future export of document text must go through `mask_pii`.
"""
from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import dataclass
from datetime import date

KINDS = ("rrn", "rrn_unverified", "frn", "frn_unverified", "mobile", "landline", "email", "bank_account", "card")

# -- shared boundaries ---------------------------------------------------------------------------
# A match never starts or ends in the middle of a longer number: no digit (or "digit + separator",
# or "digit + comma" as in 1,000) right before it, no (separator +) digit right after it.
_START = r"(?<!\d)(?<!\d[-.,])"
_END = r"(?![-.,]?\d)"
# ASCII hyphen-minus, full-width hyphen (common in HWP/Word text), hyphen, non-breaking hyphen, en dash.
_HYPHEN = r"[-\uff0d\u2010\u2011\u2013]"
# An amount: a currency sign or 금 just before, a unit just after.
_AMOUNT_BEFORE = re.compile(r"(?:₩|\\|금|KRW|USD|\$)\s*$")
_AMOUNT_AFTER = re.compile(r"^\s*(?:원|₩|KRW|만원|천원|억|달러|엔)")
# A version number written like a phone (버전 010.1234.5678, v10.1234.5678).
_VERSION_BEFORE = re.compile(r"(?:버전|version|ver\.?|\bv)\s*$", re.IGNORECASE)

# -- registration numbers (주민등록번호 / 외국인등록번호) ----------------------------------------
# YYMMDD, an optional hyphen (or a space around one), the gender/century digit 1-8, six digits.
_REGISTRATION = re.compile(_START + r"(\d{2})(\d{2})(\d{2})(\s?" + _HYPHEN + r"\s?|)([1-8])(\d{6})" + _END)
# A label that says "this is a registration number", within the few characters before it.
_REGISTRATION_LABEL = re.compile(
    r"(?:주민\s*등록\s*번호|주민\s*번호|주민\s*등록|외국인\s*등록\s*번호|외국인\s*번호|등록\s*번호|생년월일|"
    r"RRN|resident\s+registration)\W{0,4}(?:은|는|이|가|:)?\s*$", re.IGNORECASE)
# A label that says "this is some other number" (order, receipt, company ...), right before it.
_REFERENCE_LABEL = re.compile(
    r"(?:주문|접수|송장|운송장|관리|문서|사업자\s*등록|법인\s*등록|고객|회원|예약|신청|승인|거래|결제|"
    r"발급|등기|사건|제품|상품|모델|일련|시리얼|인증|우편|ISBN|order|invoice|ref(?:erence)?|serial)"
    r"\s*(?:번호|코드|no\.?|#)?\s*[:\uff1a#]?\s*$", re.IGNORECASE)
_LABEL_WINDOW = 16
_RRN_WEIGHTS = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)
# Gender/century digit → century of the birth year (9 and 0, births in the 1800s, are not accepted).
_CENTURY = {"1": 1900, "2": 1900, "5": 1900, "6": 1900, "3": 2000, "4": 2000, "7": 2000, "8": 2000}

# -- phones -----------------------------------------------------------------------------------------
# Mobile: 01X, then 3-4 and 4 digits, each separator optional: a hyphen or dot (spaces around it
# allowed: 010 - 1234 - 5678), a space, or after the prefix a parenthesis (010)1234-5678).
# Domestic form: 010-1234-5678 / 010 1234 5678 / 010.1234.5678 / 01012345678.
# International form: +82 10-1234-5678, +82-10-..., +82 (0)10 ..., +821012345678.
_PHONE_SEP = r"(?:\s?[-\uff0d\u2010\u2011\u2013.]\s?|\s)"
_MOBILE = re.compile(
    _START + r"(?:(?P<intl>\+82[\s-]?(?:\(0\))?\s?)|0)(?P<net>1[016789])"
    r"(?:" + _PHONE_SEP + r"|\)\s?)?(?P<mid>\d{3,4})" + _PHONE_SEP + r"?(?P<last>\d{4})" + _END)
# Landline: an area code (02, 031-033, 041-044, 051-055, 061-064) or 070, then 3-4 and 4 digits,
# always with a separator (a hyphen, a dot, a space, or the area code in parentheses).
_AREA = r"(?:2|3[1-3]|4[1-4]|5[1-5]|6[1-4]|70)"
_LANDLINE = re.compile(
    _START + r"(?:(?P<intl>\+82[\s-]?(?:\(0\))?\s?)|\(0|0)(?P<area>" + _AREA + r")\)?"
    r"(?P<sep>[-.]|\)\s?|\s)(?P<mid>\d{3,4})[-.\s](?P<last>\d{4})" + _END)

# -- e-mail ----------------------------------------------------------------------------------------
# Local part of letters, digits and ._%+-; a domain of dotted labels ending in 2+ letters.
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])(?P<local>[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,63}))@"
    r"(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24})(?![A-Za-z0-9-])")

# -- bank accounts --------------------------------------------------------------------------------
# 3-4 groups of 2-6 digits joined by hyphens, 10-14 digits in all (checked in code), e.g.
# 110-123-456789 (신한), 123456-01-123456 (국민), 302-1234-5678-91 (농협), 1002-123-456789 (우리).
_ACCOUNT_GROUPED = re.compile(_START + r"\d{2,6}(?:-\d{2,6}){2,3}" + _END)
# A bare 10-14 digit run, only right after 계좌/계좌번호 (checked in code).
_ACCOUNT_BARE = re.compile(_START + r"\d{10,14}" + _END)
_ACCOUNT_KEYWORD = re.compile(
    r"은행|뱅크|계좌|입금|송금|이체|예금주|통장|농협|신협|수협|새마을금고|우체국|신한|토스|SC제일|씨티|"
    r"bank|account", re.IGNORECASE)
_ACCOUNT_BARE_LABEL = re.compile(r"(?:계좌\s*번호|계좌)\s*[:\uff1a]?\s*$")
_ACCOUNT_WINDOW = 24

# -- cards -------------------------------------------------------------------------------------------
# Groups of four (4-4-4-4, 4-4-4-4-3, 4-4-4-1..) with one separator, or Amex 4-6-5.
_CARD_GROUPED = re.compile(
    _START + r"(?:\d{4}(?P<sep>[-\s])\d{4}(?P=sep)\d{4}(?P=sep)\d{1,7}|\d{4}(?P<sep2>[-\s])\d{6}(?P=sep2)\d{5})"
    + _END)
# A bare 13-19 digit run, only with a card keyword shortly before it.
_CARD_BARE = re.compile(_START + r"\d{13,19}" + _END)
_CARD_KEYWORD = re.compile(r"카드|card|신용|체크|결제\s*수단|visa|master|amex", re.IGNORECASE)
_CARD_WINDOW = 20


@dataclass(frozen=True)
class PiiMatch:
    kind: str
    start: int
    end: int
    value: str


def rrn_checksum_ok(digits: str) -> bool:
    """The resident registration number check digit (numbers issued before 2020-10):
    (11 - sum(d_i * w_i) mod 11) mod 10 with weights 2..9, 2..5 over the first 12 digits."""
    if len(digits) != 13 or not digits.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(digits[:12], _RRN_WEIGHTS, strict=True))
    return (11 - total % 11) % 10 == int(digits[12])


def frn_checksum_ok(digits: str) -> bool:
    """The foreign registration number check: the registration office (digits 8-9) is even and
    the check digit is (11 - sum mod 11), minus 10 when 10 or more, plus 2, minus 10 when 10 or more."""
    if len(digits) != 13 or not digits.isdigit() or int(digits[7:9]) % 2:
        return False
    total = sum(int(d) * w for d, w in zip(digits[:12], _RRN_WEIGHTS, strict=True))
    check = 11 - total % 11
    check = check - 10 if check >= 10 else check
    check += 2
    check = check - 10 if check >= 10 else check
    return check == int(digits[12])


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check of card numbers."""
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def birth_date_ok(yymmdd: str, gender: str, today: date | None = None) -> bool:
    """A real calendar date in the century the gender digit names, not in the future."""
    century = _CENTURY.get(gender)
    if century is None:
        return False
    try:
        born = date(century + int(yymmdd[:2]), int(yymmdd[2:4]), int(yymmdd[4:6]))
    except ValueError:
        return False
    return born <= (today or date.today())


def _window(text: str, start: int, size: int) -> str:
    return text[max(0, start - size):start]


def _is_amount(text: str, start: int, end: int) -> bool:
    return bool(_AMOUNT_BEFORE.search(_window(text, start, 6)) or _AMOUNT_AFTER.match(text[end:end + 4]))


def _has_reference_label(text: str, start: int) -> bool:
    return bool(_REFERENCE_LABEL.search(_window(text, start, _LABEL_WINDOW)))


def _registration_numbers(text: str) -> list[PiiMatch]:
    out: list[PiiMatch] = []
    for m in _REGISTRATION.finditer(text):
        yy, mm, dd, sep, gender, rest = m.groups()
        if not birth_date_ok(yy + mm + dd, gender) or _has_reference_label(text, m.start()):
            continue
        if _is_amount(text, m.start(), m.end()):
            continue
        digits = yy + mm + dd + gender + rest
        foreign = gender in "5678"
        verified = frn_checksum_ok(digits) if foreign else rrn_checksum_ok(digits)
        base = "frn" if foreign else "rrn"
        if verified:
            out.append(PiiMatch(base, m.start(), m.end(), m.group()))
        elif sep.strip() or _REGISTRATION_LABEL.search(_window(text, m.start(), _LABEL_WINDOW)):
            # Possibly issued since 2020-10 (random last digits): written like one, so reported.
            out.append(PiiMatch(f"{base}_unverified", m.start(), m.end(), m.group()))
    return out


def _phones(text: str) -> list[PiiMatch]:
    out: list[PiiMatch] = []
    for kind, pattern in (("mobile", _MOBILE), ("landline", _LANDLINE)):
        for m in pattern.finditer(text):
            if _is_amount(text, m.start(), m.end()) or _VERSION_BEFORE.search(_window(text, m.start(), 10)):
                continue
            out.append(PiiMatch(kind, m.start(), m.end(), m.group()))
    return out


def _cards(text: str) -> list[PiiMatch]:
    out: list[PiiMatch] = []
    for pattern, needs_keyword in ((_CARD_GROUPED, False), (_CARD_BARE, True)):
        for m in pattern.finditer(text):
            digits = re.sub(r"\D", "", m.group())
            if not 13 <= len(digits) <= 19 or digits[0] not in "234569" or not luhn_ok(digits):
                continue
            if needs_keyword and not _CARD_KEYWORD.search(_window(text, m.start(), _CARD_WINDOW)):
                continue
            if _is_amount(text, m.start(), m.end()) or _has_reference_label(text, m.start()):
                continue
            out.append(PiiMatch("card", m.start(), m.end(), m.group()))
    return out


def _bank_accounts(text: str) -> list[PiiMatch]:
    out: list[PiiMatch] = []
    for m in _ACCOUNT_GROUPED.finditer(text):
        if not 10 <= sum(c.isdigit() for c in m.group()) <= 14:
            continue
        before = _window(text, m.start(), _ACCOUNT_WINDOW)
        keywords = list(_ACCOUNT_KEYWORD.finditer(before))
        keyword = keywords[-1] if keywords else None  # the nearest one
        # A reference label between the nearest account keyword and the number wins.
        if keyword is None or _has_reference_label(before[keyword.end():], len(before) - keyword.end()):
            continue
        if _is_amount(text, m.start(), m.end()):
            continue
        out.append(PiiMatch("bank_account", m.start(), m.end(), m.group()))
    for m in _ACCOUNT_BARE.finditer(text):
        if _ACCOUNT_BARE_LABEL.search(_window(text, m.start(), _ACCOUNT_WINDOW)) and not _is_amount(
                text, m.start(), m.end()):
            out.append(PiiMatch("bank_account", m.start(), m.end(), m.group()))
    return out


def _emails(text: str) -> list[PiiMatch]:
    return [PiiMatch("email", m.start(), m.end(), m.group()) for m in _EMAIL.finditer(text)]


# Priority order: an earlier detector's match wins an overlap.
_DETECTORS = (_registration_numbers, _cards, _phones, _bank_accounts, _emails)


def find_pii(text: str) -> list[PiiMatch]:
    """Every personal-data match in `text`, non-overlapping, in text order.

    `taken` is kept sorted by start and never overlaps itself, so a new match can only overlap
    its neighbours at the insertion point: linear work per match, not a scan of all of them."""
    taken: list[PiiMatch] = []
    starts: list[int] = []
    for detector in _DETECTORS:
        for match in detector(text):
            i = bisect.bisect_left(starts, match.start)
            if (i > 0 and taken[i - 1].end > match.start) or (i < len(taken) and taken[i].start < match.end):
                continue
            taken.insert(i, match)
            starts.insert(i, match.start)
    return taken


def count_pii(text: str) -> dict[str, int]:
    """Matches per kind, only kinds found (`{}` for a text without personal data)."""
    return dict(Counter(m.kind for m in find_pii(text)))


def _star_digits(value: str) -> str:
    return re.sub(r"[0-9A-Za-z]", "*", value)


def mask_value(kind: str, value: str) -> str:
    """One match masked by the rule of its kind (see the module docstring)."""
    if kind == "email":
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    if kind.startswith(("rrn", "frn")):
        keep = 7 + (len(value) - 13)  # YYMMDD + separator (if any) + gender digit
        return value[:keep] + _star_digits(value[keep:])
    if kind in ("mobile", "landline"):
        m = (_MOBILE if kind == "mobile" else _LANDLINE).fullmatch(value)
        if m is not None:
            return value[:m.start("mid")] + _star_digits(value[m.start("mid"):m.end("mid")]) + value[m.end("mid"):]
        return _star_digits(value[:-4]) + value[-4:]
    if kind == "card":
        digit_positions = [i for i, c in enumerate(value) if c.isdigit()]
        shown = set(digit_positions[:4] + digit_positions[-4:])
        return "".join(c if i in shown or not c.isdigit() else "*" for i, c in enumerate(value))
    if kind == "bank_account":
        head, sep, tail = value.partition("-")
        return head + sep + _star_digits(tail) if sep else value[:3] + _star_digits(value[3:])
    return _star_digits(value)


def mask_pii(text: str) -> str:
    """`text` with every personal-data match masked: the rule for anything that leaves the platform."""
    parts: list[str] = []
    pos = 0
    for match in find_pii(text):
        parts += [text[pos:match.start], mask_value(match.kind, match.value)]
        pos = match.end
    parts.append(text[pos:])
    return "".join(parts)
