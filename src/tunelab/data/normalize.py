"""Text normalisation: small pure functions, each with an example, and one pipeline over them.

The order used by `normalize_text` matters: mojibake is repaired on the raw string (its C1
control characters are part of the damage), HTML entities are decoded before invisible characters
are removed (`&#8203;` is a zero-width space), and whitespace is collapsed last.

    >>> normalize_text("<p>Caf\\u00c3\\u00a9 &amp; \\u1112\\u1161\\u11ab\\u1100\\u1173\\u11af\\u200b  ok</p>")
    'Café & 한글 ok'
"""

from __future__ import annotations

import html
import re
import unicodedata

# --- Unicode NFC -----------------------------------------------------------------------------


def nfc(text: str) -> str:
    """Compose to Unicode NFC; decomposed Hangul (conjoining jamo, as macOS file names and some
    PDF extractions produce) becomes precomposed syllables.

    Compatibility jamo such as 'ㄱ' (U+3131) are separate letters and are left alone.

    >>> s = nfc("\\u1112\\u1161\\u11ab\\u1100\\u1173\\u11af")  # ᄒ ᅡ ᆫ ᄀ ᅳ ᆯ
    >>> s, len(s)
    ('한글', 2)
    """
    return unicodedata.normalize("NFC", text)


# --- control and invisible characters ---------------------------------------------------------

_ZWJ = "\u200d"
# invisible letters that are abused as blanks (Hangul fillers)
_INVISIBLE_LETTERS = {"\u3164", "\uffa0"}


def _keep_format_char(text: str, i: int) -> bool:
    ch = text[i]
    if "\U000e0020" <= ch <= "\U000e007f":  # tag characters: part of subdivision flag emoji
        return True
    if ch == _ZWJ and 0 < i < len(text) - 1:
        # zero-width joiner inside an emoji sequence (e.g. family emoji): keep it
        prev, nxt = text[i - 1], text[i + 1]
        return (unicodedata.category(prev) in ("So", "Sk") or prev == "\ufe0f") and (
            unicodedata.category(nxt) in ("So", "Sk")
        )
    return False


def remove_invisible(text: str) -> str:
    """Remove control characters (keeping tab and newlines), zero-width and other format
    characters (ZWSP, BOM, soft hyphen, bidi marks) and Hangul filler letters.

    >>> remove_invisible("a\\u200bb\\ufeff\\x07c\\u00add\\u3164e\\tf")
    'abcde\\tf'
    """
    out = []
    for i, ch in enumerate(text):
        if ch in "\t\n\r" or ch.isprintable() and ch not in _INVISIBLE_LETTERS:
            out.append(ch)
            continue
        cat = unicodedata.category(ch)
        if cat in ("Zs", "Zl", "Zp"):  # spaces and line separators: whitespace handles them
            out.append(ch)
        elif cat == "Cf" and _keep_format_char(text, i):
            out.append(ch)
        elif cat in ("Cc", "Cf") or ch in _INVISIBLE_LETTERS:
            continue
        else:  # unassigned, private use, surrogates: not ours to drop; looks_garbled() flags them
            out.append(ch)
    return "".join(out)


# --- whitespace ------------------------------------------------------------------------------

_BLANK_LINES = re.compile(r"\n{3,}")


def collapse_whitespace(text: str, keep_newlines: bool = False) -> str:
    """Collapse runs of whitespace (any Unicode space, NBSP and ideographic space included) to one
    space and strip the ends. With `keep_newlines`, line breaks survive, at most one blank line.

    >>> collapse_whitespace(" a \\u00a0 b\\u3000c \\n\\n\\n d ")
    'a b c d'
    >>> collapse_whitespace(" a  b \\r\\n\\n\\n\\n c ", keep_newlines=True)
    'a b\\n\\nc'
    """
    if not keep_newlines:
        return " ".join(text.split())
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")


# --- HTML --------------------------------------------------------------------------------------

