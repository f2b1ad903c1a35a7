"""Metrics on small examples computed by hand (Korean and English)."""

import doctest
import unicodedata

import pytest

import tunelab.sft.collate
import tunelab.sft.formats
import tunelab.sft.generate
import tunelab.sft.metrics
import tunelab.sft.templates
import tunelab.sft.tokenize
from tunelab.sft.metrics import (
    chrf,
    exact_match,
    examples_table,
    normalize,
    refusal_scores,
    rouge_l,
    score_predictions,
    token_f1,
    units,
)
from tunelab.sft.templates import REFUSAL_EN, REFUSAL_KO


def test_normalisation_and_units():
    assert normalize("  The Policy, covers: FIRE!  ") == "policy covers fire"
    assert units("대출 금리는 연 4.5%") == ["대", "출", "금", "리", "는", "연", "4.5"]
    assert exact_match("45%", "4.5%") == 0.0 and exact_match("5,000원", "5000원") == 1.0
    # decomposed jamo (NFD, as some tools write Hangul) equal composed syllables
    nfd = unicodedata.normalize("NFD", "서울")
    assert nfd != "서울" and exact_match(nfd, "서울") == 1.0 and chrf(nfd, "서울") == 1.0


def test_exact_match():
    assert exact_match("30 days.", "30 Days") == 1.0
    assert exact_match("답변을 찾을 수 없습니다", REFUSAL_KO) == 1.0
    assert exact_match("3년", "3년 이내") == 0.0


def test_token_f1_korean_by_syllable_english_by_word():
    # ref 3년 이내 -> [3, 년, 이, 내]; pred 3년 -> [3, 년]: P 2/2, R 2/4 -> F1 2/3
    assert token_f1("3년", "3년 이내") == pytest.approx(2 / 3)
    # a whitespace split would give 0 here: "서울입니다" vs "서울"; syllables: P 2/5, R 1
    assert token_f1("서울입니다", "서울") == pytest.approx(2 * 0.4 / 1.4)
    # English: pred [30, days, from, delivery] ref [30, days]: P 1/2, R 1 -> 2/3
    assert token_f1("30 days from delivery", "30 days") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("a", "b") == 0.0


def test_rouge_l_uses_order():
    # same bag of units, reversed order: F1 = 1 but LCS = 1 of 2
    assert token_f1("days 30", "30 days") == 1.0
    assert rouge_l("days 30", "30 days") == pytest.approx(0.5)
    # 사고일로부터 3년 vs 사고일 후 3년 이내: units [사 고 일 로 부 터 3 년] vs [사 고 일 후 3 년 이 내]
    # LCS 사 고 일 3 년 = 5: P 5/8, R 5/8
    assert rouge_l("사고일로부터 3년", "사고일 후 3년 이내") == pytest.approx(5 / 8)


def test_chrf_hand_computed():
    # n=1: P 1, R 2/3; n=2: P 1, R 1/2; n>=3: "ab" has none -> chrP 1, chrR 7/12
    # chrF2 = 5 * 1 * 7/12 / (4 * 1 + 7/12) = 7/11
    assert chrf("ab", "abc") == pytest.approx(7 / 11)
    assert chrf("abc", "abc") == 1.0 and chrf("xyz", "abc") == 0.0
    # whitespace is removed: Korean spacing variants match fully
    assert chrf("보험금 청구", "보험금청구") == 1.0
    # recall weighs more than precision (beta 2): a longer answer holding the reference
    # scores higher than a shorter one missing half of it
    assert chrf("30일 이내 가능", "30일 이내") > chrf("30", "30일 이내")


def test_refusal_precision_recall():
    refs = [REFUSAL_KO, REFUSAL_KO, "3년", REFUSAL_EN, "30 days"]
    preds = ["죄송하지만 답변을 찾을 수 없습니다.", "5년", REFUSAL_KO, "The answer cannot be found.", "30 days"]
    s = refusal_scores(preds, refs, [REFUSAL_KO, REFUSAL_EN])
    # gold refusals: 0, 1, 3; predicted refusals: 0, 2, 3 -> TP 2
    assert s == {"refusal_precision": 2 / 3, "refusal_recall": 2 / 3, "n_refusal_refs": 3, "n_refusal_preds": 3}
    none = refusal_scores(["a"], ["b"], REFUSAL_KO)
    assert none["refusal_precision"] is None and none["refusal_recall"] is None


def test_score_predictions():
    preds = ["30 days", "3년", REFUSAL_KO]
    refs = ["30 days", "3년 이내", REFUSAL_KO]
    s = score_predictions(preds, refs, refusal=REFUSAL_KO)
    assert s["n"] == 3
    assert s["exact_match"] == pytest.approx(2 / 3)
    assert s["token_f1"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert s["answer_exact_match"] == pytest.approx(1 / 2)
    assert s["refusal_precision"] == 1.0 and s["refusal_recall"] == 1.0
    assert set(score_predictions(preds, refs)) == {"n", "exact_match", "token_f1", "rouge_l", "chrf"}


def test_examples_table_escapes_and_shortens():
    table = examples_table(["a|b\nc" + "x" * 500], ["ref"], ["gen"], max_chars=20)
    lines = table.splitlines()
    assert len(lines) == 3 and lines[0].startswith("| # | prompt | reference | generated")
    assert "a\\|b<br>c" in lines[2] and " … " in lines[2] and len(lines[2]) < 80


@pytest.mark.parametrize("module", [tunelab.sft.formats, tunelab.sft.templates, tunelab.sft.tokenize,
                                    tunelab.sft.collate, tunelab.sft.generate, tunelab.sft.metrics])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_scores_by_language_keep_each_languages_refusals_apart():
    """A model that refuses every Korean question and no English one: pooled precision looks
    fair, the Korean precision shows the failure (the case of the docqa benchmark)."""
    from tunelab.sft.evaluate import by_lang, format_scores
    from tunelab.sft.templates import build_template

    template = build_template("docqa")
    refs = [REFUSAL_KO, "3년", "연 4.5%", REFUSAL_EN, "30 days", "$500"]
    preds = [REFUSAL_KO, REFUSAL_KO, REFUSAL_KO, REFUSAL_EN, "30 days", "$500"]
    langs = ["ko", "ko", "ko", "en", "en", "en"]
    scores = by_lang(preds, refs, langs, template)
    assert set(scores) == {"en", "ko"} and scores["ko"]["n"] == 3
    assert scores["ko"]["refusal_precision"] == pytest.approx(1 / 3) and scores["ko"]["refusal_recall"] == 1.0
    assert scores["en"]["refusal_precision"] == 1.0 and scores["en"]["exact_match"] == 1.0
    assert by_lang(preds, refs, ["ko"] * 6, template) is None and by_lang(preds, refs, ["ko"] * 5 + [None], template) is None
    table = format_scores({**score_predictions(preds, refs, refusal=[REFUSAL_KO, REFUSAL_EN]), "by_lang": scores})
    assert "rows with lang = ko:" in table and "| refusal_precision | 33.3 % |" in table
