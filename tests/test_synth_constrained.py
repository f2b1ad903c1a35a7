"""Constrained decoding for the local teacher (`tunelab.synth.constrained`): on tiny random-init
models, whose free replies are noise, every reply has the shape the parsers read, whatever the
seed, with sampling on, in a byte-level BPE and a SentencePiece-style vocabulary, and when the
token budget is tight. Plus the Korean rules (an interrogative ending before "?"), the cache key
and the Korean support score."""

from __future__ import annotations

import pytest
from tests.helpers import one_thread, tiny_model, tiny_sentencepiece_tokenizer, tiny_tokenizer

from tunelab.synth.cache import ReplyCache
from tunelab.synth.constrained import Answer, QuestionList, StructureProcessor, Vocabulary, _Questions
from tunelab.synth.filters import looks_like_question, new_in_answer, parse_answer, parse_questions, support
from tunelab.synth.pipeline import run_requests
from tunelab.synth.prompts import TeacherConfig
from tunelab.synth.teachers import LocalTeacher

CHUNK = "보험금 청구는 사고일로부터 3년 이내에 해야 합니다. 대출 금리는 연 4.5%입니다."
MESSAGES = [
    [{"role": "system", "content": "질문을 쓰세요."}, {"role": "user", "content": f"[내용]\n{CHUNK}\n질문 3개를 쓰세요."}],
    [{"role": "user", "content": "The refund period is 30 days from delivery. Write 3 questions."}],
    [{"role": "user", "content": "아래 [내용]을 참고해서 [질문]에 대해 답변해주세요."}],
]  # fmt: skip


@pytest.fixture(scope="module", params=["bpe", "sentencepiece"])
def tiny_folder(request, tmp_path_factory):
    """A tiny random Llama with a chat template, saved with a byte-level BPE (ChatML) or a
    Gemma-style SentencePiece tokenizer (byte fallback: "?" and "\\n" are <0x..> tokens)."""
    tok = tiny_tokenizer() if request.param == "bpe" else tiny_sentencepiece_tokenizer()
    folder = tmp_path_factory.mktemp(request.param)
    tok.save_pretrained(str(folder))
    tiny_model(tok, seed=3).save_pretrained(str(folder))
    return folder


def check_questions(reply: str, spec: QuestionList, n: int) -> None:
    questions = parse_questions(reply, spec.lang, rejected := [])
    assert len(questions) == n and rejected == [], reply
    assert all(looks_like_question(q, spec.lang) for q in questions)
    assert [line.split(".", 1)[0] for line in reply.splitlines()] == [str(k) for k in range(1, n + 1)], reply


@pytest.mark.parametrize("lang", ["ko", "en"])
def test_questions_always_parse(tiny_folder, lang):
    spec = QuestionList(3, lang, min_chars=8, max_chars=60)
    with one_thread():
        for seed in range(4):
            teacher = LocalTeacher(tiny_folder, TeacherConfig(temperature=1.0, seed=seed, max_new_tokens=48))
            for reply in teacher.generate(MESSAGES, spec):
                check_questions(reply, spec, 3)
        free = LocalTeacher(tiny_folder, TeacherConfig(max_new_tokens=48)).generate(MESSAGES)
        assert not any(len(parse_questions(r, lang)) == 3 for r in free)  # what the constraint is for
        greedy = LocalTeacher(tiny_folder, TeacherConfig(max_new_tokens=48))
        assert greedy.generate(MESSAGES, spec) == greedy.generate(MESSAGES, spec)


def test_answers_always_parse(tiny_folder):
    with one_thread():
        for seed in range(4):
            teacher = LocalTeacher(tiny_folder, TeacherConfig(temperature=1.0, seed=seed, max_new_tokens=24))
            for reply in teacher.generate(MESSAGES, Answer(max_chars=400)):
                assert parse_answer(reply) is not None and "\n" not in reply, reply


def test_a_tight_budget_still_closes_the_list(tiny_folder):
    """With the least budget the config allows (8 tokens), fewer items, but complete ones."""
    spec = QuestionList(3, "ko")
    with one_thread():
        for seed in range(3):
            teacher = LocalTeacher(tiny_folder, TeacherConfig(temperature=1.0, seed=seed, max_new_tokens=8))
            for reply in teacher.generate(MESSAGES, spec):
                assert len(parse_questions(reply, "ko")) == 1, reply
            for reply in teacher.generate(MESSAGES, Answer()):
                assert parse_answer(reply) is not None, reply