# Only real HTML element names count as tags, so '<EMAIL>', '<unk>', 'List<T>' and 'a < b' survive.
_HTML_NAMES = (
    "a abbr address area article aside audio b base bdi bdo blockquote body br button canvas "
    "caption cite code col colgroup data dd del details dfn dialog div dl dt em embed fieldset "
    "figcaption figure font footer form h1 h2 h3 h4 h5 h6 head header hr html i iframe img input "
    "ins kbd label legend li link main map mark meta meter nav noscript object ol optgroup option "
    "output p param picture pre progress q rp rt ruby s samp section select small source span "
    "strike strong sub summary sup table tbody td template textarea tfoot th thead time title tr "
    "track tt u ul var video wbr center big"
).split()
_BLOCK_NAMES = set(
    "address article aside blockquote br dd div dl dt fieldset figcaption figure footer form h1 h2 "
    "h3 h4 h5 h6 header hr li main nav ol p pre section table tbody td tfoot th thead tr ul".split()
)
_TAG = re.compile(
    r"</?(" + "|".join(sorted(_HTML_NAMES, key=len, reverse=True)) + r")\b(?:\s[^<>]*)?/?>",
    re.IGNORECASE,
)
_DROP_BLOCKS = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")


def _tag_to_space(m: re.Match) -> str:
    return "\n" if m.group(1).lower() in _BLOCK_NAMES else ""


def strip_html(text: str) -> str:
    """Remove HTML tags, comments, script/style blocks, and decode entities (also double-escaped
    ones such as '&amp;lt;'). Block tags become line breaks. Unknown tag names are kept.

    >>> strip_html("<div>가격 &lt; 1,000원<br/>R&amp;D<script>x()</script><EMAIL></div>")
    '\\n가격 < 1,000원\\nR&D <EMAIL>\\n'
    """
    if "<" in text:
        text = _DROP_BLOCKS.sub(" ", text)
        text = _COMMENT.sub(" ", text)
        text = _TAG.sub(_tag_to_space, text)
    for _ in range(3):  # '&amp;amp;lt;' is seen in scraped data
        if "&" not in text:
            break
        new = _ENTITY.sub(lambda m: html.unescape(m.group(0)), text)
        if new == text:
            break
        text = new
    return text


# --- mojibake ------------------------------------------------------------------------------------

# character -> byte for text that was decoded as cp1252 (or latin-1, which fills cp1252's holes)
_SINGLE_BYTE: dict[str, int] = {}
for _b in range(0x80, 0x100):
    _SINGLE_BYTE[chr(_b)] = _b  # latin-1
    try:
        _SINGLE_BYTE[bytes([_b]).decode("cp1252")] = _b
    except UnicodeDecodeError:
        pass
_LATIN_RUN = re.compile("[" + re.escape("".join(sorted(_SINGLE_BYTE))) + "]{2,}")
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]{2,}")
_HANJA = re.compile("[\u4e00-\u9fff\uf900-\ufaff]")


def _is_hangul_syllable(ch: str) -> bool:
    return "\uac00" <= ch <= "\ud7a3"


def _mostly_hangul(text: str, share: float = 0.8) -> bool:
    letters = [c for c in text if not c.isspace() and not c.isascii()]
    return bool(letters) and sum(map(_is_hangul_syllable, letters)) >= share * len(letters)


def _utf8_lenient(data: bytes, original: str) -> str:
    """Decode valid UTF-8 sequences in `data`; bytes that are not part of one keep their original
    character (data[i] came from original[i])."""
    out, i, n = [], 0, len(data)
    while i < n:
        b = data[i]
        size = 2 if 0xC2 <= b <= 0xDF else 3 if 0xE0 <= b <= 0xEF else 4 if 0xF0 <= b <= 0xF4 else 0
        if size and i + size <= n:
            try:
                out.append(data[i : i + size].decode("utf-8"))
                i += size
                continue
            except UnicodeDecodeError:
                pass
        out.append(original[i])
        i += 1
    return "".join(out)


