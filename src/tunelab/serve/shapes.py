"""Response bodies in the OpenAI shapes: chat.completion, text_completion, their stream chunks."""

from __future__ import annotations

import json
import time
import uuid


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def _choice(kind: str, text: str | None, finish: str | None, chunk: bool) -> dict:
    if kind == "chat":
        key = "delta" if chunk else "message"
        content = {} if text is None else {"content": text}
        return {"index": 0, key: content if chunk else {"role": "assistant", **content}, "logprobs": None, "finish_reason": finish}
    return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}


def body(kind: str, id_: str, model: str, done) -> dict:
    """The whole answer; `done` is a generation.Completion."""
    usage = {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
             "total_tokens": done.prompt_tokens + done.completion_tokens}
    return {"id": id_, "object": "chat.completion" if kind == "chat" else "text_completion", "created": int(time.time()),
            "model": model, "choices": [_choice(kind, done.text, done.finish_reason, False)], "usage": usage}


def chunk(kind: str, id_: str, model: str, text: str | None = None, finish: str | None = None, role: bool = False) -> dict:
    choice = _choice(kind, text, finish, True)
    if role:
        choice["delta"] = {"role": "assistant", "content": ""}
    return {"id": id_, "object": "chat.completion.chunk" if kind == "chat" else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice]}


def sse(data: dict | str) -> str:
    """One server-sent event. JSON keeps non-ASCII text as is (UTF-8 on the wire).

    >>> sse("[DONE]")
    'data: [DONE]\\n\\n'
    """
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"
