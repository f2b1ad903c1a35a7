"""Personal data redaction with typed placeholders.

    >>> redact("문의: hong@corp.co.kr, 010-1234-5678")[0]
    '문의: [EMAIL], [PHONE]'

Types and what is matched (digits next to Hangul still match: '연락처010-1234-5678입니다'):
- EMAIL   local@domain.tld
- PHONE   Korean mobile 010-1234-5678 / 010 1234 5678 / 01012345678 (also 011, 016-019);
          Korean landline with separators 02-123-4567, 031-123-4567, 070-1234-5678, (02) 123-4567;
          +82 10 1234 5678, +82-2-123-4567; any other number written with '+' and a country code
          (+1 415 555 0123, +44 20 7946 0958), 8-15 digits. Not matched: service numbers such as
          1588-1234 (a company's, not a person's), bare digit runs that are not 01X mobiles.
- RRN     Korean resident registration number YYMMDD-GNNNNNN (hyphen, space or none): the date
          must exist for the century given by the gender digit G (1-8, foreigners 5-8; 9/0 for
          the 1800s); the check digit is NOT required (numbers issued since October 2020 have
          none). A masked form 900101-1****** is redacted too.
- CARD    13-19 digits, in groups of 4 (Amex 4-6-5) split by one consistent '-' or ' ' or none,
          first digit 2-6 or 9 (Korean domestic cards), Luhn check passed.
- ACCOUNT Korean bank account numbers, conservatively: hyphenated in a layout banks use
          (3-6-2-3 123-456789-01-012, 3-2-6, 3-3-6, 6-2-6, 4-3-6, 3-6-5, 3-4-4-2, 4-2-7, 3-6-3,
          4-4-5); any other hyphenated or bare 10-14 digit number only right after a word
          such as 계좌, 입금, 은행, account.
- IP      IPv4 (no leading zeros) and IPv6 (validated by `ipaddress`). A four-part version
          string is also a valid IPv4 address; we redact it unless 'v', 'ver', 'version' or
          '버전' stands right before it ('v1.2.3.4' stays): an address leaks more than a version
          hides.
- PASSPORT Korean passport numbers anywhere: M/S/R/O/D + 8 digits (M12345678) or the newer
          letter + 3 digits + letter + 4 digits (M123A4567), capital letters, not glued to other
          letters or digits, and not right after an order/product/serial cue (주문번호 S12345678
          stays). After 'passport no.', 'passport number:', '여권번호' and the like (a number word,
          ':' or '#' is required) also any 6-9 letters and digits with at least 5 digits
          (passport no. X1234567, Passport #: 123456789).
- LICENSE Driver's licence numbers. Korean anywhere: region code 11-28, 2 digits, 6 digits,
          2 digits, hyphenated (11-12-345678-90), or with the region's name (서울 12-345678-90).
          After 'driver's licence/license number', 'driving licence no.', 'DL#', '운전면허번호',
          '면허번호' and the like: the Korean layout with spaces or none (111234567890), or any
          5-20 letters, digits and single hyphens with at least 4 digits (D123-4567-8901).
          A date after a cue (an expiry date, 2030-01-01, 20300101) is not a number: kept.

Near misses that are kept: dates (2024-01-15, 2024.01.15, 20240115), prices (1,234,567원,
$1,299.99), years, times (12:30:45), order numbers that fail Luhn, business registration numbers
(123-45-67890), postal codes, impossible dates in RRN position (991332-1234567), product and
model codes that only resemble a passport number (A12345678, M1234567, SM12345678, SM-G991N,
주문번호 S12345678), licence-like numbers with a region code outside 11-28 (29-12-345678-90),
'passport' or 'licence' followed by a date or a count without a number word.

Findings carry the type and the span only, never the matched text, so a cleaning report does not
leak what it removed.
"""

from __future__ import annotations

import calendar
import ipaddress
import re
from collections.abc import Iterable
from typing import NamedTuple