def _repair_latin_run(m: re.Match) -> str:
    run = m.group(0)
    data = bytes(_SINGLE_BYTE[c] for c in run)
    try:  # the whole run is UTF-8: the strongest evidence
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # Korean text saved as cp949/EUC-KR and read as latin-1 / cp1252 ('ÇÑ±Û' for '한글')
    if len(data) % 2 == 0:
        try:
            candidate = data.decode("cp949")
        except UnicodeDecodeError:
            candidate = ""
        if _mostly_hangul(candidate):
            return candidate
    # a damaged stretch next to genuine latin-1 characters ('»Ã©' -> '»é')
    return _utf8_lenient(data, run)


def _repair_cp949_run(m: re.Match) -> str:
    # Korean UTF-8 read as cp949: re-encoding must give valid UTF-8 that is mostly Hangul. Genuine
    # Korean never passes: its cp949 bytes are not valid UTF-8 Hangul.
    run = m.group(0)
    try:
        candidate = run.encode("cp949").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return run
    return candidate if _mostly_hangul(candidate) else run


def fix_mojibake(text: str) -> str:
    """Repair text whose bytes were decoded with the wrong encoding, where that can be proven:
    UTF-8 read as cp1252/latin-1 (any language, emoji included), cp949 read as cp1252/latin-1, and
    UTF-8 read as cp949 when no byte was lost. Each damaged run is re-encoded and must decode
    strictly; genuine text (French, German, Korean) does not, so it is left alone. Damage that
    lost bytes (U+FFFD) cannot be undone; `looks_garbled` reports it.

    >>> fix_mojibake("Caf\\u00c3\\u00a9 \\u00e2\\u20ac\\u0153quoted\\u00e2\\u20ac\\u009d")
    'Café “quoted”'
    >>> fix_mojibake("\\u00ed\\u2022\\u0153\\u00ea\\u00b8\\u20ac")  # '한글' as UTF-8 read as cp1252
    '한글'
    >>> fix_mojibake("\\u00c7\\u00d1\\u00b1\\u00db")  # '한글' as cp949 read as latin-1
    '한글'
    >>> fix_mojibake("Ärger über Öl, déjà vu, 한글")  # genuine text is untouched
    'Ärger über Öl, déjà vu, 한글'
    """
    if text.isascii():
        return text
    for _ in range(3):  # double mojibake ('Ã&#131;Â©') unwinds one layer per pass
        new = _LATIN_RUN.sub(_repair_latin_run, text)
        if _HANJA.search(new):  # UTF-8 Korean read as cp949 always shows Hanja ('怨좉컼' for '고객')
            new = _NON_ASCII_RUN.sub(_repair_cp949_run, new)
        if new == text:
            break
        text = new
    return text


# --- garbled text ------------------------------------------------------------------------------

# what is left of UTF-8 read as cp1252 when the repair could not prove it (a byte was lost):
# 'Ã©', 'Â\xa0', 'â€', and Korean leads ê ë ì í before a continuation character ('íƒ'); quotes
# and NBSP are left out after ê-í so that 'Noël»' stays legitimate
_CP1252_CONT = "\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013-\u203a\u20ac\u2122"
_LEFTOVER_MOJIBAKE = re.compile(
    f"\u00c3[\u0080-\u00bf{_CP1252_CONT}]|\u00c2[\u0080-\u00bf]|\u00e2\u20ac"
    f"|[\u00ea-\u00ed][\u0080-\u009f\u00a2-\u00aa\u00ac-\u00af\u00b1-\u00b6\u00b8-\u00ba\u00bc-\u00be\u0152-\u0192\u02c6\u02dc\u2020-\u2030\u20ac\u2122]"
)
_LATIN1_RUN4 = re.compile("[\u00a1-\u00fe]{4,}")
# controls (not tab/newline), private use, lone surrogates
_ODD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ue000-\uf8ff\ud800-\udfff\U000f0000-\U0010ffff]")


