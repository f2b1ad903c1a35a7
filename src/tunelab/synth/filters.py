"""Parse what a teacher wrote, and the checks every generated item must pass.

    questions = parse_questions(reply, "ko")        # [] when nothing usable was found
    answer = parse_answer(reply)                     # None when empty
    support("15일", "연차는 15일이 부여됩니다.")       # 1.0: the answer is in the chunk

Teachers return numbered lists, bullets, JSON (bare or in a code fence), "Q1:" labels, a
sentence of chatter before the list, an answer glued to the question, or plain garbage. The
parsers take what looks like a question and drop the rest; the pipeline counts replies that
gave nothing.

Checks, each a small pure function: length bounds, language (share of Hangul or Latin letters,
`tunelab.data.normalize.script_shares`), duplicates (normalised exact and near, via
`tunelab.data.dedup`), and support: the share of what the answer adds to the question that
occurs in the chunk, as character bigrams within words. Bigrams, not words, because Korean
attaches particles to words ("15일이" in the chunk, "15일" in the answer); and a Korean word's
particle or ending is cut off before its bigrams are taken (`claim_grams`: "연차휴가는" claims
"연차휴가", so the bigram "가는" is not counted against an answer whose chunk says "연차휴가가").
English words are taken whole, as before. What the question already says is left out, so "The
encryption of every laptop costs $100" is judged on "$100".
"""

from __future__ import annotations

import json
import re
import unicodedata

from tunelab.data.dedup import dedup_key, near_duplicates
from tunelab.data.normalize import script_counts

_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.DOTALL)
_ITEM = re.compile(
    r"^\s*(?:[-*•·]\s+|\(?\d{1,2}\s*[.)\]:]\s*|[Qq]\s*\d{0,2}\s*[.:)]\s*|질문\s*\d{0,2}\s*[.:)]\s*|"
    r"Question\s*\d{0,2}\s*[.:)]\s*)"
)
_KO_QUESTION_END = re.compile(r"(?:까|나요|가요|는지요|을까요|죠|지요|습니까|인가|한가|는가|니)\s*[.]?$")
_ANSWER_PREFIX = re.compile(
    r"^\s*(?:\[(?:answer|답변|답)\]\s*[:：]?\s*|(?:answer|답변|답|a)\s*[:：]\s*|"
    r"(?:according to the (?:context|text|passage)|based on the (?:context|text|passage)),?\s*|"
    r"(?:내용에 따르면|위 내용에 따르면|문서에 따르면),?\s*)",
    re.IGNORECASE,
)
_STOPS = ("\n[질문]", "\n[내용]", "\n[Question]", "\n[Context]", "\nQuestion:", "\n질문:", "\nContext:")
_QUOTES = "\"'“”‘’「」『』`"
_NON_WORD = re.compile(r"[\W_]+")


def _strip_markup(text: str) -> str:
    return text.replace("**", "").replace("__", "").strip().strip(_QUOTES).strip()


def _json_items(text: str) -> list[str] | None:
    """Questions from a JSON reply (a list of strings or of {"question": ...}, or an object with
    a "questions" list); None when the reply holds no JSON."""
    starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
    if not starts:
        return None
    start = min(starts)
    end = max(text.rfind("]"), text.rfind("}"))
    try:
        data = json.loads(text[start:end + 1])
    except ValueError:
        return None
    if isinstance(data, dict):
        data = data.get("questions", data.get("질문", [data.get("question")]))
    if not isinstance(data, list):
        return None
    out = []
    for item in data:
        if isinstance(item, dict):
            item = item.get("question") or item.get("질문") or item.get("q")
        if isinstance(item, str):
            out.append(item)
    return out


def looks_like_question(text: str, lang: str) -> bool:
    """A question mark, or (Korean) an interrogative ending.

    >>> looks_like_question("연차는 며칠인가요?", "ko"), looks_like_question("연차는 며칠입니까", "ko")
    (True, True)
    >>> looks_like_question("연차는 15일이 부여됩니다.", "ko"), looks_like_question("How long is leave", "en")
    (False, False)
    """
    text = text.strip()
    if text.endswith(("?", "？")):
        return True
    return lang == "ko" and bool(_KO_QUESTION_END.search(text))