TYPES = ("EMAIL", "PHONE", "RRN", "CARD", "ACCOUNT", "IP", "PASSPORT", "LICENSE")
# on overlap the longer match wins; on equal length the earlier type here
_PRIORITY = {t: i for i, t in enumerate(("EMAIL", "RRN", "CARD", "ACCOUNT", "PASSPORT", "LICENSE", "PHONE", "IP"))}


class Finding(NamedTuple):
    """One match: its type ('PHONE') and (start, end) in the original text."""

    type: str
    span: tuple[int, int]


# digit runs must not continue into more digits or ASCII letters; Hangul may touch them
_L = r"(?<![0-9A-Za-z])(?<![0-9][-.])"
_R = r"(?![0-9A-Za-z])(?![-.][0-9])"

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![A-Za-z0-9])"
)

_KR_MOBILE = r"01[016789](?P<ms>[-. ]?)\d{3,4}(?P=ms)\d{4}"
_KR_AREA = r"(?:02|0[3-6][1-5]|070|050\d|080)"
_KR_LAND = rf"(?:{_KR_AREA}(?P<ls>[-. ])|\({_KR_AREA}\)\s?)\d{{3,4}}(?(ls)(?P=ls)|[-. ])\d{{4}}"
_KR_INTL = r"\+82[-. ]?(?:\(0\)|0)?(?:1[016789]|2|[3-6][1-5]|70)[-. ]?\d{3,4}[-. ]?\d{4}"
_INTL = r"\+[1-9]\d{0,2}(?:[-. ]?\(?\d{1,4}\)?){2,6}"
_PHONE = re.compile(rf"{_L}(?:{_KR_INTL}|{_KR_MOBILE}|{_KR_LAND})(?:{_R})|(?<![\w+]){_INTL}{_R}")

_RRN = re.compile(rf"{_L}(\d{{2}})(\d{{2}})(\d{{2}})[- ]?([0-9])(\d{{6}}|\*{{6}}){_R}")

_CARD = re.compile(
    rf"{_L}(?:\d{{4}}(?P<cs>[- ]?)\d{{4}}(?P=cs)\d{{4}}(?P=cs)\d{{1,4}}(?:(?P=cs)\d{{1,3}})?"
    rf"|\d{{4}}(?P<as>[- ]?)\d{{6}}(?P=as)\d{{4,5}}|\d{{13,19}}){_R}"
)

_ACCOUNT_LAYOUTS = {
    (3, 6, 2, 3), (3, 2, 6), (3, 3, 6), (6, 2, 6), (4, 3, 6), (3, 6, 5),
    (3, 4, 4, 2), (4, 2, 7), (3, 6, 3), (4, 4, 5),
}  # fmt: skip
_ACCOUNT = re.compile(rf"{_L}\d{{2,7}}(?:-\d{{1,7}}){{1,4}}{_R}|{_L}\d{{10,14}}{_R}")
_ACCOUNT_CONTEXT = re.compile(
    r"(계좌|계좌번호|입금|송금|이체|은행|뱅크|account|acct|a/c|iban)\s*(번호|no\.?|number)?\s*[:：]?\s*$",
    re.IGNORECASE,
)

_IPV4 = re.compile(
    r"(?<![0-9A-Za-z.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?![0-9A-Za-z]|\.\d)"
)
_VERSION_BEFORE = re.compile(r"(?:\bv|\bver\.?|\bversion|버전)\s*$", re.IGNORECASE)
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?::\d{1,3}(?:\.\d{1,3}){3})?(?![\w:])")

# An identifier-like token glued to nothing ASCII: Hangul may touch it ('여권M12345678').
_IL = r"(?<![0-9A-Za-z])"
_IR = r"(?![0-9A-Za-z])(?![-.][0-9A-Za-z])"
# 'number' words between a cue and its number: 'no.', 'No.:', 'number', '#', '번호'; or ':' alone
_NUMBER_WORD = r"(?:\s*(?:no\.?|nr\.?|num(?:ber)?\.?|#|번호)\s*[:：#]?|\s*[:：#])\s*"

