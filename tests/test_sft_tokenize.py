"""Messages -> (ids, labels): exact masks per template and format, EOS, BOS, truncation."""

import pytest
from tests.helpers import tiny_tokenizer

from tunelab.sft.formats import row_to_messages, split_prompt
from tunelab.sft.templates import build_template
from tunelab.sft.tokenize import (
    IGNORE,
    TooLongError,
    cut_text,
    encode,
    encode_prompt,
    special_prefix,
    tokenize_messages,
)

ALPACA = {"instruction": "Add the numbers.", "input": "2+2", "output": "4"}
PC = {"prompt": "The capital of France is", "completion": " Paris."}
DOCQA_KO = {"question": "보험금 청구 기한은?", "context": "보험금 청구는 사고일로부터 3년 이내에 해야 합니다.",
            "answer": "사고일로부터 3년 이내"}
DOCQA_EN = {"question": "How long is the refund period?", "context": "The refund period is 30 days from delivery.",
            "answer": "30 days from delivery"}
CHAT = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                     {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


def trained(ex):
    """The (position, id) pairs that carry a loss; every label is -100 or its own input id."""
    assert len(ex["input_ids"]) == len(ex["labels"])
    assert all(l in (IGNORE, i) for i, l in zip(ex["input_ids"], ex["labels"]))
    return [(k, i) for k, (i, l) in enumerate(zip(ex["input_ids"], ex["labels"])) if l != IGNORE]


CASES = [  # (row, template, the exact texts that are trained, in order)
    (ALPACA, "alpaca", ["4<|im_end|>"]),
    (PC, "alpaca", [" Paris.<|im_end|>"]),
    (PC, "jinja", [" Paris.<|im_end|>"]),
    (DOCQA_KO, "docqa-ko", ["사고일로부터 3년 이내<|im_end|>"]),
    (DOCQA_EN, "docqa-en", ["30 days from delivery<|im_end|>"]),
    (DOCQA_KO, "docqa", ["사고일로부터 3년 이내<|im_end|>"]),
    (CHAT, "alpaca", ["Hello<|im_end|>", "4<|im_end|>"]),
    (CHAT, "chat", ["Hello<|im_end|>", "4<|im_end|>"]),
    (ALPACA, "chat", ["4<|im_end|>"]),
    (DOCQA_KO, "chat", ["사고일로부터 3년 이내<|im_end|>"]),
]


@pytest.mark.parametrize("row, name, texts", CASES, ids=lambda x: x if isinstance(x, str) else None)
def test_exact_masks(row, name, texts):
    tok = tiny_tokenizer()
    t = build_template(name, tok, prompt="{{ content }}\n=>" if name == "jinja" else None)
    msgs = row_to_messages(row)
    ex = tokenize_messages(msgs, t, tok)
    got = trained(ex)
    # the trained ids are exactly each answer's own tokens followed by EOS, nothing else
    expected_ids = [i for text in texts for i in encode(tok, text)]
    assert [i for _, i in got] == expected_ids
    # the last answer ends the sequence (its EOS is the last token)
    assert got[-1][0] == len(ex["input_ids"]) - 1 and ex["input_ids"][-1] == tok.eos_token_id
    # prompt part == what inference feeds: the ids before the last answer are encode_prompt's
    prompt_msgs, answer = split_prompt(msgs)
    p = encode_prompt(prompt_msgs, t, tok)
    assert ex["input_ids"][: len(p)] == p
    assert ex["input_ids"][len(p):] == encode(tok, answer) + [tok.eos_token_id]
    assert ex["truncated"] is False


def test_only_answers_trained_in_multi_turn_chat():
    tok = tiny_tokenizer()
    ex = tokenize_messages(row_to_messages(CHAT), build_template("chat", tok), tok)
    positions = [k for k, _ in trained(ex)]
    n_hello, n_four = len(encode(tok, "Hello<|im_end|>")), len(encode(tok, "4<|im_end|>"))
    assert len(positions) == n_hello + n_four
    # two contiguous runs: the first answer, then (after an untrained prompt) the last one
    first, second = positions[:n_hello], positions[n_hello:]
    assert first == list(range(first[0], first[0] + n_hello))
    assert second == list(range(len(ex["input_ids"]) - n_four, len(ex["input_ids"])))
    assert second[0] - first[-1] > 1
    # the newline after the first <|im_end|> (start of the next prompt) is not trained
    assert tok.decode(ex["input_ids"][first[-1] + 1]) == "\n"


def test_train_on_prompt_trains_everything():
    tok = tiny_tokenizer()
    ex = tokenize_messages(row_to_messages(ALPACA), build_template("alpaca"), tok, train_on_prompt=True)
    assert ex["labels"] == ex["input_ids"]


def test_eos_learned_when_pad_equals_eos():
    tok = tiny_tokenizer()
    assert tok.pad_token_id == tok.eos_token_id
    ex = tokenize_messages(row_to_messages(DOCQA_EN), build_template("docqa-en"), tok)
    assert ex["labels"][-1] == tok.eos_token_id == tok.pad_token_id


def test_bos_prefix_for_text_templates_not_for_chat():
    tok = tiny_tokenizer(bos=True)
    assert special_prefix(tok) == [tok.bos_token_id]
    ex = tokenize_messages(row_to_messages(ALPACA), build_template("alpaca"), tok)
    assert ex["input_ids"][0] == tok.bos_token_id and ex["labels"][0] == IGNORE
    assert ex["input_ids"][1] != tok.bos_token_id
    chat = tokenize_messages(row_to_messages(ALPACA), build_template("chat", tok), tok)
    assert chat["input_ids"][0] != tok.bos_token_id  # the chat template writes its own prefix
    assert special_prefix(tiny_tokenizer()) == []


def test_segments_are_tokenised_apart_at_the_boundary():
    # a completion that continues a word: as one string, " Paris" would be one token that
    # straddles the prompt/answer boundary; per segment, the prompt ids are what inference sees
    tok = tiny_tokenizer()
    t = build_template("jinja", prompt="{{ content }}")
    msgs = row_to_messages({"prompt": "The capital of France is Par", "completion": "is."})
    ex = tokenize_messages(msgs, t, tok)
    prompt_ids, answer_ids = encode(tok, "The capital of France is Par"), encode(tok, "is.")
    assert encode(tok, "The capital of France is Paris.") != prompt_ids + answer_ids  # would merge
    assert ex["input_ids"] == prompt_ids + answer_ids + [tok.eos_token_id]
    assert [i for _, i in trained(ex)] == answer_ids + [tok.eos_token_id]
    assert encode_prompt(msgs[:1], t, tok) == prompt_ids


def _answer_intact(ex, tok, answer):
    ids = [i for _, i in trained(ex)]
    assert ids == encode(tok, answer) + [tok.eos_token_id]


@pytest.mark.parametrize("row, name", [(DOCQA_KO, "docqa-ko"), (DOCQA_EN, "docqa-en"), (DOCQA_KO, "chat")])
def test_truncation_cuts_the_context_never_the_answer(row, name):
    tok = tiny_tokenizer()
    t = build_template(name, tok)
    long_row = {**row, "context": " ".join([row["context"]] * 20)}
    msgs = row_to_messages(long_row)
    full = tokenize_messages(msgs, t, tok)
    max_length = len(full["input_ids"]) // 2
    ex = tokenize_messages(msgs, t, tok, max_length=max_length, where="qa.jsonl:9")
    assert ex["truncated"] is True and len(ex["input_ids"]) <= max_length
    _answer_intact(ex, tok, row["answer"])
    text = tok.decode(ex["input_ids"])
    assert row["question"] in text and "\ufffd" not in text  # no half Korean syllable
    # the context kept is the original's start, as long as fits: one more token would not
    def length(n_context_tokens):
        cut = cut_text(tok, long_row["context"], n_context_tokens)
        return len(tokenize_messages(row_to_messages({**long_row, "context": cut}), t, tok)["input_ids"])

    n = len(encode(tok, long_row["context"]))
    kept = max(k for k in range(1, n + 1) if cut_text(tok, long_row["context"], k) in text and length(k) <= max_length)
    assert length(kept) == len(ex["input_ids"]) and length(kept + 1) > max_length


def test_truncation_of_alpaca_shortens_input_keeps_instruction():
    tok = tiny_tokenizer()
    row = {**ALPACA, "input": "2+2 " * 200}
    ex = tokenize_messages(row_to_messages(row), build_template("alpaca"), tok, max_length=80)
    assert ex["truncated"] and len(ex["input_ids"]) <= 80
    text = tok.decode(ex["input_ids"])
    assert "### Instruction:\nAdd the numbers.\n\n### Input:\n2+2" in text
    _answer_intact(ex, tok, "4")


def test_truncation_drops_earliest_turns_keeps_system():
    tok = tiny_tokenizer()
    turns = [m for i in range(6) for m in ({"role": "user", "content": f"question {i} " * 3},
                                           {"role": "assistant", "content": f"answer {i}"})]
    msgs = [{"role": "system", "content": "Be brief."}] + turns
    t = build_template("chat", tok)
    full = tokenize_messages(msgs, t, tok)
    ex = tokenize_messages(msgs, t, tok, max_length=len(full["input_ids"]) // 2)
    text = tok.decode(ex["input_ids"])
    assert ex["truncated"] and "Be brief." in text and "question 5" in text and "question 0" not in text
    assert tok.decode([i for _, i in trained(ex)]).endswith("answer 5<|im_end|>")


def test_too_long_even_without_context_names_the_row():
    tok = tiny_tokenizer()
    row = {**DOCQA_EN, "answer": "30 days " * 50}
    with pytest.raises(TooLongError, match=r"qa.jsonl:4: needs \d+ tokens even with its context removed"):
        tokenize_messages(row_to_messages(row), build_template("docqa-en"), tok, max_length=40,
                          where="qa.jsonl:4")


def test_cut_text_keeps_whole_korean_characters():
    tok = tiny_tokenizer()
    text = "보험금 청구"
    for n in range(len(encode(tok, text)) + 1):
        cut = cut_text(tok, text, n)
        assert text.startswith(cut) and "\ufffd" not in cut
    assert cut_text(tok, text, 0) == "" and cut_text(tok, text, 999) == text