def parse_questions(reply: str, lang: str, rejected: list[str] | None = None) -> list[str]:
    """Questions found in a teacher's reply, in order; [] when there are none. Listed items that
    are not questions (statements, chatter) are appended to `rejected` when it is given.

    >>> parse_questions("Sure! Here are questions:\\n1. How many days of leave?\\n2) Can days carry over?\\nHope it helps.", "en")
    ['How many days of leave?', 'Can days carry over?']
    >>> parse_questions('```json\\n["연차는 며칠인가요?", {"question": "이월은 언제까지인가요?"}]\\n```', "ko")
    ['연차는 며칠인가요?', '이월은 언제까지인가요?']
    >>> parse_questions("Q1: What is the deductible? A: $500.", "en")
    ['What is the deductible?']
    >>> parse_questions("@@@ ### lorem", "en")
    []
    """
    fenced = _FENCE.findall(reply)
    text = "\n".join(fenced) if fenced else reply
    items = _json_items(text)
    structured = items is not None
    if items is None:
        lines = [line for line in text.splitlines() if line.strip()]
        listed = [_ITEM.sub("", line, count=1) for line in lines if _ITEM.match(line)]
        structured = bool(listed)
        items = listed or lines  # no list markers: every line may be a bare question
    out = []
    for item in items:
        item = _strip_markup(" ".join(item.split()))
        if "?" in item and not item.endswith("?"):  # "What is X? A: 5" -> the question part
            item = item[: item.rindex("?") + 1]
        if item and looks_like_question(item, lang):
            out.append(item)
        elif item and structured and rejected is not None:  # a listed statement; loose chatter is not counted
            rejected.append(item)
    return out


def parse_answer(reply: str) -> str | None:
    """The answer in a teacher's reply: code fences, JSON, "Answer:" labels, lead-ins such as
    "According to the context," and anything after a new [Question] removed; None when empty.

    >>> parse_answer("Answer: According to the context, within 30 days.\\n[Question]\\nnext?")
    'within 30 days.'
    >>> parse_answer('{"answer": "15일"}'), parse_answer("  ")
    ('15일', None)
    """
    fenced = _FENCE.findall(reply)
    text = fenced[0] if fenced else reply
    for stop in _STOPS:
        text = text.split(stop)[0]
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
            if isinstance(data, dict) and isinstance(data.get("answer", data.get("답변")), str):
                text = data.get("answer", data.get("답변"))
        except ValueError:
            pass
    for _ in range(2):  # "Answer: According to the context, ..."
        text = _ANSWER_PREFIX.sub("", text, count=1)
    text = _strip_markup(" ".join(text.split()))
    return text or None


def is_refusal(answer: str, refusal: str) -> bool:
    """The answer is the refusal, give or take punctuation and case.

    >>> is_refusal("답변을 찾을 수 없습니다", "답변을 찾을 수 없습니다."), is_refusal("15일", "답변을 찾을 수 없습니다.")
    (True, False)
    """
    key = _squash(refusal)
    return bool(key) and key in _squash(answer)


def _squash(text: str) -> str:
    return _NON_WORD.sub("", unicodedata.normalize("NFKC", text).casefold())


# polite endings that answers add and documents (written in -다) lack: not evidence either way
_KO_ENDINGS = frozenset("니다 습니 입니 됩니 합니 십니 에요 예요 해요 세요 어요 아요".split())
# what Korean glues onto a word's end: particles (a stem of 2+ characters must remain) ...
_KO_PARTICLES = tuple(sorted(
    "은 는 이 가 을 를 에 의 와 과 도 만 로 으로 에서 에게 께서 한테 까지 부터 마다 처럼 보다 에는 에서는 "
    "으로는 로는 에도 과는 와는 이나 이며 이고 이면 이라 이라는 이란 이라도 라는 란 만큼 밖에 조차 인 인데".split(),
    key=len, reverse=True))  # fmt: skip
# ... and verb or copula endings (a stem of 1+ character must remain: 있습니다 -> 있)
_KO_VERB_ENDINGS = tuple(sorted(
    "입니다 습니다 니다 합니다 됩니다 십니다 이다 한다 된다 하다 되다 다 해야 하며 되며 하고 되고 하면 되면 "
    "해요 돼요 에요 예요 이에요 어요 아요 세요 하여 되어 돼 해 며 고 면 하는 되는 한 된 할 될".split(),
    key=len, reverse=True))  # fmt: skip
_HANGUL_END = re.compile("[\uac00-\ud7a3]$")
_HANGUL_SYLLABLE = re.compile("[\uac00-\ud7a3]")