def test_korean_question_mark_only_after_an_interrogative_ending():
    tok = tiny_tokenizer()
    vocab = Vocabulary(tok, len(tok), [tok.eos_token_id])
    q_mark = tok.encode("?", add_special_tokens=False)[0]
    assert q_mark in vocab.question_end and not vocab.question_body[tok.encode("\n", add_special_tokens=False)[0]]

    def allowed(text: str, lang: str = "ko"):
        import torch

        state = _Questions(QuestionList(3, lang), vocab, budget=200)
        state.pending = []
        state.item = tok.encode(text, add_special_tokens=False)
        state.item_budget = 100
        mask = torch.zeros(len(tok), dtype=torch.bool)
        state.allowed(100, torch.zeros(len(tok)), mask)
        return mask

    assert allowed("보험금 청구는 언제까지 해야 합니까")[q_mark]
    assert allowed("대출 금리는 얼마인가요")[q_mark]
    assert not allowed("대출 금리는 연 4.5%입니다")[q_mark]  # a copied statement cannot be closed with "?"
    assert not allowed("대출 금리는 연 4.5%인가요")[q_mark]  # nor one with an interrogative ending only
    assert not allowed("금리는")[q_mark]  # shorter than min_chars
    assert allowed("What is the refund period", "en")[q_mark] and allowed("대출 금리는 연 4.5%입니다", "en")[q_mark]
    assert allowed("대출 금리는 얼마인가요")[tok.encode(" 대출", add_special_tokens=False)[0]]  # or go on


def test_korean_items_ask_in_one_clause_and_do_not_copy_the_prompt():
    import torch

    tok = tiny_tokenizer()
    vocab = Vocabulary(tok, len(tok), [tok.eos_token_id])

    def state(lang: str, item: str, prompt: str = "", max_copy: int = 14):
        s = _Questions(QuestionList(3, lang, max_copy=max_copy), vocab, budget=200)
        s.set_prompt(tok.encode(prompt, add_special_tokens=False))
        s.pending, s.item, s.item_budget = [], tok.encode(item, add_special_tokens=False), 100
        mask = torch.zeros(len(tok), dtype=torch.bool)
        s.allowed(100, torch.zeros(len(tok)), mask)
        return mask

    dot, comma = (tok.encode(c, add_special_tokens=False)[0] for c in ".,")
    assert not state("ko", "대출 금리는 얼마, 연 4.5%입니다")[dot] and not state("ko", "보험금 청구는")[comma]
    assert state("en", "대출 금리는 연 4.5%입니다")[dot] and state("ko", "대출 금리는 얼마, 연 4")[dot]  # 4.5
    space = tok.encode(" ", add_special_tokens=False)[0]
    assert state("ko", "재택근무는")[space] and not state("ko", "재택근무는 ")[space]  # no runs of blanks
    assert not state("ko", "보상하지 않는다")[space] and not state("ko", "보상하지 않는다")[comma]  # 다: the word goes on
    two = tok.encode("2", add_special_tokens=False)[0]
    assert not state("ko", "재택근무는 주")[two] and state("ko", "재택근무는 주 몇")[two]  # ask for the fact
    assert state("en", "Is remote work allowed")[two]
    ids = tok.encode(CHUNK, add_special_tokens=False)
    assert len(ids) > 16
    copied = tok.decode(ids[:14])
    assert not state("ko", copied, CHUNK)[ids[14]]  # the 15th token in a row from the prompt
    assert state("ko", copied, CHUNK, max_copy=0)[ids[14]] and state("ko", tok.decode(ids[1:14]), CHUNK)[ids[14]]


def test_korean_items_take_only_parts_of_hangul_syllables():
    from tunelab.synth.constrained import _bytes_to_unicode

    tok = tiny_tokenizer()
    vocab = Vocabulary(tok, len(tok), [tok.eos_token_id])
    byte_token = {b: tok.convert_tokens_to_ids(c) for b, c in _bytes_to_unicode().items()}
    assert vocab.korean[byte_token[0xEB]] and vocab.korean[byte_token[0xB0]]  # 며 = EB A9 B0
    assert not vocab.korean[byte_token[0xD9]] and not vocab.korean[byte_token[0xE4]]  # ۱ (Persian), 何 (Han)
    assert vocab.question_body[byte_token[0xD9]]  # in English items they are free text


