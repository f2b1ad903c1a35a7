"""`inspect`: the facts about a small Korean/English set, the table and the HTML page."""

import json

import pytest

from tunelab.data.inspect import inspect_file, inspect_rows, public_stats, render_html, render_table
from tunelab.errors import TunelabError

ROWS = [
    {"text": "배송이 너무 늦어요", "label": "complaint"},
    {"text": "배송이 너무 늦어요", "label": "praise"},  # label conflict
    {"text": "정말 좋은 상품입니다 감사합니다", "label": "praise"},
    {"text": "정말 좋은 상품입니다 감사합니다!!", "label": "praise"},  # near duplicate
    {"text": "", "label": "praise"},  # empty
    {"text": "ÇÑ±Û¹®ÀÚ", "label": "complaint"},  # garbled (cp949 read as latin-1)
    {"text": "Call me at 010-1234-5678", "label": "other"},
    {"text": "<b>bold</b> claim", "label": "other"},
]


def test_facts():
    rows = [{**r, "_line": i + 2} for i, r in enumerate(ROWS)]
    s = inspect_rows(rows)
    assert s["rows"] == 8 and s["text_columns"] == ["text"] and s["label_column"] == "label"
    assert s["labels"] == {"praise": 4, "complaint": 2, "other": 2}
    assert s["empty"] == {"rows": 1, "lines": [6]}
    assert s["garbled"]["lines"] == [7]
    assert s["exact_duplicates"]["rows"] == 1 and s["exact_duplicates"]["examples"] == [[2, 3]]
    assert s["label_conflicts"]["groups"] == 1 and s["label_conflicts"]["examples"][0]["lines"] == [2, 3]
    assert s["near_duplicates"]["groups"] == 1 and s["near_duplicates"]["examples"] == [[4, 5]]
    assert s["pii_rows"] == {"PHONE": 1}
    assert s["would_normalize"]["html"] == 1
    assert s["scripts"]["rows_by_dominant"]["hangul"] == 4
    assert s["chars"]["max"] == max(len(r["text"]) for r in ROWS)
    json.dumps(public_stats(s))  # JSON-ready


def test_token_lengths_and_over_max(tmp_path):
    from tests.helpers import build_tokenizer

    tok = build_tokenizer(tmp_path / "tok")
    rows = [{"text": "hi see you later", "_line": 1}, {"text": "ok", "_line": 2}, {"text": "free cash prize now call", "_line": 3}]
    counts = [len(tok(r["text"])["input_ids"]) for r in rows]
    limit = counts[1]  # "ok" fits; the two longer texts do not
    assert counts[0] > limit and counts[2] > limit
    s = inspect_rows(rows, tokenizer=tok, max_length=limit)
    assert s["tokens"]["max"] == max(counts) and s["tokens"]["min"] == min(counts)
    assert s["tokens"]["over_max"] == 2 and s["tokens"]["over_max_lines"] == [1, 3]
    assert f"over {limit}" in render_table(s)


def test_table_and_html(tmp_path):
    s = inspect_rows([{**r, "_line": i + 1} for i, r in enumerate(ROWS)])
    table = render_table(s)
    for word in ("rows", "Labels", "complaint", "exact duplicates", "near duplicates", "label conflicts", "hangul"):
        assert word in table
    page = render_html(s)
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") >= 3
    assert "배송이 너무 늦어요" in page  # the conflict preview, escaped as HTML text
    assert "<b>bold</b>" not in page


def test_inspect_file_reads_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n안녕하세요,a\nhello,b\n", encoding="utf-8")
    s = inspect_file(path)
    assert s["rows"] == 2 and s["labels"] == {"a": 1, "b": 1}


def test_missing_file_names_it(tmp_path):
    with pytest.raises(TunelabError, match="nope.csv"):
        inspect_file(tmp_path / "nope.csv")