def _stem(word: str) -> str:
    """A word without the particle or ending Korean attaches to it (one, the longest that fits);
    other words as they are.

    >>> [_stem(w) for w in ("문서에서", "문서는", "15일이며", "있습니다", "제출해야", "휴가", "제한", "laptops")]
    ['문서', '문서', '15일', '있', '제출', '휴가', '제한', 'laptops']
    """
    if not _HANGUL_END.search(word):
        return word
    for suffix in _KO_PARTICLES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 2:
            return word[: -len(suffix)]
    for suffix in _KO_VERB_ENDINGS:  # one syllable needs a stem of two (제한 is no 제 + -한)
        if word.endswith(suffix) and len(word) - len(suffix) >= (1 if len(suffix) > 1 else 2):
            return word[: -len(suffix)]
    return word


def _grams(word: str) -> set[str]:
    return {word[i:i + 2] for i in range(len(word) - 1)} if len(word) > 1 else ({word} if word else set())


def word_bigrams(text: str) -> set[str]:
    """Character bigrams within each word (NFKC, case folded); a one-character word is itself.

    >>> sorted(word_bigrams("15일이 Bob"))
    ['15', '5일', 'bo', 'ob', '일이']
    """
    out: set[str] = set()
    for w in _NON_WORD.split(unicodedata.normalize("NFKC", text).casefold()):
        out |= _grams(w)
    return out


def claim_grams(text: str) -> set[str]:
    """What a text claims, as character bigrams within words: English words as they are (as
    `word_bigrams`), Korean words without their particle or ending (`_stem`: 문서에서 and 문서는
    both claim 문서; 15일이며 claims 15일), so that a different particle is not counted against
    a grounded answer. Polite endings are left out.

    >>> sorted(claim_grams("연차휴가는 15일입니다"))
    ['15', '5일', '연차', '차휴', '휴가']
    """
    out: set[str] = set()
    for w in _NON_WORD.split(unicodedata.normalize("NFKC", text).casefold()):
        out |= _grams(_stem(w))
    return out - _KO_ENDINGS


def context_grams(text: str) -> set[str]:
    """What a context can support: its bigrams within words and, for a Korean stem of one
    syllable (있습니다 -> 있), its Hangul syllables.

    >>> sorted(context_grams("할 수 있다"))
    ['다', '수', '있', '있다', '할']
    """
    return word_bigrams(text) | set(_HANGUL_SYLLABLE.findall(unicodedata.normalize("NFKC", text)))


def new_in_answer(answer: str, question: str = "") -> set[str]:
    """What the answer claims (`claim_grams`) that the question does not already hold. Empty
    when the answer only repeats the question.

    >>> new_in_answer("4 business hours", "Confirmed within 4 business hours?")
    set()
    >>> sorted(new_in_answer("연차는 15일입니다", "연차휴가는 며칠인가요?"))
    ['15', '5일']
    """
    return claim_grams(answer) - claim_grams(question) - word_bigrams(question)


def support(answer: str, context: str, question: str = "") -> float:
    """Share of what the answer claims (`new_in_answer`) that occurs in the context
    (`context_grams`); 1.0 for a quote, 0.0 when the answer adds nothing to the question. In
    English, bigrams within words; in Korean, bigrams within the stems, so particles and
    endings that differ from the chunk's (문서에서 / 문서는, 부여됩니다 / 부여된다) do not count.

    >>> support("15일", "입사 1년 후 연차 15일이 부여됩니다.")
    1.0
    >>> support("연차휴가는 15일입니다", "매년 15일의 연차휴가가 부여된다.")
    1.0
    >>> round(support("3월 31일까지 이월할 수 있습니다", "연차는 3월 31일까지 이월할 수 있다."), 2)
    1.0
    >>> round(support("It costs $100.", "Laptops cost $1,200 each.", "What does encryption cost?"), 2)
    0.25
    """
    grams = new_in_answer(answer, question)
    if not grams:
        return 0.0
    return len(grams & context_grams(context)) / len(grams)


_STOP_EN = frozenset(
    "the and for with from are was were been what which who whom whose when where why how does did can could "
    "should would will shall may might must this that these those its than then there their they them not any "
    "all each per into about after before under over between".split()
)


