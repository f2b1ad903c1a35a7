"""Rows -> messages: format detection, each format's messages, bad rows name file and line."""

import pytest

from tunelab.errors import TunelabError
from tunelab.sft.formats import FORMATS, context_field, detect_format, row_to_messages, split_prompt, with_text


def test_detect_each_format():
    assert detect_format({"instruction": "i", "output": "o"}) == "alpaca"
    assert detect_format({"prompt": "p", "completion": "c"}) == "prompt_completion"
    assert detect_format({"messages": []}) == "messages"
    assert detect_format({"question": "q", "context": "c", "answer": "a"}) == "docqa"


def test_alpaca_rows():
    msgs = row_to_messages({"instruction": "Add.", "input": "2+2", "output": "4", "_line": 1})
    assert msgs == [
        {"role": "user", "content": "Add.\n\n2+2", "fields": {"instruction": "Add.", "input": "2+2"}},
        {"role": "assistant", "content": "4"},
    ]
    no_input = row_to_messages({"instruction": "Say hi.", "output": "Hi"})
    assert no_input[0]["content"] == "Say hi." and no_input[0]["fields"]["input"] == ""


def test_docqa_rows_keep_fields_and_language():
    ko = row_to_messages({"question": "기간은?", "context": "30일", "answer": "30일"})
    assert ko[0]["fields"] == {"question": "기간은?", "context": "30일", "lang": "ko"}
    assert "answer" not in ko[0]["fields"]  # the answer never reaches the prompt side
    en = row_to_messages({"question": "How long?", "context": "30 days", "answer": "30 days",
                          "lang": "en", "answerable": True})
    assert en[0]["fields"]["lang"] == "en" and en[1] == {"role": "assistant", "content": "30 days"}


def test_chat_rows_multi_turn_with_system():
    row = {"messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    msgs = row_to_messages(row)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    prompt, ref = split_prompt(msgs)
    assert ref == "4" and prompt[-1]["content"] == "2+2?"
    assert row_to_messages(row, require_answer=False)[-1]["role"] == "user"


def test_explicit_format_and_inference_rows():
    row = {"prompt": "Q", "completion": "A", "instruction": "ignored"}
    assert row_to_messages(row, "prompt_completion")[0]["content"] == "Q"
    assert row_to_messages({"question": "q?", "context": "c"}, require_answer=False)[-1]["role"] == "user"


@pytest.mark.parametrize(
    "row, fmt, needle",
    [
        ({"instruction": "i", "_line": 12}, "auto", "train.jsonl:12: missing field 'output'"),
        ({"instruction": "i", "output": "  ", "_line": 13}, "auto", "train.jsonl:13: field 'output' is empty (the answer"),
        ({"question": "q", "context": "c", "answer": "", "_line": 14}, "auto", "train.jsonl:14: field 'answer' is empty"),
        ({"question": "q", "context": "c", "_line": 15}, "auto", "train.jsonl:15: missing field 'answer'"),
        ({"prompt": 3, "completion": "c", "_line": 16}, "auto", "train.jsonl:16: field 'prompt' must be a string"),
        ({"text": "t", "_line": 17}, "auto", "train.jsonl:17: cannot tell the row format"),
        ({"messages": [{"role": "user", "content": "hi"}], "_line": 18}, "auto",
         "train.jsonl:18: 'messages' must end with an assistant message"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
          "_line": 19}, "auto", "train.jsonl:19: messages[1]: assistant 'content' is empty"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}],
          "_line": 20}, "auto", "train.jsonl:20: messages[1]: expected role 'assistant', got 'user'"),
        ({"messages": [{"role": "bot", "content": "hi"}], "_line": 21}, "auto",
         "train.jsonl:21: messages[0]: role 'bot'"),
        ({"prompt": "p", "completion": "c", "_line": 22}, "alpaca", "train.jsonl:22: missing field 'instruction'"),
    ],
)
def test_bad_rows_name_file_line_and_field(row, fmt, needle):
    with pytest.raises(TunelabError) as e:
        row_to_messages(row, fmt, source="train.jsonl")
    assert needle in str(e.value)


def test_unknown_format_is_an_error():
    with pytest.raises(TunelabError, match="unknown data format 'openai_chat'"):
        row_to_messages({"prompt": "p", "completion": "c"}, "openai_chat")


