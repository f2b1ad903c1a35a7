"""Personal-data redaction: Korean formats, international formats, and near misses to keep."""


import pytest

from tunelab.data import pii


def redacted(text):
    return pii.redact(text)[0]


@pytest.mark.parametrize("text, expected", [
    ("메일 hong.gildong@example.co.kr 로 보내주세요", "메일 [EMAIL] 로 보내주세요"),
    ("연락처010-1234-5678입니다", "연락처[PHONE]입니다"),
    ("01012345678로 문자 주세요", "[PHONE]로 문자 주세요"),
    ("010 1234 5678", "[PHONE]"),
    ("011-123-4567", "[PHONE]"),
    ("사무실 02-123-4567", "사무실 [PHONE]"),
    ("지점 031-1234-5678", "지점 [PHONE]"),
    ("(02) 1234-5678", "[PHONE]"),
    ("인터넷전화 070-1234-5678", "인터넷전화 [PHONE]"),
    ("+82 10 1234 5678", "[PHONE]"),
    ("+82-10-1234-5678", "[PHONE]"),
    ("+82 (0)10-1234-5678", "[PHONE]"),
    ("+82-2-123-4567", "[PHONE]"),
    ("call +1 415 555 0123", "call [PHONE]"),
    ("+44 20 7946 0958", "[PHONE]"),
    ("주민번호 900101-1234567", "주민번호 [RRN]"),
    ("주민번호 9001011234567", "주민번호 [RRN]"),
    ("생년 051231-4123456", "생년 [RRN]"),  # 2005-12-31, 2000s woman
    ("000229-3123456", "[RRN]"),  # 2000 was a leap year
    ("외국인 850315-5123456", "외국인 [RRN]"),
    ("가려진 번호 900101-1******", "가려진 번호 [RRN]"),
    ("900101-9234567", "[RRN]"),  # gender digit 9: born 1890, a date that exists
    ("카드 4111-1111-1111-1111", "카드 [CARD]"),
    ("카드번호 5500 0000 0000 0004 입니다", "카드번호 [CARD] 입니다"),
    ("4111111111111111", "[CARD]"),
    ("amex 3782 822463 10005", "amex [CARD]"),
    ("입금 계좌 123-456789-01-012", "입금 계좌 [ACCOUNT]"),
    ("국민은행 123456-01-123456", "국민은행 [ACCOUNT]"),
    ("우리 1002-123-456789", "우리 [ACCOUNT]"),
    ("계좌번호: 12345678901234", "계좌번호: [ACCOUNT]"),
    ("서버 192.168.0.1 에 접속", "서버 [IP] 에 접속"),
    ("host 10.0.0.255:8080", "host [IP]:8080"),
    ("IPv6 2001:db8::8a2e:370:7334", "IPv6 [IP]"),
    ("loopback ::1 and fe80::1", "loopback [IP] and [IP]"),
    ("여권번호 M12345678", "여권번호 [PASSPORT]"),
    ("여권M123A4567입니다", "여권[PASSPORT]입니다"),  # the newer layout, Hangul touching
    ("관용 여권 S12345678, 외교관 D12345678", "관용 여권 [PASSPORT], 외교관 [PASSPORT]"),
    ("passport no. X1234567", "passport no. [PASSPORT]"),
    ("Passport #: 123456789", "Passport #: [PASSPORT]"),
    ("Passport No.: E12345678 (exp. 2030-01-01)", "Passport No.: [PASSPORT] (exp. 2030-01-01)"),
    ("my passport's number:C01X00T47.", "my passport's number:[PASSPORT]."),
    ("운전면허 11-12-345678-90", "운전면허 [LICENSE]"),
    ("면허 28-05-123456-78 확인", "면허 [LICENSE] 확인"),
    ("면허증 서울 12-345678-90", "면허증 [LICENSE]"),  # the older form with the region's name
    ("운전면허번호: 11 12 345678 90", "운전면허번호: [LICENSE]"),
    ("면허번호 111234567890", "면허번호 [LICENSE]"),
    ("driver's license number D123-4567-8901", "driver's license number [LICENSE]"),
    ("Driver’s licence no. 111234567890", "Driver’s licence no. [LICENSE]"),
    ("driving licence number: MORGA657054SM9IJ", "driving licence number: [LICENSE]"),
    ("DL# A1234567", "DL# [LICENSE]"),
])
def test_redacted(text, expected):
    assert redacted(text) == expected


