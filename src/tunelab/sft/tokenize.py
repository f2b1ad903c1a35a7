"""Messages -> (input_ids, labels): the second step of SFT data, and the prompt ids of inference.

    segments = template.render(messages, tokenizer)        # [(prompt text, response text), ...]
    ids, labels = encode_segments(segments, tokenizer)     # labels = -100 on prompt tokens

Each prompt and response text is tokenised on its own, so no token straddles the boundary and
the ids of the prompt part are exactly what `encode_prompt` gives at inference. The EOS id is
appended after every response of a text template and is a target (labels are never derived
from `ids == pad_id`, so EOS is learned even when pad == eos). Too-long rows lose earlier turns,
then the tail of their context field (docqa `context`, alpaca `input`, ...), never the answer.
"""

from __future__ import annotations

from tunelab.errors import TunelabError
from tunelab.sft.formats import context_field, with_text
from tunelab.sft.templates import ChatTemplate, Segment, conversation

IGNORE = -100  # label of a position that is not trained (torch cross_entropy's ignore_index)


class TooLongError(TunelabError):
    """A row does not fit max_length even with its context cut to nothing (caller may skip it)."""


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of a text, without BOS/EOS; special-token strings in it map to their ids.

        encode(tok, "")  # []
    """
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def special_prefix(tokenizer) -> list[int]:
    """Ids the tokenizer puts before a text by itself (e.g. Llama/Gemma BOS), else [].

        special_prefix(llama_tokenizer)  # [1]: the BOS id; [] for GPT-2 style tokenizers
    """
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    return []


def mask_prompt(
    prompt_ids: list[int], response_ids: list[int], train_on_prompt: bool = False
) -> list[int]:
    """Labels of one turn: IGNORE on the prompt (unless trained), the ids on the response.

    >>> mask_prompt([5, 6], [7, 2])
    [-100, -100, 7, 2]
    >>> mask_prompt([5, 6], [7, 2], train_on_prompt=True)
    [5, 6, 7, 2]
    """
    return (list(prompt_ids) if train_on_prompt else [IGNORE] * len(prompt_ids)) + list(response_ids)


def encode_segments(
    segments: list[Segment], tokenizer, *, prefix: list[int] = (), train_on_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Concatenate per-segment token ids; a response gets EOS appended when its segment says so.

        encode_segments([Segment("Q: hi\\nA: ", "yo")], tok)
        # ([..prompt ids.., ..'yo' ids.., eos], [-100, ..., ..'yo' ids.., eos])
    """
    ids, labels = list(prefix), [IGNORE] * len(prefix)
    for seg in segments:
        p = encode(tokenizer, seg.prompt)
        r = [] if seg.response is None else encode(tokenizer, seg.response)
        if seg.response is not None and seg.add_eos:
            if tokenizer.eos_token_id is None:
                raise TunelabError("the tokenizer has no EOS token; SFT needs one to end answers")
            r = r + [tokenizer.eos_token_id]
        ids += p + r
        labels += mask_prompt(p, r, train_on_prompt)
    return ids, labels


def _prefix(template, tokenizer) -> list[int]:
    # A chat template writes its own BOS into the text (e.g. "{{ bos_token }}"); a text
    # template gets the BOS the tokenizer would add to any plain text.
    return [] if isinstance(template, ChatTemplate) else special_prefix(tokenizer)


def encode_prompt(messages: list[dict], template, tokenizer, where: str = "") -> list[int]:
    """Prompt ids for generation: messages ending with a user turn, rendered as in training.

    Equal to the first tokens of `tokenize_messages(messages + [answer])["input_ids"]`.
    """
    assert messages[-1]["role"] == "user", "a prompt ends with a user message"
    segments = template.render(messages, tokenizer, where=where)
    ids, _ = encode_segments(segments, tokenizer, prefix=_prefix(template, tokenizer))
    return ids


def _encode(messages, template, tokenizer, train_on_prompt, where):
    segments = template.render(messages, tokenizer, where=where)
    return encode_segments(segments, tokenizer, prefix=_prefix(template, tokenizer),
                           train_on_prompt=train_on_prompt)


def drop_early_turns(messages: list[dict], keep: int) -> list[dict]:
    """Keep the system message and the last `keep` (user, assistant) turns.

    >>> m = [{"role": r, "content": c} for r, c in [("system", "s"), ("user", "1"),
    ...      ("assistant", "a"), ("user", "2"), ("assistant", "b")]]
    >>> [x["content"] for x in drop_early_turns(m, 1)]
    ['s', '2', 'b']
    """
    system, pairs = conversation(messages)
    head = [] if system is None else [messages[0]]
    return head + [m for pair in pairs[len(pairs) - keep:] for m in pair if m is not None]


def cut_text(tokenizer, text: str, n_tokens: int) -> str:
    """The start of `text` covering its first n_tokens tokens, cut on a character boundary.

    Uses offsets rather than decoding ids, so a Korean syllable split over several byte-level
    tokens is never left half (no U+FFFD), and the kept text is exactly the original's start.

        cut_text(tok, "서울 부산", 2)  # '서울'
    """
    if n_tokens <= 0:
        return ""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if n_tokens >= len(offsets):
        return text
    return text[: offsets[n_tokens - 1][1]]


def tokenize_messages(
    messages: list[dict],
    template,
    tokenizer,
    *,
    max_length: int | None = None,
    train_on_prompt: bool = False,
    where: str = "",
) -> dict:
    """Training ids of one conversation: {"input_ids", "labels", "truncated"}.

    Over max_length: drop the earliest turns (the system message stays), then shorten the
    last user turn's context field by whole tokens (binary search on the rendered length).
    The final answer and its EOS are never cut; if even an empty context does not fit,
    TooLongError names the row.
    """
    assert messages[-1]["role"] == "assistant", "training messages end with the answer"
    ids, labels = _encode(messages, template, tokenizer, train_on_prompt, where)
    if max_length is None or len(ids) <= max_length:
        return {"input_ids": ids, "labels": labels, "truncated": False}

    def fits(msgs):
        enc = _encode(msgs, template, tokenizer, train_on_prompt, where)
        return enc if len(enc[0]) <= max_length else None

    _, pairs = conversation(messages)
    for keep in range(len(pairs) - 1, 0, -1):
        messages = drop_early_turns(messages, keep)
        if (enc := fits(messages)) is not None:
            return {"input_ids": enc[0], "labels": enc[1], "truncated": True}

    user = messages[-2]
    key = context_field(user)
    text = user["content"] if key is None else user["fields"][key]
    n_text = len(encode(tokenizer, text))

    def shortened(n):  # messages with the context cut to its first n tokens
        return messages[:-2] + [with_text(user, key, cut_text(tokenizer, text, n)), messages[-1]]

    best = _encode(shortened(0), template, tokenizer, train_on_prompt, where)
    if len(best[0]) > max_length:
        raise TooLongError(
            f"{where + ': ' if where else ''}needs {len(best[0])} tokens even with its "
            f"{key or 'prompt'} removed, over max_length={max_length}; raise max_length or "
            "shorten the answer"
        )
    lo, hi = 0, n_text  # invariant: lo tokens of context fit, hi tokens do not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (enc := fits(shortened(mid))) is not None:
            lo, best = mid, enc
        else:
            hi = mid
    return {"input_ids": best[0], "labels": best[1], "truncated": True}