SHAREGPT = {"conversations": [
    {"from": "system", "value": "Be brief."},
    {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
    {"from": "user", "value": "2+2?"}, {"from": "assistant", "value": "4"},
], "_line": 4}


def test_detect_sharegpt():
    assert detect_format(SHAREGPT) == "sharegpt"
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"messages": [{"from": "human", "value": "q"}]}) == "sharegpt"
    assert detect_format({"messages": [{"role": "user", "content": "q"}]}) == "messages"
    assert "sharegpt" in FORMATS


def test_sharegpt_rows_become_chat_messages():
    msgs = row_to_messages(SHAREGPT)
    assert msgs == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
    ]
    # the same turns under `messages` (LLaMA-Factory's sharegpt option), roles in any case
    other = {"messages": [{"from": "Human", "value": "q"}, {"from": "bot", "value": "a"}]}
    assert [m["role"] for m in row_to_messages(other)] == ["user", "assistant"]
    assert row_to_messages(SHAREGPT, "sharegpt", require_answer=False)[-1] == {"role": "user", "content": "2+2?"}
    prompt, ref = split_prompt(msgs)
    assert ref == "4" and prompt[0]["role"] == "system"


def test_sharegpt_top_level_system_field():
    row = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": "Be kind."}
    assert row_to_messages(row)[0] == {"role": "system", "content": "Be kind."}
    assert row_to_messages({**row, "system": ""})[0]["role"] == "user"


@pytest.mark.parametrize("row, fmt, needle", [
    ({"conversations": [], "_line": 30}, "auto", "train.json:30: field 'conversations' must be a non-empty list"),
    ({"conversations": [{"from": "human", "value": "q"}], "_line": 31}, "auto",
     "train.json:31: 'conversations' must end with an assistant answer (from gpt/assistant)"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "tool", "value": "x"}], "_line": 32}, "auto",
     "train.json:32: conversations[1]: role 'tool' ('from') is not one of human, user (user turns), gpt, assistant, bot (answers), system"),
    ({"conversations": [{"from": "gpt", "value": "a"}], "_line": 33}, "auto",
     "train.json:33: conversations[0]: expected role 'user', got 'gpt' (= assistant)"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": " "}], "_line": 34}, "auto",
     "train.json:34: conversations[1]: assistant 'value' is empty (the answer must not be empty)"),
    ({"conversations": [{"role": "user", "content": "q"}], "_line": 35}, "auto",
     "train.json:35: conversations[0] must be an object with 'from' and 'value'"),
    ({"conversations": [{"from": "human", "value": None}], "_line": 36}, "auto",
     "train.json:36: conversations[0]: 'value' must be a string, got NoneType"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "s"}], "_line": 37}, "auto",
     "train.json:37: conversations[1]: a system message may only come first"),
    ({"conversations": [{"from": "system", "value": "s"}], "system": "t", "_line": 38}, "auto",
     "train.json:38: conversations[0]: a system turn and a top-level 'system' field; keep one"),
    ({"conversations": [{"from": "system", "value": "s"}, {"from": "gpt", "value": "a"}], "_line": 39}, "auto",
     "train.json:39: conversations[1]: expected role 'user', got 'gpt'"),
    ({"conversations": "hi", "_line": 40}, "auto", "train.json:40: field 'conversations' must be a non-empty list"),
    ({"messages": [{"from": "human", "value": "q"}], "_line": 41}, "auto",
     "train.json:41: 'messages' must end with an assistant answer"),
    ({"conversations": [{"from": ["x"], "value": "q"}], "_line": 42}, "auto", "train.json:42: conversations[0]: role ['x']"),
    ({"prompt": "p", "_line": 43}, "sharegpt", "train.json:43: field 'conversations' must be a non-empty list"),
])
def test_bad_sharegpt_rows_name_file_line_and_role(row, fmt, needle):
    with pytest.raises(TunelabError) as e:
        row_to_messages(row, fmt, source="train.json")
    assert needle in str(e.value)


def test_sharegpt_without_an_answer_for_inference():
    row = {"conversations": [{"from": "human", "value": "q"}]}
    assert row_to_messages(row, require_answer=False) == [{"role": "user", "content": "q"}]


def test_context_field_and_rebuilt_content():
    docqa = row_to_messages({"question": "q?", "context": "long ctx", "answer": "a"})[0]
    assert context_field(docqa) == "context"
    short = with_text(docqa, "context", "lo")
    assert short["content"] == "lo\n\nq?" and short["fields"]["context"] == "lo"
    alpaca = row_to_messages({"instruction": "i", "input": "data", "output": "o"})[0]
    assert context_field(alpaca) == "input"
    chat = row_to_messages({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]})[0]
    assert context_field(chat) is None
