"""Templates: exact rendered text of each, chat segments, JSON round-trip, clear errors."""

import json

import pytest
from tests.helpers import tiny_tokenizer

from tunelab.errors import TunelabError
from tunelab.sft.formats import row_to_messages
from tunelab.sft.templates import (
    REFUSAL_EN,
    REFUSAL_KO,
    ChatTemplate,
    Segment,
    build_template,
    load_template,
    save_template,
    template_from_dict,
)

KO_ROW = {"question": "환불 기간은?", "context": "상품 수령 후 30일 이내 환불 가능.", "answer": "30일 이내"}
EN_ROW = {"question": "How long?", "context": "Refunds within 30 days.", "answer": "30 days"}


def test_docqa_ko_is_exactly_the_users_template():
    seg, = build_template("docqa-ko").render(row_to_messages(KO_ROW))
    expected = (
        '아래 [내용]을 참고해서 [질문]에 대해 답변해주세요. 만약 질문에 답변할 수 없으면 "답변을 찾을 수 없습니다."로 대답하세요.\n'
        "[질문]\n환불 기간은?\n[내용]\n상품 수령 후 30일 이내 환불 가능.\n[답변]\n"
    )
    assert seg == Segment(expected, "30일 이내", add_eos=True)
    assert REFUSAL_KO == "답변을 찾을 수 없습니다."


def test_docqa_en_and_auto_language():
    seg, = build_template("docqa-en").render(row_to_messages(EN_ROW))
    assert seg.prompt == (
        'Answer the [Question] using the [Context] below. If the question cannot be answered '
        'from the context, reply "The answer cannot be found."\n'
        "[Question]\nHow long?\n[Context]\nRefunds within 30 days.\n[Answer]\n"
    )
    assert REFUSAL_EN in seg.prompt
    auto = build_template("docqa")
    assert auto.render(row_to_messages(KO_ROW))[0].prompt.startswith("아래 [내용]")
    assert auto.render(row_to_messages(EN_ROW))[0].prompt.startswith("Answer the [Question]")


def test_alpaca_matches_ch07_with_and_without_input():
    t = build_template("alpaca")
    seg, = t.render(row_to_messages({"instruction": "Add.", "input": "2+2", "output": "4"}))
    assert seg.prompt == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nAdd.\n\n### Input:\n2+2\n\n### Response:\n"
    )
    assert seg.response == "4"
    seg, = t.render(row_to_messages({"instruction": "Say hi.", "output": "Hi"}))
    assert "### Input" not in seg.prompt and seg.prompt.endswith("Say hi.\n\n### Response:\n")
    # a chat row: user content stands in for the instruction, the system replaces the preamble
    msgs = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"}]
    s1, s2 = t.render(msgs)
    assert s1.prompt == "SYS\n\n### Instruction:\na\n\n### Response:\n"
    assert s2.prompt == "\n\n### Instruction:\nc\n\n### Response:\n" and s2.response == "d"


def test_jinja_user_template_keeps_trailing_newline_and_names_missing_fields():
    t = build_template("jinja", prompt="Q: {{ question }}\nC: {{ context }}\nA:\n", response=" {{ content }}")
    seg, = t.render(row_to_messages(EN_ROW))
    assert seg.prompt == "Q: How long?\nC: Refunds within 30 days.\nA:\n" and seg.response == " 30 days"
    t2 = build_template("jinja", prompt="{{ instruction }}\n")
    with pytest.raises(TunelabError, match=r"data.jsonl:3: template 'jinja': 'instruction' is undefined"):
        t2.render(row_to_messages(EN_ROW), where="data.jsonl:3")
    with pytest.raises(TunelabError, match="Jinja syntax error at line 1"):
        build_template("jinja", prompt="{{ oops }")


def test_unknown_template_suggests_closest():
    with pytest.raises(TunelabError, match="did you mean 'docqa-ko'"):
        build_template("docqa_ko")
    with pytest.raises(TunelabError, match="only one question|one question per row"):
        build_template("docqa-ko").render(
            [{"role": "user", "content": "", "fields": {"question": "q", "context": "c"}},
             {"role": "assistant", "content": "a"},
             {"role": "user", "content": "", "fields": {"question": "q", "context": "c"}},
             {"role": "assistant", "content": "a"}])


def test_chat_template_segments_chatml():
    tok = tiny_tokenizer()
    t = build_template("chat", tok)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    s1, s2 = t.render(msgs, tok)
    default_system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    assert s1 == Segment(default_system + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
                         "Hello<|im_end|>", add_eos=False)
    # the newline after <|im_end|> is not trained: it opens the next prompt
    assert s2 == Segment("\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", "4<|im_end|>", False)
    full = tok.apply_chat_template(msgs, tokenize=False)
    assert full == "".join(s.prompt + s.response for s in (s1, s2)) + "\n"
    # inference: the open turn ends with the generation prompt
    *_, last = t.render(msgs[:3], tok)
    assert last == Segment("\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", None, False)
    assert t.stop_strings(tok) == ["<|im_end|>"]


