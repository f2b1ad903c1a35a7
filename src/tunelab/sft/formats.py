"""Instruction-data rows -> chat messages: the first step of SFT data (row -> messages -> ids).

Five row formats are understood, detected from the keys or named explicitly:

    alpaca             {"instruction": ..., "input": ... (optional), "output": ...}
    prompt_completion  {"prompt": ..., "completion": ...}
    messages           {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
    docqa              {"question": ..., "context": ..., "answer": ..., "lang": "ko"|"en" (optional)}
    sharegpt           {"conversations": [{"from": "human"|"gpt"|..., "value": ...}, ...],
                        "system": ... (optional)}; also `messages` holding from/value turns

ShareGPT roles map to chat roles: human/user -> user, gpt/assistant/bot -> assistant, system ->
system (case-insensitive); a top-level `system` string becomes the system message.

Every format becomes the same list of messages, `{"role", "content"}` dicts. A user message built
from a structured row also keeps the row's prompt-side fields under `"fields"` (the answer is never
there), so text templates can lay them out (`[질문]`, `[내용]`...) and truncation can shorten the
context field and rebuild `content`. Rows carry `"_line"`; errors name `file:line` and the field.
"""

from __future__ import annotations

import re

from tunelab.errors import TunelabError

FORMATS = ("alpaca", "prompt_completion", "messages", "docqa", "sharegpt")
ROLES = ("system", "user", "assistant")
# ShareGPT `from` values -> chat roles
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "bot": "assistant", "system": "system"}
_SHAREGPT_ACCEPTED = "human, user (user turns), gpt, assistant, bot (answers), system"

# The field that a too-long prompt shortens, the first present in this order (tokenize.py);
# the docqa question is never cut: without its context the row is dropped instead.
CONTEXT_FIELDS = ("context", "input", "instruction", "prompt")

_HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")


def where(row: dict, source: str) -> str:
    """`file:line` of a row, for error messages.

    >>> where({"_line": 7}, "train.jsonl")
    'train.jsonl:7'
    """
    return f"{source}:{row.get('_line', '?')}"


def detect_format(row: dict, source: str = "<data>") -> str:
    """Name the format of a row from its keys.

    >>> detect_format({"question": "q", "context": "c", "answer": "a"})
    'docqa'
    """
    keys = set(row)
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "sharegpt" if _from_value_turns(row["messages"]) else "messages"
    if {"question", "context"} <= keys:
        return "docqa"
    if "instruction" in keys:
        return "alpaca"
    if "prompt" in keys:
        return "prompt_completion"
    shown = sorted(k for k in keys if not k.startswith("_"))
    raise TunelabError(
        f"{where(row, source)}: cannot tell the row format from its keys {shown}; expected "
        "'instruction'/'output' (alpaca), 'prompt'/'completion', 'messages', "
        "'conversations' (sharegpt), or 'question'/'context'/'answer' (docqa)"
    )


def _from_value_turns(turns) -> bool:
    """True if a list of turns is ShareGPT-shaped (`from`/`value`, no `role`)."""
    first = next((t for t in turns if isinstance(t, dict)), None) if isinstance(turns, list) else None
    return first is not None and "from" in first and "role" not in first


def is_korean(text: str) -> bool:
    """True if the text holds Hangul.

    >>> is_korean("보험금 청구"), is_korean("claim")
    (True, False)
    """
    return bool(_HANGUL.search(text))


def user_content(fields: dict) -> str:
    """The plain user-turn text of a structured row (what a chat template shows the model).

    >>> user_content({"instruction": "Add.", "input": "2+2"})
    'Add.\\n\\n2+2'
    """
    if "question" in fields:
        return f"{fields['context']}\n\n{fields['question']}"
    if "instruction" in fields:
        extra = fields.get("input", "")
        return fields["instruction"] + (f"\n\n{extra}" if extra else "")
    return fields["prompt"]


def user_message(fields: dict) -> dict:
    """A user message from prompt-side fields; `content` is derived, never stored separately.

    >>> user_message({"prompt": "Hi"})
    {'role': 'user', 'content': 'Hi', 'fields': {'prompt': 'Hi'}}
    """
    return {"role": "user", "content": user_content(fields), "fields": dict(fields)}


def _text(row: dict, key: str, source: str, *, required: bool = True, answer: bool = False) -> str:
    """A string field of a row; missing, non-string or (for answers) empty values raise."""
    if key not in row or row[key] is None:
        if not required:
            return ""
        raise TunelabError(f"{where(row, source)}: missing field '{key}'")
    value = row[key]
    if not isinstance(value, str):
        raise TunelabError(
            f"{where(row, source)}: field '{key}' must be a string, got {type(value).__name__}"
        )
    if required and not value.strip():
        what = "the answer must not be empty" if answer else "it must not be empty"
        raise TunelabError(f"{where(row, source)}: field '{key}' is empty ({what})")
    return value


