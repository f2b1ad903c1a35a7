"""The shipped document-QA sets: size, language balance, refusals, grounded answers, loadable."""

import json
from collections import Counter
from pathlib import Path

from tests.helpers import tiny_tokenizer

from tunelab.sft.formats import row_to_messages
from tunelab.sft.templates import REFUSAL_EN, REFUSAL_KO, build_template
from tunelab.sft.tokenize import tokenize_messages

FOLDER = Path(__file__).resolve().parents[1] / "data" / "docqa"
PATH = FOLDER / "docqa.jsonl"
FIRST = 84  # lines 1-84: the first set; 85-276 added later (24 documents of 5 answerable + 3 unanswerable)


def rows(path=PATH):
    with path.open(encoding="utf-8") as f:
        return [{**json.loads(line), "_line": i} for i, line in enumerate(f, start=1)]


def test_docqa_set_shape():
    data = rows()[:FIRST]
    assert len(data) >= 60
    langs = Counter(r["lang"] for r in data)
    assert set(langs) == {"en", "ko"} and abs(langs["en"] - langs["ko"]) <= len(data) // 10
    unanswerable = [r for r in data if not r["answerable"]]
    assert len(unanswerable) * 3 >= len(data)


def test_docqa_added_documents_shape():
    data = rows()[FIRST:]
    docs = Counter((r["lang"], r["context"]) for r in data)
    assert len(data) == 192 and Counter(lang for lang, _ in docs) == {"ko": 14, "en": 10}
    per_doc = Counter((r["context"], r["answerable"]) for r in data)
    assert all(per_doc[(c, True)] == 5 and per_doc[(c, False)] == 3 for _, c in docs)
    assert not {r["context"] for r in data} & {r["context"] for r in rows()[:FIRST]}  # new documents only
    questions = [r["question"] for r in rows()]
    assert len(set(questions)) == len(questions)


def test_docqa_answers_are_spans_or_refusals():
    path = PATH
    for r in rows(path):
        assert set(r) == {"question", "context", "answer", "lang", "answerable", "_line"}, f"line {r['_line']}"
        assert r["lang"] in ("en", "ko") and isinstance(r["answerable"], bool)
        refusal = REFUSAL_KO if r["lang"] == "ko" else REFUSAL_EN
        if r["answerable"]:
            assert r["answer"] in r["context"], f"{path.name} line {r['_line']}: answer not a span of the context"
            assert r["answer"] != refusal and len(r["answer"]) <= 80
        else:
            assert r["answer"] == refusal, f"{path.name} line {r['_line']}"


def test_docqa_set_goes_through_the_pipeline():
    path = PATH
    tok = tiny_tokenizer()
    template = build_template("docqa")
    for r in rows(path):
        ex = tokenize_messages(row_to_messages(r, source=str(path)), template, tok)
        assert ex["labels"][-1] == tok.eos_token_id
