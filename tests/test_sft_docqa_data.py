"""The shipped document-QA set: size, language balance, refusals, grounded answers, loadable."""

import json
from collections import Counter
from pathlib import Path

from tests.helpers import tiny_tokenizer

from tunelab.sft.formats import row_to_messages
from tunelab.sft.templates import REFUSAL_EN, REFUSAL_KO, build_template
from tunelab.sft.tokenize import tokenize_messages

PATH = Path(__file__).resolve().parents[1] / "data" / "docqa" / "docqa.jsonl"


def rows():
    with PATH.open(encoding="utf-8") as f:
        return [{**json.loads(line), "_line": i} for i, line in enumerate(f, start=1)]


def test_docqa_set_shape():
    data = rows()
    assert len(data) >= 60
    assert all(set(r) == {"question", "context", "answer", "lang", "answerable", "_line"} for r in data)
    langs = Counter(r["lang"] for r in data)
    assert set(langs) == {"en", "ko"} and abs(langs["en"] - langs["ko"]) <= len(data) // 10
    unanswerable = [r for r in data if not r["answerable"]]
    assert len(unanswerable) * 3 >= len(data)
    for r in data:
        refusal = REFUSAL_KO if r["lang"] == "ko" else REFUSAL_EN
        if r["answerable"]:
            assert r["answer"] in r["context"], f"line {r['_line']}: answer not a span of the context"
            assert r["answer"] != refusal and len(r["answer"]) <= 80
        else:
            assert r["answer"] == refusal, f"line {r['_line']}"


def test_docqa_set_goes_through_the_pipeline():
    tok = tiny_tokenizer()
    template = build_template("docqa")
    for r in rows():
        ex = tokenize_messages(row_to_messages(r, source=str(PATH)), template, tok)
        assert ex["labels"][-1] == tok.eos_token_id