def _chat(row: dict, source: str, require_answer: bool) -> list[dict]:
    """Validate a `messages` row: system first (optional), then user/assistant alternating."""
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise TunelabError(f"{where(row, source)}: field 'messages' must be a non-empty list")
    turns = []
    for i, m in enumerate(msgs):
        at = f"{where(row, source)}: messages[{i}]"
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise TunelabError(f"{at} must be an object with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise TunelabError(f"{at}: role '{role}' is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise TunelabError(f"{at}: 'content' must be a string")
        turns.append((at, role, role, content))
    return _ordered(turns, row, source, "messages", "content", require_answer)


def _sharegpt(row: dict, source: str, require_answer: bool) -> list[dict]:
    """Validate a ShareGPT row (`conversations`, or `messages` with from/value) into chat messages."""
    key = "conversations" if "conversations" in row or "messages" not in row else "messages"
    convo = row.get(key)
    if not isinstance(convo, list) or not convo:
        raise TunelabError(
            f"{where(row, source)}: field '{key}' must be a non-empty list of "
            "{'from': ..., 'value': ...} turns (the conversation is empty)"
        )
    turns = []
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise TunelabError(f"{where(row, source)}: field 'system' must be a string, got {type(system).__name__}")
    if system and system.strip():
        turns.append((f"{where(row, source)}: system", "system", "system", system))
    for i, t in enumerate(convo):
        at = f"{where(row, source)}: {key}[{i}]"
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise TunelabError(f"{at} must be an object with 'from' and 'value'")
        name, value = t["from"], t["value"]
        role = SHAREGPT_ROLES.get(name.strip().lower()) if isinstance(name, str) else None
        if role is None:
            raise TunelabError(f"{at}: role {name!r} ('from') is not one of {_SHAREGPT_ACCEPTED}")
        if not isinstance(value, str):
            raise TunelabError(f"{at}: 'value' must be a string, got {type(value).__name__}")
        if role == "system" and turns and turns[0][1] == "system" and i == 0:
            raise TunelabError(f"{at}: a system turn and a top-level 'system' field; keep one")
        turns.append((at, role, name, value))
    return _ordered(turns, row, source, key, "value", require_answer)


def _ordered(turns: list[tuple], row: dict, source: str, key: str, text_key: str, require_answer: bool) -> list[dict]:
    """Check (where, role, name as written, text) turns: system first (optional), then user and
    assistant alternating, answers not empty, an answer last when required."""
    out = []
    for i, (at, role, name, content) in enumerate(turns):
        if role == "system" and i != 0:
            raise TunelabError(f"{at}: a system message may only come first")
        expected = "user" if (len(out) == 0 or out[-1]["role"] != "user") else "assistant"
        if role != "system" and role != expected:
            shown = f"'{name}'" if name == role else f"'{name}' (= {role})"
            raise TunelabError(f"{at}: expected role '{expected}', got {shown}")
        if role == "assistant" and not content.strip():
            raise TunelabError(f"{at}: assistant '{text_key}' is empty (the answer must not be empty)")
        out.append({"role": role, "content": content})
    if require_answer and out[-1]["role"] != "assistant":
        answer = "an assistant message" if key == "messages" and text_key == "content" else "an assistant answer (from gpt/assistant)"
        raise TunelabError(f"{where(row, source)}: '{key}' must end with {answer}")
    if not any(m["role"] == "user" for m in out):
        raise TunelabError(f"{where(row, source)}: '{key}' has no user message")
    return out


def row_to_messages(
    row: dict, fmt: str = "auto", source: str = "<data>", require_answer: bool = True
) -> list[dict]:
    """Turn one data row into chat messages (the answer last, as an assistant message).

    With `require_answer=False` (inference) the answer field may be absent, and any answer
    present is left out, so the messages end with the user turn.

    >>> user, answer = row_to_messages({"prompt": "2+2=", "completion": "4", "_line": 3})
    >>> user, answer
    ({'role': 'user', 'content': '2+2=', 'fields': {'prompt': '2+2='}}, {'role': 'assistant', 'content': '4'})
    """
    if fmt == "auto":
        fmt = detect_format(row, source)
    if fmt not in FORMATS:
        raise TunelabError(f"unknown data format '{fmt}'; expected auto or one of {', '.join(FORMATS)}")
    if fmt in ("messages", "sharegpt"):
        msgs = (_chat if fmt == "messages" else _sharegpt)(row, source, require_answer)
        if not require_answer and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        return msgs
    if fmt == "alpaca":
        fields = {"instruction": _text(row, "instruction", source),
                  "input": _text(row, "input", source, required=False)}
        answer_key = "output"
    elif fmt == "prompt_completion":
        fields = {"prompt": _text(row, "prompt", source)}
        answer_key = "completion"
    else:  # docqa
        fields = {"question": _text(row, "question", source),
                  "context": _text(row, "context", source)}
        lang = row.get("lang") or ("ko" if is_korean(fields["question"]) else "en")
        fields["lang"] = str(lang)
        answer_key = "answer"
    msgs = [user_message(fields)]
    if require_answer:
        answer = _text(row, answer_key, source, answer=True)
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def split_prompt(messages: list[dict]) -> tuple[list[dict], str]:
    """Split training messages into (prompt messages, reference answer) for evaluation.

    >>> split_prompt([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    ([{'role': 'user', 'content': 'q'}], 'a')
    """
    assert messages and messages[-1]["role"] == "assistant", "messages must end with the answer"
    return messages[:-1], messages[-1]["content"]


def context_field(message: dict) -> str | None:
    """The field of a user message that truncation shortens; None means `content` itself.

    >>> context_field(user_message({"question": "q", "context": "long text", "lang": "en"}))
    'context'
    """
    fields = message.get("fields") or {}
    for key in CONTEXT_FIELDS:
        if fields.get(key):
            return key
    return None


def with_text(message: dict, key: str | None, text: str) -> dict:
    """A copy of a user message with one field (or `content` when key is None) replaced.

    >>> with_text(user_message({"prompt": "a long prompt"}), "prompt", "a")["content"]
    'a'
    """
    if key is None:
        return {**message, "content": text}
    fields = {**message["fields"], key: text}
    return {**message, "content": user_content(fields), "fields": fields}