def test_processor_forces_the_close_at_the_item_budget():
    import torch

    tok = tiny_tokenizer()
    vocab = Vocabulary(tok, len(tok), [tok.eos_token_id])
    proc = StructureProcessor(QuestionList(2, "en"), vocab, batch_size=1, max_new_tokens=30)
    ids = torch.zeros((1, 5), dtype=torch.long)
    body = next(i for i in range(len(tok)) if vocab.question_body[i])
    for _ in range(30):
        allowed = torch.isfinite(proc(ids, torch.zeros(1, len(tok))))[0]
        # always choose free text when allowed: the processor alone must end the items and the reply
        nxt = body if allowed[body] else int(allowed.nonzero()[0])
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        if nxt == tok.eos_token_id:
            break
    reply = tok.decode(ids[0, 5:], skip_special_tokens=True)
    assert ids[0, -1] == tok.eos_token_id and len(parse_questions(reply, "en")) == 2, reply


def test_the_constraint_is_part_of_the_cache_key(tmp_path):
    class Fake:
        kind, id, params, cfg = "local", "local:fake@0", {"temperature": 0.0}, TeacherConfig(batch_size=2)
        constrains = True
        seen: list = []

        def load(self):
            pass

        def generate(self, batch, constraint=None):
            self.seen.append(constraint)
            return ["1. a?"] * len(batch)

    cache = ReplyCache(tmp_path / "c.sqlite")
    teacher = Fake()
    msgs = [[{"role": "user", "content": "x"}]]
    spec = QuestionList(3, "ko")
    assert run_requests(teacher, msgs, cache, "v1", "q", False, constraint=spec)[1] == 0
    assert run_requests(teacher, msgs, cache, "v1", "q", False, constraint=spec)[1] == 1  # cached
    assert run_requests(teacher, msgs, cache, "v1", "q", False)[1] == 0  # a free reply is another key
    teacher.constrains = False  # teacher.constrained: false (or an endpoint): no constraint is passed
    assert run_requests(teacher, msgs, cache, "v1", "q", False, constraint=spec)[1] == 1
    assert teacher.seen == [spec, None]
    cache.close()


# --- Korean support ------------------------------------------------------------------------------

HR = ("연차휴가는 사용 예정일 3일 전까지 인사시스템에서 신청해야 한다. 사용하지 않은 연차는 다음 해 3월 31일까지 "
      "이월할 수 있으며, 이월된 휴가를 기한 내에 쓰지 않으면 소멸한다. 회사는 재택근무자에게 월 5만 원의 통신비를 지원한다.")  # fmt: skip


@pytest.mark.parametrize("question, answer", [
    ("연차휴가는 언제까지 신청해야 하나요?", "사용 예정일 3일 전까지 인사시스템에서 신청해야 합니다."),
    ("연차휴가는 어디에서 신청하나요?", "인사시스템에서 신청합니다."),
    ("연차휴가 신청 기한은 언제인가요?", "연차휴가는 사용 예정일의 3일 전까지입니다."),  # 예정일의 / 전까지입니다
    ("쓰지 않은 연차는 어떻게 되나요?", "연차는 다음 해 3월 31일까지 이월됩니다."),  # 이월할 / 이월됩니다
    ("통신비 지원은 얼마인가요?", "재택근무자는 월 5만 원의 통신비를 지원받습니다."),
])  # fmt: skip
def test_korean_support_accepts_grounded_answers_with_other_particles(question, answer):
    assert support(answer, HR, question) >= 0.7, sorted(new_in_answer(answer, question))


@pytest.mark.parametrize("question, answer", [
    ("연차휴가는 언제까지 신청해야 하나요?", "사용 예정일 7일 전까지 팀장에게 메일로 신청합니다."),
    ("통신비 지원은 얼마인가요?", "재택근무자는 월 10만 원의 교통비를 받습니다."),
    ("쓰지 않은 연차는 어떻게 되나요?", "남은 연차는 급여로 보상받습니다."),
])  # fmt: skip
def test_korean_support_rejects_unsupported_answers(question, answer):
    assert support(answer, HR, question) < 0.7


def test_particles_no_longer_count_against_a_grounded_answer():
    """Word-internal bigrams alone counted 가는 and 일입 (particles, copula) as unsupported claims."""
    context = "매년 15일의 연차휴가가 부여된다."
    assert support("연차휴가는 15일입니다", context) == 1.0
    assert support("문서에서 확인합니다", "문서는 인사팀이 관리한다") < support("문서에서 확인합니다", "문서는 인사팀이 확인한다") == 1.0
