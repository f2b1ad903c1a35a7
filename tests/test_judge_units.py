"""Judge building blocks: strict parsing, rubrics, prompts, agreement statistics (against values
worked out by hand), human scores, loopback detection."""

from __future__ import annotations

import json

import pytest

from tunelab.errors import TunelabError
from tunelab.judge.agreement import agreement, confusion, point_stats, self_consistency
from tunelab.judge.answers import read_answers, read_human
from tunelab.judge.judges import build_judge, describe_remote, is_loopback
from tunelab.judge.parse import parse_score, parse_verdict
from tunelab.judge.prompts import pairwise_messages, pick_lang, pointwise_messages, retry_messages
from tunelab.judge.rubrics import load_rubric


@pytest.mark.parametrize("reply, expected", [
    ("SCORE: 4\nREASON: right but long", (4, "right but long")),
    ("Sure, here it is.\nscore: 2\nReason: invents a date", (2, "invents a date")),
    ("**SCORE:** 5\n**REASON:** grounded", (5, "grounded")),
    ("SCORE: 4/5\nREASON: ok", None),          # not a plain integer
    ("SCORE: 4.5\nREASON: ok", None),
    ("SCORE: 0\nREASON: ok", None),            # outside the 1-5 scale
    ("SCORE: 3\nSCORE: 4\nREASON: unsure", None),  # two scores
    ("SCORE: 3", None),                        # no reason
    ("I would give it a 4 out of 5.", None),
    ("", None),
])  # fmt: skip
def test_scores_are_parsed_strictly(reply, expected):
    assert parse_score(reply, (1, 5)) == expected


def test_verdicts_are_parsed_strictly():
    assert parse_verdict("WINNER: B\nREASON: grounded") == ("B", "grounded")
    assert parse_verdict("winner: Answer A\nreason: shorter") == ("A", "shorter")
    assert parse_verdict("WINNER: TIE\nREASON: same") == ("TIE", "same")
    assert parse_verdict("WINNER: both\nREASON: same") is None
    assert parse_verdict("A is better") is None


def test_shipped_rubrics_load_with_both_languages():
    for name in ("docqa", "instruct"):
        r = load_rubric(name)
        assert r.scale == (1, 5) and r.scores == [1, 2, 3, 4, 5]
        assert r.criteria_for("en") != r.criteria_for("ko") and len(r.criteria_for("ko")) == 4
        assert set(r.levels_for("ko")) == {1, 2, 3, 4, 5}
    doc = load_rubric("docqa")
    assert any("context does not contain the answer" in c for c in doc.criteria_for("en"))


def test_user_rubric_yaml(tmp_path):
    path = tmp_path / "support.yaml"
    path.write_text("name: support\nversion: s2\nscale: [0, 3]\ncriteria: [Names the fix, Polite]\nlevels: {0: useless, 3: perfect}\n")
    r = load_rubric(path)
    assert (r.name, r.version, r.scale, r.criteria_for("ko"), r.levels_for("en")) == ("support", "s2", (0, 3), ["Names the fix", "Polite"], {0: "useless", 3: "perfect"})
    path.write_text("name: support\nscale: [1, 5]\ncriterias: [x]\n")
    with pytest.raises(TunelabError, match=r"(?s)support.yaml:.*unknown key 'criterias'; did you mean 'criteria'"):
        load_rubric(path)
    path.write_text("name: s\nscale: [5, 1]\ncriteria: [x]\n")
    with pytest.raises(TunelabError, match="lowest < highest"):
        load_rubric(path)
    with pytest.raises(TunelabError, match="not a shipped rubric"):
        load_rubric("doqca")


def _answer(tmp_path, rows):
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_prompts_carry_the_case_and_the_format_in_the_row_language(tmp_path):
    items, _ = read_answers(_answer(tmp_path, [
        {"prompt": "보험금 청구 기한은?", "reference": "3년", "generated": "사고일로부터 3년입니다.", "context": "보험금 청구는 사고일로부터 3년 이내"},
        {"prompt": "Capital of France?", "generated": "Paris"}]))  # fmt: skip
    rubric = load_rubric("docqa")
    assert [pick_lang(it) for it in items] == ["ko", "en"]
    ko = pointwise_messages(rubric, items[0], "ko")[-1]["content"]
    assert "[문서]\n보험금 청구는" in ko and "[참고 답변]\n3년" in ko and "[채점할 답변]\n사고일로부터 3년입니다." in ko
    assert "SCORE: <1부터 5까지의 정수>" in ko and "REASON:" in ko
    en = pointwise_messages(rubric, items[1], "en")[-1]["content"]
    assert "[Reference answer]" not in en and "[Context]" not in en and "SCORE: <integer from 1 to 5>" in en
    pair = pairwise_messages(rubric, items[1], "Paris", "Lyon", "en")[-1]["content"]
    assert pair.index("[Answer A]\nParis") < pair.index("[Answer B]\nLyon") and "WINNER: <A, B or TIE>" in pair
    again = retry_messages([{"role": "user", "content": "q"}], "lol", "score", "en")
    assert [m["role"] for m in again] == ["user", "assistant", "user"] and again[1]["content"] == "lol"