_KR_PASSPORT = re.compile(rf"{_IL}[MSROD](?:\d{{8}}|\d{{3}}[A-Z]\d{{4}}){_IR}")
_PASSPORT_CUED = re.compile(
    rf"(?:\bpassport|여권)(?:['’]s)?{_NUMBER_WORD}(?P<n>[A-Za-z0-9]{{6,9}}){_IR}", re.IGNORECASE
)
# codes of other things right before a bare passport-shaped token
_NOT_PERSONAL_BEFORE = re.compile(
    r"(주문|송장|운송장|품번|모델|제품|상품|부품|일련|시리얼|order|sku|invoice|model|part|item|serial|ticket|"
    r"tracking|ref(?:erence)?|product|code)\s*(번호|no\.?|number|#)?\s*[:：#]?\s*$",
    re.IGNORECASE,
)

_KR_REGION_CODE = r"(?:1[1-9]|2[0-8])"
_KR_REGION_NAME = r"(?:서울|부산|경기(?:남부|북부)?|강원|충북|충남|전북|전남|경북|경남|제주|대구|인천|광주|대전|울산)"
_KR_LICENSE = re.compile(
    rf"{_L}{_KR_REGION_CODE}-\d{{2}}-\d{{6}}-\d{{2}}{_R}|{_KR_REGION_NAME}\s?\d{{2}}-\d{{6}}-\d{{2}}{_R}"
)
_LICENSE_CUED = re.compile(
    r"(?:\bdriv(?:er|ing)(?:['’]?s)?\s+licen[cs]e|\b(?-i:DL)|운전\s?면허(?:증)?|면허(?=\s?번호))"
    rf"{_NUMBER_WORD}(?P<n>{_KR_REGION_CODE}(?P<ks>[- ]?)\d{{2}}(?P=ks)\d{{6}}(?P=ks)\d{{2}}(?![0-9A-Za-z])"
    rf"|[A-Za-z0-9](?:-?[A-Za-z0-9]){{4,19}}{_IR})",
    re.IGNORECASE,
)

# a number after a cue that is a date (an expiry or issue date): kept
_DATE_TOKEN = re.compile(r"(?:19|20)\d\d([-./]?)(?:0[1-9]|1[0-2])\1(?:0[1-9]|[12]\d|3[01])")


_DIGIT_OR_AT = re.compile(r"[0-9@]")


