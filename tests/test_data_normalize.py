"""Text normalisation: each cleaner on Korean and English examples."""


import pytest

from tunelab.data import normalize as nz


def test_nfc_composes_decomposed_hangul():
    decomposed = "\u1112\u1161\u11ab\u1100\u116e\u11a8\u110b\u1165"  # 한국어 as conjoining jamo
    assert nz.nfc(decomposed) == "한국어"
    assert nz.normalize_text(decomposed) == "한국어"


@pytest.mark.parametrize("raw, expected", [
    ("안녕\u200b하세요", "안녕하세요"),  # zero-width space
    ("\ufeff제목", "제목"),  # BOM
    ("a\u00adb", "ab"),  # soft hyphen
    ("\u202eabc\u202c", "abc"),  # bidi override
    ("x\x00y\x1bz", "xyz"),  # C0 controls
    ("\u3164빈칸", "빈칸"),  # Hangul filler used as an invisible blank
])
def test_invisible_characters_removed(raw, expected):
    assert nz.remove_invisible(raw) == expected


def test_emoji_zwj_sequence_kept():
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert nz.remove_invisible(family) == family


def test_whitespace():
    assert nz.collapse_whitespace("  가\t\t나\u00a0\u3000다  ") == "가 나 다"
    assert nz.collapse_whitespace("첫 줄  \n\n\n\n둘째   줄\n", keep_newlines=True) == "첫 줄\n\n둘째 줄"


def test_html_tags_and_entities():
    assert nz.normalize_text("<p>가격: 1,000&#50896;</p><br><b>특가</b>", keep_newlines=False) == "가격: 1,000원 특가"
    assert nz.strip_html("&amp;lt;b&amp;gt;") == "<b>"  # double-escaped
    # not HTML: comparisons, placeholders, generics survive
    for text in ("a < b and c > d", "[PHONE] <EMAIL>", "List<String> x", "AT&T R&D"):
        assert nz.strip_html(text) == text


@pytest.mark.parametrize("damaged, fixed", [
    ("donâ€™t", "don’t"),  # UTF-8 read as cp1252
    ("Ã¼ber", "über"),
    ("ì•ˆë…•í•˜ì„¸ìš”", "안녕하세요"),  # Korean UTF-8 read as cp1252
    ("ÇÑ±¹¾î", "한국어"),  # Korean cp949 read as latin-1
    ("ðŸ˜€", "\U0001f600"),  # emoji
])
def test_mojibake_repaired(damaged, fixed):
    assert nz.fix_mojibake(damaged) == fixed


def test_korean_utf8_read_as_cp949_repaired():
    # only when no byte was lost: '고객 주문' -> '怨좉컼 二쇰Ц' (a classic in Korean web pages)
    original = "고객 주문 배송 문의"
    damaged = original.encode("utf-8").decode("cp949")
    assert damaged == "怨좉컼 二쇰Ц 諛곗넚 臾몄쓽"
    assert nz.fix_mojibake(damaged) == original
    # genuine Chinese text made of the same characters is not touched
    assert nz.fix_mojibake("中文 文本") == "中文 文本"


@pytest.mark.parametrize("text", ["déjà vu à Paris", "Grüße aus Köln", "한국어 문장입니다", "ÄÖÜ", "naïve café", "£5 ¥100 €3"])
def test_genuine_text_untouched_by_mojibake_repair(text):
    assert nz.fix_mojibake(text) == text


def test_garbled():
    assert nz.looks_garbled("\ufffd\ufffd 깨진 글자")
    assert nz.looks_garbled("ÇÑ±Û¹®ÀÚ")
    assert not nz.looks_garbled("Crème brûlée, 한국어, ½ price")


def test_scripts():
    assert nz.script_shares("한국어 text")["hangul"] == pytest.approx(3 / 7)
    assert nz.dominant_script("Hello 세상") == "latin"
    assert nz.dominant_script("Привет") == "other"
    assert nz.script_counts("1234 !!") == (0, 0, 0)


def test_normalize_steps_names_what_changed():
    text, steps = nz.normalize_steps("Caf\u00c3\u00a9 <b>x</b>\u200b  y")
    assert text == "Café x y"
    assert steps == ["mojibake", "html", "invisible", "whitespace"]
    assert nz.normalize_steps("plain text")[1] == []