def test_chat_template_system_override_and_docqa_user_template():
    tok = tiny_tokenizer()
    t = build_template("chat", tok, system="Answer from the context.", user_template="docqa-en")
    seg, = t.render(row_to_messages(EN_ROW), tok)
    assert seg.prompt.startswith("<|im_start|>system\nAnswer from the context.<|im_end|>\n<|im_start|>user\nAnswer the [Question]")
    assert seg.prompt.endswith("[Answer]<|im_end|>\n<|im_start|>assistant\n")
    assert "SmolLM" not in seg.prompt
    assert t.stop_strings(tok) == ["<|im_end|>"]  # found without the docqa fields


def test_chat_template_that_rewrites_history_is_refused():
    tok = tiny_tokenizer()
    # drops all but the last assistant answer, like reasoning templates stripping old thoughts
    rewriting = ("{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
                 "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    t = ChatTemplate(rewriting)
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    with pytest.raises(TunelabError, match="x.jsonl:4: the model's chat template rewrites earlier turns"):
        t.render(msgs, tok, where="x.jsonl:4")


def test_chat_without_template_is_a_clear_error():
    class NoChat:
        chat_template = None

    with pytest.raises(TunelabError, match="has no chat template"):
        build_template("chat", NoChat())


@pytest.mark.parametrize("name", ["alpaca", "docqa-ko", "docqa-en", "docqa", "jinja", "chat"])
def test_template_json_round_trip(name, tmp_path):
    tok = tiny_tokenizer()
    t = build_template(name, tok, prompt="P: {{ content }}\n" if name == "jinja" else None,
                       user_template="docqa-ko" if name == "chat" else None)
    path = save_template(t, tmp_path / "sft_template.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data == t.to_dict() and data["type"] in ("text", "chat")
    again = load_template(tmp_path)  # a run folder works too
    assert again.to_dict() == t.to_dict()
    row = KO_ROW if name != "jinja" else {"prompt": "hi", "completion": "yo"}
    msgs = row_to_messages(row)
    assert again.render(msgs, tok) == t.render(msgs, tok)
    if name == "docqa-ko":
        assert "답변을 찾을 수 없습니다" in path.read_text(encoding="utf-8")  # readable, not \\u escapes


def test_load_template_errors(tmp_path):
    with pytest.raises(TunelabError, match="no saved SFT template"):
        load_template(tmp_path)
    (tmp_path / "sft_template.json").write_text('{"type": "text",\n oops}')
    with pytest.raises(TunelabError, match=r"sft_template.json:2: not valid JSON"):
        load_template(tmp_path)
    with pytest.raises(TunelabError, match="unknown type 'rnn'"):
        template_from_dict({"type": "rnn"})


def _hf_messages(msgs):
    """HF chat messages carry a row's fields as extra keys."""
    return [{"role": m["role"], "content": m["content"], **m.get("fields", {})} for m in msgs]


@pytest.mark.parametrize("name, row", [
    ("alpaca", {"instruction": "Add.", "input": "2+2", "output": "4"}),
    ("alpaca", {"messages": [{"role": "system", "content": "SYS"}, {"role": "user", "content": "a"},
                             {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
                             {"role": "assistant", "content": "d"}]}),
    ("docqa-ko", KO_ROW), ("docqa", EN_ROW), ("jinja", {"prompt": "hi", "completion": "yo"}),
    ("chat", KO_ROW),
])
@pytest.mark.parametrize("bos", [False, True])
def test_hf_chat_template_gives_the_same_prompt_ids(name, row, bos):
    from tunelab.sft.export import hf_chat_template
    from tunelab.sft.tokenize import encode_prompt, tokenize_messages

    tok = tiny_tokenizer(bos=bos)
    t = build_template(name, tok, prompt="[{{ turn }}] {{ content }}\n" if name == "jinja" else None,
                       system="Be exact." if name == "chat" else None,
                       user_template="docqa-ko" if name == "chat" else None)
    hf = hf_chat_template(t, tok)
    msgs = row_to_messages(row)
    prompt = tok.apply_chat_template(_hf_messages(msgs[:-1]), chat_template=hf, tokenize=True,
                                     add_generation_prompt=True, return_dict=False)
    assert list(prompt) == encode_prompt(msgs[:-1], t, tok)
    full = tok.apply_chat_template(_hf_messages(msgs), chat_template=hf, tokenize=True, return_dict=False)
    ours = tokenize_messages(msgs, t, tok)["input_ids"]
    assert list(full[: len(ours)]) == ours  # ChatML adds one untrained "\n" after the last turn
