"""The exact messages a judge receives, in English or Korean.

    lang = pick_lang(item, "auto")                       # "ko" when the question or answer has Hangul
    messages = pointwise_messages(rubric, item, lang)    # system + one user turn
    messages = pairwise_messages(rubric, item, first, second, lang)
    again = retry_messages(messages, bad_reply, "score", lang)   # the one retry after garbage

Whatever the language, the judge must reply with the English keys `SCORE:` / `WINNER:` and
`REASON:` (the prompt says so in both languages), so one strict parser reads every reply. The
retry shows the judge its own unparseable reply and asks again for the format only; it is a
different message list, so it has its own cache entry.
"""

from __future__ import annotations

import re

from tunelab.judge.answers import Answer
from tunelab.judge.rubrics import Rubric

_HANGUL = re.compile(r"[\uac00-\ud7a3]")

TEXT = {
    "en": {
        "system": "You are a strict, fair grader. You grade answers against a rubric and reply only in the format asked, "
                  "with no other text.",
        "rubric": "Rubric", "scale": "Scores", "context": "Context", "question": "Question",
        "reference": "Reference answer", "answer": "Answer to grade", "first": "Answer A", "second": "Answer B",
        "score_task": "Grade the answer on the rubric with one integer from {lo} to {hi}.",
        "pair_task": "Which answer is better on the rubric? Judge the content only, not the order or the length.",
        "format": "Reply in exactly these two lines, with the English keys:",
        "score_fmt": "SCORE: <integer from {lo} to {hi}>\nREASON: <one sentence>",
        "pair_fmt": "WINNER: <A, B or TIE>\nREASON: <one sentence>",
        "retry": "Your reply could not be read. Reply again in exactly these two lines and nothing else:",
    },
    "ko": {
        "system": "당신은 엄격하고 공정한 채점자입니다. 기준표에 따라 답변을 채점하고, 요청한 형식으로만 답하며 다른 말은 하지 않습니다.",
        "rubric": "채점 기준", "scale": "점수", "context": "문서", "question": "질문",
        "reference": "참고 답변", "answer": "채점할 답변", "first": "답변 A", "second": "답변 B",
        "score_task": "기준에 따라 답변에 {lo}부터 {hi}까지의 정수 점수 하나를 매기세요.",
        "pair_task": "기준에 따라 어느 답변이 더 나은가요? 순서나 길이가 아니라 내용만 보고 판단하세요.",
        "format": "정확히 다음 두 줄로, 영어 키(SCORE/WINNER, REASON)를 그대로 써서 답하세요:",
        "score_fmt": "SCORE: <{lo}부터 {hi}까지의 정수>\nREASON: <한 문장>",
        "pair_fmt": "WINNER: <A, B 또는 TIE>\nREASON: <한 문장>",
        "retry": "답변을 읽을 수 없었습니다. 정확히 다음 두 줄로만 다시 답하세요:",
    },
}


def pick_lang(item: Answer, lang: str = "auto") -> str:
    """`lang`, or for "auto" Korean when the question or the answer contains Hangul.

    >>> pick_lang(Answer(1, "x:1", "보험금 청구 기한은?", "3년"))
    'ko'
    """
    if lang != "auto":
        return lang
    return "ko" if _HANGUL.search(item.prompt + item.answer) else "en"


def _rubric_block(rubric: Rubric, t: dict, lang: str) -> str:
    lines = [f"[{t['rubric']}: {rubric.name}]"] + [f"- {c}" for c in rubric.criteria_for(lang)]
    levels = rubric.levels_for(lang)
    if levels:
        lines += [f"[{t['scale']}]"] + [f"{k}: {v}" for k, v in levels.items()]
    return "\n".join(lines)


def _case_block(item: Answer, t: dict) -> list[str]:
    parts = []
    if item.context:
        parts.append(f"[{t['context']}]\n{item.context}")
    parts.append(f"[{t['question']}]\n{item.prompt}")
    if item.reference:
        parts.append(f"[{t['reference']}]\n{item.reference}")
    return parts


def pointwise_messages(rubric: Rubric, item: Answer, lang: str) -> list[dict]:
    t, (lo, hi) = TEXT[lang], rubric.scale
    parts = [_rubric_block(rubric, t, lang), *_case_block(item, t), f"[{t['answer']}]\n{item.answer}",
             t["score_task"].format(lo=lo, hi=hi), t["format"] + "\n" + t["score_fmt"].format(lo=lo, hi=hi)]
    return [{"role": "system", "content": t["system"]}, {"role": "user", "content": "\n\n".join(parts)}]


def pairwise_messages(rubric: Rubric, item: Answer, first: str, second: str, lang: str) -> list[dict]:
    """`first` is shown as answer A, `second` as answer B."""
    t = TEXT[lang]
    parts = [_rubric_block(rubric, t, lang), *_case_block(item, t), f"[{t['first']}]\n{first}", f"[{t['second']}]\n{second}",
             t["pair_task"], t["format"] + "\n" + t["pair_fmt"]]
    return [{"role": "system", "content": t["system"]}, {"role": "user", "content": "\n\n".join(parts)}]


def retry_messages(messages: list[dict], bad_reply: str, kind: str, lang: str, scale: tuple[int, int] = (1, 5)) -> list[dict]:
    """The conversation so far plus a request to reply again in the format (`kind`: score | pair)."""
    t = TEXT[lang]
    fmt = t["score_fmt"].format(lo=scale[0], hi=scale[1]) if kind == "score" else t["pair_fmt"]
    return [*messages, {"role": "assistant", "content": bad_reply}, {"role": "user", "content": t["retry"] + "\n" + fmt}]
