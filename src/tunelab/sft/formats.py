"""Instruction-data rows -> chat messages: the first step of SFT data (row -> messages -> ids).

Four row formats are understood, detected from the keys or named explicitly:

    alpaca             {"instruction": ..., "input": ... (optional), "output": ...}
    prompt_completion  {"prompt": ..., "completion": ...}
    messages           {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
    docqa              {"question": ..., "context": ..., "answer": ..., "lang": "ko"|"en" (optional)}

Every format becomes the same list of messages, `{"role", "content"}` dicts. A user message built
from a structured row also keeps the row's prompt-side fields under `"fields"` (the answer is never
there), so text templates can lay them out (`[질문]`, `[내용]`...) and truncation can shorten the
context field and rebuild `content`. Rows carry `"_line"`; errors name `file:line` and the field.
"""

from __future__ import annotations

import re

from tunelab.errors import TunelabError

FORMATS = ("alpaca", "prompt_completion", "messages", "docqa")
ROLES = ("system", "user", "assistant")

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
    if "messages" in keys:
        return "messages"
    if {"question", "context"} <= keys:
        return "docqa"
    if "instruction" in keys:
        return "alpaca"
    if "prompt" in keys:
        return "prompt_completion"
    shown = sorted(k for k in keys if not k.startswith("_"))
    raise TunelabError(
        f"{where(row, source)}: cannot tell the row format from its keys {shown}; expected "
        "'instruction'/'output' (alpaca), 'prompt'/'completion', 'messages', or "
        "'question'/'context'/'answer' (docqa)"
    )


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
    out = []
    for i, m in enumerate(msgs):
        at = f"{where(row, source)}: messages[{i}]"
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise TunelabError(f"{at} must be an object with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise TunelabError(f"{at}: role '{role}' is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise TunelabError(f"{at}: 'content' must be a string")
        if role == "system" and i != 0:
            raise TunelabError(f"{at}: a system message may only come first")
        expected = "user" if (len(out) == 0 or out[-1]["role"] != "user") else "assistant"
        if role != "system" and role != expected:
            raise TunelabError(f"{at}: expected role '{expected}', got '{role}'")
        if role == "assistant" and not content.strip():
            raise TunelabError(f"{at}: assistant 'content' is empty (the answer must not be empty)")
        out.append({"role": role, "content": content})
    if require_answer and out[-1]["role"] != "assistant":
        raise TunelabError(f"{where(row, source)}: 'messages' must end with an assistant message")
    if not any(m["role"] == "user" for m in out):
        raise TunelabError(f"{where(row, source)}: 'messages' has no user message")
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
    if fmt == "messages":
        msgs = _chat(row, source, require_answer)
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