def looks_garbled(text: str) -> bool:
    """True for text that is probably damaged: replacement characters (U+FFFD), leftover mojibake,
    long runs of latin-1 symbols (a legacy encoding read wrongly), or many control / private-use
    characters.

    >>> looks_garbled("정상적인 문장입니다."), looks_garbled("\\ufffd\\ufffd\\uc2e4"), looks_garbled("ÇÑ±Û¹®ÀÚ")
    (False, True, True)
    """
    if not text:
        return False
    if "\ufffd" in text:
        return True
    if _LEFTOVER_MOJIBAKE.search(text) or _LATIN1_RUN4.search(text):
        return True
    odd = _ODD_CHARS.subn("", text)[1]
    return odd > 0.1 * len(text)


# --- scripts -------------------------------------------------------------------------------------

_HANGUL = re.compile("[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\ud7b0-\ud7ff]")
_LATIN = re.compile("[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff\uff21-\uff3a\uff41-\uff5a]")
_LETTER = re.compile(r"[^\W\d_]")


def script_counts(text: str) -> tuple[int, int, int]:
    """Letters in `text` by script: (hangul, latin, other). Digits, punctuation, spaces and emoji
    are not letters.

    >>> script_counts("GPU 서버 설정 123!")
    (4, 3, 0)
    """
    letters = _LETTER.subn("", text)[1]
    hangul = _HANGUL.subn("", text)[1]
    latin = _LATIN.subn("", text)[1]
    return hangul, latin, max(letters - hangul - latin, 0)


def script_shares(text: str) -> dict[str, float]:
    """Share of the letters in each script; all zero when there are no letters.

    >>> script_shares("Python 설치 방법")
    {'hangul': 0.4, 'latin': 0.6, 'other': 0.0}
    """
    h, l, o = script_counts(text)
    total = h + l + o
    if not total:
        return {"hangul": 0.0, "latin": 0.0, "other": 0.0}
    return {"hangul": h / total, "latin": l / total, "other": o / total}


def dominant_script(text: str) -> str:
    """'hangul', 'latin' or 'other' (the script with most letters), 'none' without letters.

    >>> dominant_script("안녕하세요 hi"), dominant_script("12:30")
    ('hangul', 'none')
    """
    h, l, o = script_counts(text)
    if not h + l + o:
        return "none"
    best = max(h, l, o)  # ties go to Hangul, then Latin
    return "hangul" if h == best else "latin" if l == best else "other"


# --- the pipeline ------------------------------------------------------------------------------


def normalize_steps(
    text: str, *, html: bool = True, mojibake: bool = True, keep_newlines: bool = True
) -> tuple[str, list[str]]:
    """`normalize_text` that also names the steps that changed something (for cleaning reports).

    >>> normalize_steps("  &lt;b&gt; ok\\u200b ")
    ('<b> ok', ['html', 'invisible', 'whitespace'])
    """
    steps = []
    if mojibake and not text.isascii():
        new = fix_mojibake(text)
        if new != text:
            steps.append("mojibake")
            text = new
    if html and ("<" in text or "&" in text):
        new = strip_html(text)
        if new != text:
            steps.append("html")
            text = new
    if not text.isascii():
        new = nfc(text)
        if new != text:
            steps.append("nfc")
            text = new
    if not text.isprintable():
        new = remove_invisible(text)
        if new != text:
            steps.append("invisible")
            text = new
    new = collapse_whitespace(text, keep_newlines=keep_newlines)
    if new != text:
        steps.append("whitespace")
        text = new
    return text, steps


def normalize_text(
    text: str, *, html: bool = True, mojibake: bool = True, keep_newlines: bool = True
) -> str:
    """Mojibake repair, HTML removal, NFC, invisible characters, whitespace, in that order.

    >>> normalize_text("  \\uc548\\ub155\\u200b\\ud558\\uc138\\uc694 &nbsp; ", keep_newlines=False)
    '안녕하세요'
    """
    return normalize_steps(text, html=html, mojibake=mojibake, keep_newlines=keep_newlines)[0]