def test_agreement_against_hand_computed_values():
    # judge 1..5, people swapped 2 and 3 on two rows: deviations (-2,-1,0,1,2) vs (-2,0,-1,1,2), sum of
    # products 9 over 10 -> r = 0.9; no ties, so Spearman = 0.9; one discordant pair of 10 -> tau = 0.8;
    # quadratic kappa: observed weighted disagreement 2 * (1/16) / 5 = 0.025, expected (uniform
    # marginals) 100 / (25 * 16) = 0.25 -> 1 - 0.1 = 0.9; exact 3 of 5.
    s = point_stats([1, 2, 3, 4, 5], [1, 3, 2, 4, 5], (1, 5))
    assert s == pytest.approx({"pearson": 0.9, "spearman": 0.9, "kendall": 0.8, "kappa": 0.9, "exact": 0.6})
    # two labels: observed disagreement 1/4, expected 0.5*0.75 + 0.5*0.25 = 0.5 -> kappa 0.5
    assert point_stats([1, 1, 2, 2], [1, 2, 2, 2], (1, 2))["kappa"] == pytest.approx(0.5)
    assert point_stats([3, 3, 3], [1, 2, 3], (1, 3))["pearson"] is None  # a constant judge has no correlation


def test_agreement_intervals_and_missing_scores():
    judge = [1, 2, 3, 4, 5, None, 2, 4] * 3
    human = [1, 3, 2, 4, 5, 5, None, 4] * 3
    a = agreement(judge, human, (1, 5), n_boot=300, seed=1)
    assert a["n"] == 18  # rows where either side has no score are left out
    for m in ("pearson", "spearman", "kendall", "kappa", "exact"):
        assert a[m]["low"] <= a[m]["value"] <= a[m]["high"], m
    assert a["exact"]["value"] == pytest.approx(12 / 18, abs=1e-4)  # reported to 4 decimals
    assert agreement(judge, human, (1, 5), n_boot=300, seed=1) == a  # seeded
    perfect = agreement([1, 2, 3, 1, 2, 3], [1, 2, 3, 1, 2, 3], (1, 3), n_boot=200)
    assert perfect["kappa"] == {"value": 1.0, "low": 1.0, "high": 1.0}
    assert agreement([1], [1], (1, 5))["kappa"]["value"] is None
    assert confusion([1, 3, 3], [1, 1, 3], (1, 3)) == [[1, 0, 1], [0, 0, 0], [0, 0, 1]]
    sc = self_consistency([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, None, 4]], (1, 5))
    assert sc["rows"] == 3 and sc["identical"] == pytest.approx(2 / 3, abs=1e-4)


def test_human_scores_from_a_file_column(tmp_path):
    items, source = read_answers(_answer(tmp_path, [{"prompt": "a?", "generated": "x"}, {"prompt": "b?", "generated": "y"}]))
    human = tmp_path / "graded.csv"
    human.write_text("prompt,human_score\na?,4\nb?,\n", encoding="utf-8")
    assert read_human(human, items, source, "human_score", (1, 5)) == [4, None]
    human.write_text("prompt,human_score\na?,4\nb?,9\n", encoding="utf-8")
    with pytest.raises(TunelabError, match=r"graded.csv:3: human_score: human score '9' is not an integer from 1 to 5"):
        read_human(human, items, source, "human_score", (1, 5))
    human.write_text("prompt,human_score\nb?,4\na?,3\n", encoding="utf-8")
    with pytest.raises(TunelabError, match="its question differs"):
        read_human(human, items, source, "human_score", (1, 5))
    with pytest.raises(TunelabError, match="no column 'grade'"):
        read_human(human, items, source, "grade", (1, 5))


def test_answers_need_a_question_and_an_answer(tmp_path):
    with pytest.raises(TunelabError, match=r"answers.jsonl:2: no answer field"):
        read_answers(_answer(tmp_path, [{"prompt": "a", "answer": "b"}, {"prompt": "c", "reply": "d"}]))
    with pytest.raises(TunelabError, match="a folder without test_predictions.jsonl"):
        read_answers(tmp_path)


def test_remote_endpoints_need_allow_remote_loopback_does_not():
    assert is_loopback("http://127.0.0.1:8080/v1") and is_loopback("http://127.8.0.1/v1") and is_loopback("http://localhost:11434/v1")
    assert not is_loopback("http://10.0.0.5:8000/v1") and not is_loopback("https://127.0.0.1.example.com/v1")
    with pytest.raises(TunelabError, match="--allow-remote"):
        build_judge("gpt", endpoint="https://api.example.com/v1")
    local = build_judge("qwen", endpoint="http://127.0.0.1:9/v1")
    assert describe_remote(local, 10, 1000) is None
    remote = build_judge("gpt", endpoint="https://api.example.com/v1", allow_remote=True, env={"TUNELAB_JUDGE_API_KEY": "k"})
    note = describe_remote(remote, 10, 1234)
    assert "api.example.com" in note and "10 requests" in note and "1,234 characters" in note
    assert remote.key == "k" and remote.params["temperature"] == 0


def test_no_local_judge_installed_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    with pytest.raises(TunelabError, match="no local judge is installed: run `tunelab assets install qwen2.5-coder-0.5b-instruct`"):
        build_judge(None)
