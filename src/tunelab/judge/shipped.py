"""The rubrics tunelab ships, as plain data (the same keys as a user rubric YAML).

    docqa     document question answering: correct, grounded in the context, refuses exactly
              when the context lacks the answer, concise
    instruct  general instruction following: does what was asked, correct, complete, clear

Each has English and Korean criteria and score meanings; `rubrics.load_rubric` validates them.
"""

DOCQA = {
    "name": "docqa",
    "version": "docqa-v1",
    "scale": [1, 5],
    "criteria": {
        "en": [
            "Correct: the answer agrees with the context (and with the reference answer, when one is given).",
            "Grounded: every claim in the answer is supported by the context; nothing is invented.",
            "Refuses exactly when the context does not contain the answer, and answers when it does.",
            "Concise: answers the question directly, without padding or unrelated text.",
        ],
        "ko": [
            "정확성: 답변이 문서 내용(참고 답변이 있으면 참고 답변)과 일치한다.",
            "근거: 답변의 모든 주장이 문서에 근거하며, 지어낸 내용이 없다.",
            "문서에 답이 없을 때에만 답변을 거절하고, 답이 있으면 답한다.",
            "간결성: 불필요한 말 없이 질문에 바로 답한다.",
        ],
    },
    "levels": {
        "en": {
            1: "wrong, invented, or refuses although the context holds the answer (or answers although it does not)",
            2: "mostly wrong or largely unsupported by the context",
            3: "partly correct, or correct with unsupported additions",
            4: "correct and grounded, but wordy or slightly incomplete",
            5: "correct, fully grounded and concise; or a rightful refusal",
        },
        "ko": {
            1: "틀렸거나 지어냈음, 또는 문서에 답이 있는데 거절함(혹은 없는데 답함)",
            2: "대부분 틀렸거나 문서에 근거가 거의 없음",
            3: "부분적으로 맞음, 또는 맞지만 근거 없는 내용이 덧붙음",
            4: "맞고 근거가 있으나 장황하거나 조금 불완전함",
            5: "정확하고 완전히 근거가 있으며 간결함, 또는 정당한 거절",
        },
    },
}

INSTRUCT = {
    "name": "instruct",
    "version": "instruct-v1",
    "scale": [1, 5],
    "criteria": {
        "en": [
            "Follows the instruction: does what was asked, in the requested form.",
            "Correct: the content is accurate.",
            "Complete: covers every part of the request.",
            "Clear and concise: easy to read, no padding.",
        ],
        "ko": [
            "지시 이행: 요청한 일을 요청한 형식으로 수행한다.",
            "정확성: 내용이 사실에 맞다.",
            "완전성: 요청의 모든 부분을 다룬다.",
            "명확성과 간결성: 읽기 쉽고 군더더기가 없다.",
        ],
    },
    "levels": {
        "en": {1: "ignores or fails the instruction", 2: "attempts it but mostly wrong", 3: "acceptable with clear flaws",
               4: "good with minor flaws", 5: "excellent: correct, complete and clear"},
        "ko": {1: "지시를 무시하거나 수행하지 못함", 2: "시도했으나 대부분 틀림", 3: "쓸 만하나 분명한 결함이 있음",
               4: "좋으나 사소한 결함이 있음", 5: "훌륭함: 정확하고 완전하며 명확함"},
    },
}

SHIPPED = {"docqa": DOCQA, "instruct": INSTRUCT}