def luhn_ok(digits: str) -> bool:
    """The Luhn check used by payment cards.

    >>> luhn_ok("4111111111111111"), luhn_ok("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _rrn_ok(m: re.Match) -> bool:
    yy, mm, dd, g = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
    century = {"1": 1900, "2": 1900, "5": 1900, "6": 1900, "3": 2000, "4": 2000, "7": 2000, "8": 2000,
               "9": 1800, "0": 1800}[g]  # fmt: skip
    if not 1 <= mm <= 12:
        return False
    return 1 <= dd <= calendar.monthrange(century + yy, mm)[1]


def _find_email(text: str) -> Iterable[tuple[int, int]]:
    if "@" in text:
        for m in _EMAIL.finditer(text):
            yield m.span()


def _find_phone(text: str) -> Iterable[tuple[int, int]]:
    for m in _PHONE.finditer(text):
        s = m.group(0)
        digits = sum(c.isdigit() for c in s)
        if s.startswith("+") and not s.startswith("+82") and not 8 <= digits <= 15:
            continue  # E.164 allows at most 15 digits; fewer than 8 is not a phone number
        yield m.span()


def _find_rrn(text: str) -> Iterable[tuple[int, int]]:
    for m in _RRN.finditer(text):
        if _rrn_ok(m):
            yield m.span()


def _find_card(text: str) -> Iterable[tuple[int, int]]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and digits[0] in "234569" and luhn_ok(digits):
            yield m.span()


def _find_account(text: str) -> Iterable[tuple[int, int]]:
    for m in _ACCOUNT.finditer(text):
        s = m.group(0)
        groups = tuple(len(g) for g in s.split("-"))
        if not 10 <= sum(groups) <= 14:
            continue
        if groups in _ACCOUNT_LAYOUTS or _ACCOUNT_CONTEXT.search(text, max(0, m.start() - 20), m.start()):
            yield m.span()


def _find_ip(text: str) -> Iterable[tuple[int, int]]:
    if "." in text:
        for m in _IPV4.finditer(text):
            if not _VERSION_BEFORE.search(text, max(0, m.start() - 10), m.start()):
                yield m.span()
    if "::" in text or text.count(":") >= 7:
        for m in _IPV6.finditer(text):
            s = m.group(0)
            if s.count(":") < 2 or not any(c.isdigit() for c in s):
                continue  # '::' alone, 'a:b:c', times like 12:30:45 fail below anyway
            try:
                ipaddress.IPv6Address(s)
            except ValueError:
                continue
            if "::" in s or s.count(":") == 7:
                yield m.span()


_LICENSE_MIDDLE = re.compile(r"-\d{6}-")  # every bare Korean licence number has it (a fast pre-check)


def _find_passport(text: str) -> Iterable[tuple[int, int]]:
    for m in _KR_PASSPORT.finditer(text):
        if not _NOT_PERSONAL_BEFORE.search(text, max(0, m.start() - 20), m.start()):
            yield m.span()
    if "여권" not in text and "passport" not in text.lower():
        return
    for m in _PASSPORT_CUED.finditer(text):
        n = m.group("n")
        if sum(c.isdigit() for c in n) >= 5 and not _DATE_TOKEN.fullmatch(n):
            yield m.span("n")


def _find_license(text: str) -> Iterable[tuple[int, int]]:
    if _LICENSE_MIDDLE.search(text):
        for m in _KR_LICENSE.finditer(text):
            yield m.span()
    if "면허" not in text and "DL" not in text and "licen" not in text.lower():
        return
    for m in _LICENSE_CUED.finditer(text):
        n = m.group("n")
        if sum(c.isdigit() for c in n) >= 4 and not _DATE_TOKEN.fullmatch(n):
            yield m.span("n")


_FINDERS = {
    "EMAIL": _find_email, "PHONE": _find_phone, "RRN": _find_rrn,
    "CARD": _find_card, "ACCOUNT": _find_account, "IP": _find_ip,
    "PASSPORT": _find_passport, "LICENSE": _find_license,
}  # fmt: skip


def find_pii(text: str, types: Iterable[str] | None = None) -> list[Finding]:
    """All personal-data matches in `text`, non-overlapping, in order of position.

    >>> find_pii("주민번호 900101-1234567, 카드 4111 1111 1111 1111")
    [Finding(type='RRN', span=(5, 19)), Finding(type='CARD', span=(24, 43))]
    >>> find_pii("주문 1,234,567원 (2024-01-15), 버전 1.2.3.4, 12:30:45")
    []
    """
    wanted = TYPES if types is None else tuple(types)
    unknown = set(wanted) - set(TYPES)
    if unknown:
        raise ValueError(f"unknown PII types {sorted(unknown)}; known: {', '.join(TYPES)}")
    if not _DIGIT_OR_AT.search(text):
        return []  # every type needs a digit except e-mail (fast path for most rows)
    candidates = [
        (start, -(end - start), _PRIORITY[t], t, end)
        for t in wanted
        for start, end in _FINDERS[t](text)
    ]
    candidates.sort()
    found: list[Finding] = []
    last_end = -1
    for start, _, _, t, end in candidates:
        if start >= last_end:
            found.append(Finding(t, (start, end)))
            last_end = end
    return found


def redact(text: str, types: Iterable[str] | None = None) -> tuple[str, list[Finding]]:
    """Replace personal data by '[TYPE]' placeholders; returns the new text and the findings
    (spans refer to the original text).

    >>> redact("Call +82 10-1234-5678 or mail a.kim@example.com from 192.168.0.12")
    ('Call [PHONE] or mail [EMAIL] from [IP]', [Finding(type='PHONE', span=(5, 21)), Finding(type='EMAIL', span=(30, 47)), Finding(type='IP', span=(53, 65))])
    """
    findings = find_pii(text, types)
    if not findings:
        return text, findings
    parts, pos = [], 0
    for f in findings:
        parts.append(text[pos : f.span[0]])
        parts.append(f"[{f.type}]")
        pos = f.span[1]
    parts.append(text[pos:])
    return "".join(parts), findings
