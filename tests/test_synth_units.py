"""synth building blocks: document readers, chunking, reply parsers, filters, config, cache."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.synth.cache import ReplyCache, cache_key
from tunelab.synth.chunking import chunk_text
from tunelab.synth.documents import find_documents, read_document
from tunelab.synth.filters import (
    duplicate_reasons,
    is_refusal,
    new_in_answer,
    parse_answer,
    parse_questions,
    script_ok,  # fmt: skip
    shared_share,
    support,
)
from tunelab.synth.prompts import answer_messages, load_synth_config, question_messages, validate_synth_dict

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs" / "synth").glob("*.yaml"))

# --- documents -----------------------------------------------------------------------------------


def _docx(path: Path, paragraphs: list[tuple[str, str | None]]) -> Path:
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    style_xml = '<w:pPr><w:pStyle w:val="{}"/></w:pPr>'
    body = "".join(f'<w:p>{style_xml.format(style) if style else ""}<w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>'
                   for text, style in paragraphs)
    table = "<w:tbl><w:tr><w:tc><w:p><w:r><w:t>셀 내용</w:t><w:tab/><w:t>둘째</w:t></w:r></w:p></w:tc></w:tr></w:tbl>"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("word/document.xml", f'<w:document xmlns:w="{w}"><w:body>{body}{table}</w:body></w:document>')
    return path


def _pdf(path: Path, line: str) -> Path:
    """A one-page PDF with one line of Helvetica text, offsets computed so pypdf reads it cleanly."""
    stream = f"BT /F1 12 Tf 72 720 Td ({line}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]  # fmt: skip
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


def test_readers_normalise_every_format(tmp_path):
    (tmp_path / "a.txt").write_bytes("\ufeff\u1112\u1161\u11ab\u1100\u1173\u11af \u200b문서\n\n\n\n둘째 문단".encode())
    (tmp_path / "b.md").write_text("# 제목\n\n본문입니다.", encoding="utf-8")
    (tmp_path / "c.html").write_text("<html><body><h1>FAQ</h1><p>Refunds &amp; returns<script>x()</script></p></body></html>")
    (tmp_path / "d.txt").write_bytes("한국어 CP949 문서".encode("cp949"))
    _docx(tmp_path / "e.docx", [("연차 규정", "Heading1"), ("연차는 15일입니다.", None)])
    (tmp_path / ".hidden.md").write_text("skip me")
    (tmp_path / "g.csv").write_text("not a document")

    found = find_documents([tmp_path])
    assert [p.name for p in found] == ["a.txt", "b.md", "c.html", "d.txt", "e.docx"]
    texts = {p.name: read_document(p).text for p in found}
    assert texts["a.txt"] == "한글 문서\n\n둘째 문단"  # NFC, BOM and zero-width space gone, blank lines collapsed
    assert texts["b.md"] == "# 제목\n\n본문입니다."
    assert "Refunds & returns" in texts["c.html"] and "x()" not in texts["c.html"] and "<" not in texts["c.html"]
    assert texts["d.txt"] == "한국어 CP949 문서"
    assert texts["e.docx"] == "# 연차 규정\n\n연차는 15일입니다.\n\n셀 내용 둘째"  # tab -> space


def test_pdf_text_layer(tmp_path):
    pytest.importorskip("pypdf", reason="pypdf==7.1.0 (requirements.txt) reads PDFs")
    path = _pdf(tmp_path / "f.pdf", "Claims are paid within 14 business days.")
    assert find_documents([tmp_path]) == [path]
    assert read_document(path).text == "Claims are paid within 14 business days."
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 nothing else")
    with pytest.raises(TunelabError, match="broken.pdf: not a readable PDF"):
        read_document(tmp_path / "broken.pdf")


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(TunelabError, match="missing.md: no such file"):
        find_documents([tmp_path / "missing.md"])
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(TunelabError, match="x.csv: unsupported document type '.csv'"):
        find_documents([tmp_path / "x.csv"])
    (tmp_path / "broken.docx").write_bytes(b"not a zip")
    with pytest.raises(TunelabError, match="broken.docx: not a valid .docx"):
        read_document(tmp_path / "broken.docx")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TunelabError, match="no documents"):
        find_documents([empty])


# --- chunking ------------------------------------------------------------------------------------


def test_chunks_respect_the_budget_and_overlap():
    sentences = [f"Sentence number {i} says that item {i} costs {i * 10} dollars." for i in range(40)]
    text = "# Price list\n\n" + " ".join(sentences[:20]) + "\n\n## Extras\n\n" + " ".join(sentences[20:])
    chunks = chunk_text(text, "prices.md", max_chars=300, overlap=60, min_chars=50)
    assert len(chunks) > 5
    assert all(len(c.text) <= 300 for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].text.startswith("Price list\n") and chunks[-1].text.startswith("Price list > Extras\n")
    # every sentence is in some chunk, and consecutive chunks of a section share a sentence
    assert all(any(s in c.text for c in chunks) for s in sentences)
    a, b = chunks[0].text.split("\n", 1)[1], chunks[1].text.split("\n", 1)[1]
    assert a.rsplit(". ", 1)[-1] in b


def test_short_sections_merge_and_tiny_chunks_drop():
    text = "# A\n\nShort one.\n\n# B\n\nAlso short.\n\n# C\n\n" + "Long enough body text here. " * 4
    chunks = chunk_text(text, "x.md", max_chars=200, overlap=0, min_chars=30)
    assert chunks[0].text.startswith("A\nShort one.\nB\nAlso short.")
    assert chunk_text("# Title only", "t.md", min_chars=5) == []


def test_long_korean_paragraph_is_cut_at_sentence_ends():
    text = "연차는 입사 1년 후 15일이 부여됩니다. " * 30
    chunks = chunk_text(text, "hr.md", max_chars=200, overlap=0, min_chars=10)
    assert all(len(c.text) <= 200 and c.text.endswith("부여됩니다.") for c in chunks)


# --- parsing and filters -----------------------------------------------------------------------


@pytest.mark.parametrize("reply, expected", [
    ("1. 연차는 며칠인가요?\n2. 이월은 언제까지 가능한가요?", ["연차는 며칠인가요?", "이월은 언제까지 가능한가요?"]),
    ("다음은 질문입니다:\n- 연차는 며칠인가요?\n* 이월은 언제까지 가능한가요?\n감사합니다.", ["연차는 며칠인가요?", "이월은 언제까지 가능한가요?"]),
    ('{"questions": ["연차는 며칠인가요?"]}', ["연차는 며칠인가요?"]),
    ("질문 1: 연차는 며칠인가요?\n답변 1: 15일\n질문 2: **이월은 언제까지 가능합니까**", ["연차는 며칠인가요?", "이월은 언제까지 가능합니까"]),
    ("연차는 며칠인가요? 15일입니다.", ["연차는 며칠인가요?"]),
    ("1. 연차는 15일이 부여된다.\n2. 이월은 3월까지 가능하다.", []),  # statements, not questions
    ("", []),
    ("```\n[1, 2, 3]\n```", []),
])  # fmt: skip
def test_parse_questions_handles_what_teachers_return(reply, expected):
    assert parse_questions(reply, "ko") == expected


def test_statements_in_a_list_are_reported_as_rejected():
    rejected: list[str] = []
    assert parse_questions("1. Leave is 15 days.\n2. How long is leave?", "en", rejected) == ["How long is leave?"]
    assert rejected == ["Leave is 15 days."]
    rejected.clear()
    assert parse_questions("lorem ipsum dolor", "en", rejected) == [] and rejected == []


@pytest.mark.parametrize("reply, expected", [
    ("[답변]\n15일", "15일"),
    ("답변: 내용에 따르면, 15일입니다.\n[질문]\n다음 질문?", "15일입니다."),
    ('```json\n{"answer": "within 7 days"}\n```', "within 7 days"),
    ('"second class"', "second class"),
    ("\n\n", None),
])  # fmt: skip
def test_parse_answer(reply, expected):
    assert parse_answer(reply) == expected


def test_support_language_refusal_and_duplicates():
    context = "연차휴가는 입사 1년 후 15일이 부여되며, 사용하지 않은 연차는 다음 해 3월 31일까지 이월할 수 있다."
    assert support("다음 해 3월 31일까지", context) == 1.0
    assert support("3월 31일까지 이월할 수 있습니다", context) > 0.7  # a polite ending is fine
    assert support("연차는 20일이며 6월까지 쓸 수 있습니다", context) < 0.7  # invented
    # judged on what the answer adds to the question; an echo adds nothing
    q = "How long does the team take to confirm receipt?"
    assert support("The team confirms receipt within 4 business hours", "confirms receipt within 4 business hours", q) == 1.0
    assert support("The team takes 2 days to confirm receipt", "confirms receipt within 4 business hours", q) < 0.7
    assert not new_in_answer("confirm receipt", q) and support("confirm receipt", "confirm receipt", q) == 0.0
    assert script_ok("연차는 며칠인가요?", "ko", 0.6) and not script_ok("How many days of leave?", "ko", 0.6)
    assert script_ok("VPN 접속 방법은 무엇인가요?", "ko", 0.6)
    assert is_refusal("The answer cannot be found", "The answer cannot be found.")
    assert shared_share("연차는 며칠인가요?", "연차휴가는 15일이다.") > shared_share("연차는 며칠인가요?", "출장비는 12만 원이다.") == 0.0
    reasons = duplicate_reasons(["How many days of leave do staff get?", "how many days of  leave do staff get?",
                                 "How many days of paid leave do staff get?", "Where are receipts sent?"], 0.6)
    assert reasons == [None, "duplicate_exact", "duplicate_near", None]


# --- config --------------------------------------------------------------------------------------


def test_every_shipped_synth_config_loads():
    assert [p.name for p in SHIPPED] == ["docqa-en.yaml", "docqa-ko.yaml"]
    for path in SHIPPED:
        cfg = load_synth_config(path)
        assert 2 <= len(cfg.questions.examples) <= 3 and 2 <= len(cfg.answers.examples) <= 3
        msgs = question_messages(cfg, "CONTEXT")
        assert msgs[0]["role"] == "system" and "CONTEXT" in msgs[-1]["content"]
        assert [m["role"] for m in msgs[1:]] == ["user", "assistant"] * len(cfg.questions.examples) + ["user"]
        answer = answer_messages(cfg, "CONTEXT", "QUESTION?")
        assert cfg.refusal_text in answer[0]["content"] and "QUESTION?" in answer[-1]["content"]
    assert load_synth_config(ROOT / "configs/synth/docqa-ko.yaml").refusal_text == "답변을 찾을 수 없습니다."


def test_config_errors_name_the_key(tmp_path):
    raw = load_synth_config(ROOT / "configs/synth/docqa-en.yaml").model_dump()
    with pytest.raises(TunelabError, match=r"unknown key 'teacher.temprature'; did you mean 'teacher.temperature'"):
        validate_synth_dict({**raw, "teacher": {**raw["teacher"], "temprature": 0.1}})
    with pytest.raises(TunelabError, match=r"'questions' is required"):
        validate_synth_dict({k: v for k, v in raw.items() if k != "questions"})
    with pytest.raises(TunelabError, match=r"questions.prompt: 'contxt' is undefined"):
        validate_synth_dict({**raw, "questions": {**raw["questions"], "prompt": "{{ contxt }}"}})
    with pytest.raises(TunelabError, match=r"model name is required"):
        validate_synth_dict({**raw, "teacher": {"kind": "openai"}})
    cfg = load_synth_config(ROOT / "configs/synth/docqa-en.yaml", ["teacher.batch_size=2", "questions.per_chunk=5"])
    assert cfg.teacher.batch_size == 2 and cfg.questions.per_chunk == 5


# --- cache ---------------------------------------------------------------------------------------


def test_cache_keys_on_content_and_survives_reopening(tmp_path):
    msgs = [{"role": "user", "content": "질문을 만드세요"}]
    k1 = cache_key("local:a", "v1", msgs, {"temperature": 0})
    assert k1 == cache_key("local:a", "v1", [dict(m) for m in msgs], {"temperature": 0})
    assert len({k1, cache_key("local:b", "v1", msgs, {"temperature": 0}), cache_key("local:a", "v2", msgs, {"temperature": 0}),
                cache_key("local:a", "v1", msgs, {"temperature": 0.3}),
                cache_key("local:a", "v1", [{"role": "user", "content": "질문을 만드세요!"}], {"temperature": 0})}) == 5  # fmt: skip
    cache = ReplyCache(tmp_path / "c.sqlite")
    assert cache.get(k1) is None
    cache.put(k1, "1. 연차는 며칠인가요?", teacher="local:a", prompt_version="v1")
    cache.close()
    again = ReplyCache(tmp_path / "c.sqlite")
    assert again.get(k1) == "1. 연차는 며칠인가요?" and len(again) == 1
    again.close()


def test_a_grounded_answer_to_another_question_is_dropped():
    """What the shipped local teacher did on data/synth-demo/hr-policy-ko.md: answers copied from
    the chunk (support 1.0) that answer another question (the heading, another paragraph)."""
    from tunelab.synth.chunking import Chunk
    from tunelab.synth.filters import relevance
    from tunelab.synth.pipeline import Item, _answer_problem
    from tunelab.synth.prompts import load_synth_config

    text = ("한빛소프트 취업규칙 요약 > 연차휴가\n1년 이상 근무한 직원에게는 매년 15일의 연차휴가가 부여된다. "
            "연차휴가는 사용 예정일 3일 전까지 인사시스템에서 신청해야 한다.\n"
            "재택근무는 주 2회까지 허용되며, 전날 오후 6시까지 팀장의 승인을 받아야 한다.")
    cfg = load_synth_config(Path(__file__).parents[1] / "configs/synth/docqa-ko.yaml")
    item = Item("연차휴가는 며칠 전까지 신청해야 하나요?", Chunk("hr.md", 0, text))
    assert _answer_problem("사용 예정일 3일 전까지 인사시스템에서 신청해야 합니다.", item, cfg) is None
    assert _answer_problem("재택근무는 주 2회까지 허용되며, 전날 오후 6시까지 팀장의 승인을 받아야 한다.", item, cfg) == "answer_off_question"
    assert _answer_problem("한빛소프트 취업규칙 요약 > 연차휴가", item, cfg) == "answer_off_question"  # the heading
    english = "Security > Laptops\nEvery laptop is encrypted. Lost devices are reported to IT within 4 hours."
    assert relevance("Within how many hours must a lost device be reported?", "within 4 hours", english, 0.7) >= 0.5
    assert relevance("Within how many hours must a lost device be reported?", "Every laptop is encrypted.", english, 0.7) == 0.0
    assert cfg.filters.min_relevance > 0  # on by default