def content_tokens(text: str) -> set[str]:
    """Words of 3+ characters other than common English function words, cut to 5 characters (a
    crude stem); Hangul words as syllable bigrams (particles and endings change, stems stay).

    >>> sorted(content_tokens("What is the deductible for water damage?"))
    ['damag', 'deduc', 'water']
    >>> sorted(content_tokens("연차는 며칠"))
    ['며칠', '연차', '차는']
    """
    out: set[str] = set()
    for w in re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold()):
        if _HANGUL_SYLLABLE.search(w):
            out |= {w[i:i + 2] for i in range(len(w) - 1)} or {w}
        elif len(w) >= 3 and w not in _STOP_EN:
            out.add(w[:5])  # a crude stem: report/reported, password/passwords
    return out


def shared_share(question: str, text: str) -> float:
    """Share of the question's content tokens that occur in `text` (0 = unrelated).

    >>> shared_share("What is the deductible for water damage?", "The deductible for water damage is $500.")
    1.0
    >>> shared_share("What is the deductible for water damage?", "Trains are booked in second class.")
    0.0
    """
    q = content_tokens(question)
    return len(q & content_tokens(text)) / len(q) if q else 0.0


_SENTENCE_END = re.compile(r"(?<=[.!?。])\s+|\n+")


def sentences(text: str) -> list[str]:
    """A chunk's sentences: split at . ! ? followed by space, and at line breaks (a heading line
    is a sentence of its own).

    >>> sentences("가는 다. 나는 라.\\n## 제목")
    ['가는 다.', '나는 라.', '## 제목']
    """
    return [x.strip() for x in _SENTENCE_END.split(text) if x.strip()]


def relevance(question: str, answer: str, context: str, min_support: float) -> float:
    """How much of the question the answer's own passage talks about: the most `shared_share`
    of the question among the chunk's sentences that support the answer (`support` at least
    `min_support`), or among pairs of neighbouring sentences when no single one does (an answer
    that runs over a sentence end); 0.0 when none does. A grounded answer that does not answer
    its question (the chunk's heading, another paragraph) sits in a sentence about something
    else, so it scores low, while `support` alone (is the answer in the chunk?) passes it.

    >>> ctx = "인사 규정 > 재택근무\\n재택근무는 주 2회까지 허용된다. 경조금은 30일 이내에 신청해야 한다."
    >>> round(relevance("재택근무는 주 몇 회까지 허용되나요?", "주 2회까지 허용됩니다.", ctx, 0.7), 2)
    0.67
    >>> relevance("재택근무는 주 몇 회까지 허용되나요?", "경조금은 30일 이내에 신청해야 합니다.", ctx, 0.7)
    0.0
    """
    one = sentences(context)
    for passages in (one, [f"{a} {b}" for a, b in zip(one, one[1:])]):
        scores = [shared_share(question, p) for p in passages if support(answer, p, question) >= min_support]
        if scores:
            return max(scores)
    return 0.0


def script_ok(text: str, lang: str, min_share: float, min_letters: int = 4) -> bool:
    """Enough of the letters are Hangul (ko) or Latin (en); texts with fewer than `min_letters`
    letters (numbers, codes) pass.

    >>> script_ok("연차는 며칠인가요?", "ko", 0.6), script_ok("How many days?", "ko", 0.6)
    (True, False)
    >>> script_ok("GPU 서버 설정 방법은?", "ko", 0.6), script_ok("$500", "en", 0.6)
    (True, True)
    """
    hangul, latin, other = script_counts(text)
    letters = hangul + latin + other
    if letters < min_letters:
        return True
    return (hangul if lang == "ko" else latin) / letters >= min_share


def duplicate_reasons(texts: list[str], near_threshold: float) -> list[str | None]:
    """For each text: None (first of its kind), 'duplicate_exact' or 'duplicate_near'.

    >>> duplicate_reasons(["연차는 며칠인가요?", "연차는  며칠인가요?", "이월은 언제까지 가능한가요?"], 0.8)
    [None, 'duplicate_exact', None]
    """
    reasons: list[str | None] = [None] * len(texts)
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        if first.setdefault(dedup_key(t), i) != i:
            reasons[i] = "duplicate_exact"
    if near_threshold and len(texts) > 1:
        groups = near_duplicates(texts, threshold=near_threshold).groups
        for i, g in enumerate(groups):
            if reasons[i] is None and g != i:
                reasons[i] = "duplicate_near"
    return reasons