@pytest.mark.parametrize("text", [
    "가격은 1,234,567원입니다",
    "총 $1,299.99 결제",
    "₩12,000 할인",
    "2024-01-15 에 방문",
    "2024.01.15",
    "20240115 주문",
    "1999년 졸업",
    "회의는 12:30:45 시작",
    "주문번호 4111-1111-1111-1112",  # fails Luhn
    "주문번호 1234-5678-9012-3456",
    "송장 1234567890123456",  # Luhn fails
    "사업자등록번호 123-45-67890",
    "우편번호 06236",
    "ISBN 978-89-01-12345-6",
    "991332-1234567",  # month 13
    "010229-3234567",  # 2001-02-29 does not exist
    "대표번호 1588-1234",
    "v1.2.3.4 배포",
    "version 10.0.19041.1",
    "버전 1.2.3.4",
    "1.2.3.4.5",
    "값 1.5, 2.25",
    "std::vector<int>",
    "시간 09:30 ~ 18:00",
    "주문 12345678901234 건",  # bare 14 digits without account context
    "user@localhost",
    "pkg@1.2.3",
    "@mention",
    "전화 1234",
    # passport look-alikes: other first letters, lengths, lower case, glued letters, product codes
    "A12345678",
    "M1234567",
    "M123456789",
    "m12345678",
    "SM12345678",
    "M12345678A",
    "M123A456",
    "M12345678-1",
    "주문번호 S12345678",
    "모델 M123A4567",
    "SKU: R12345678",
    "Galaxy SM-G991N",
    "B737-800",
    "passport photo 20301231",  # no number word: a date, not a number
    "passport expires 2030-01-01",
    "Passport: 20301231",  # a date after the cue
    "passport no. ABCDEFG",  # no digits
    "passport no. 2024",  # too short
    # licence look-alikes: region code outside 11-28, other group sizes, dates, business numbers
    "29-12-345678-90",
    "10-12-345678-90",
    "11-12-3456789-0",
    "11-12-345678",
    "11-12-345678-901",
    "2024-11-12",
    "driver's license 2 years",
    "driver's license: valid",
    "운전면허 1종 보통",
    "면허 취득 2019년",
    "면허번호 없음",
    "면허: 2024-01-15",
    "사업자 면허: 123-45-67890",
    "dl: 12345678",  # 'DL' only in capitals
    "DL 2024",
])
def test_near_misses_kept(text):
    assert redacted(text) == text


def test_version_strings_decision():
    # a bare four-part number is indistinguishable from an IPv4 address: redacted
    assert redacted("build 1.2.3.4") == "build [IP]"
    assert redacted("v1.2.3.4") == "v1.2.3.4"


def test_passport_and_licence_types_and_overlaps():
    text = "여권 M12345678 면허 11-12-345678-90 전화 010-1234-5678"
    new, found = pii.redact(text)
    assert new == "여권 [PASSPORT] 면허 [LICENSE] 전화 [PHONE]"
    assert [f.type for f in found] == ["PASSPORT", "LICENSE", "PHONE"]
    # the same digits after an account word are an account (the account layout check decides)
    assert redacted("입금 계좌 11-12-345678-90") == "입금 계좌 [ACCOUNT]"
    assert pii.redact(text, types=["PASSPORT"])[0] == "여권 [PASSPORT] 면허 11-12-345678-90 전화 010-1234-5678"
    assert {"PASSPORT", "LICENSE"} <= set(pii.TYPES)


def test_findings_types_spans_and_no_text():
    text = "김 010-1234-5678, kim@a.com"
    new, found = pii.redact(text)
    assert new == "김 [PHONE], [EMAIL]"
    assert [f.type for f in found] == ["PHONE", "EMAIL"]
    assert text[slice(*found[0].span)] == "010-1234-5678"
    assert all(len(f) == 2 for f in found)  # (type, span): the matched text is never kept


def test_types_filter():
    assert pii.redact("010-1234-5678 a@b.io", types=["EMAIL"])[0] == "010-1234-5678 [EMAIL]"
    with pytest.raises(ValueError):
        pii.find_pii("x", types=["NAME"])


def test_luhn():
    assert pii.luhn_ok("79927398713")
    assert not pii.luhn_ok("79927398710")
