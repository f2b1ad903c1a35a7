"""Batched generation for SFT models, with prompts built exactly as in training.

    template = load_template(run_dir)               # the template saved with the model
    texts = generate(model, tokenizer, template, ["What is 2+2?"], max_new_tokens=64)

Prompts are encoded by `tokenize.encode_prompt` (the same per-segment ids as training), left
padded so every row's last prompt token sits at the end, and decoded by HF `model.generate`
with the KV cache. Generation stops at EOS, at the template's end-of-turn token and at its stop
strings; only the new text is returned. Sampling knobs are set explicitly, so defaults from a
model's generation_config.json (top_k, repetition_penalty, ...) never leak in unnoticed.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from tunelab.sft.formats import row_to_messages
from tunelab.sft.tokenize import encode, encode_prompt


def as_messages(item, fmt: str = "auto") -> list[dict]:
    """A prompt as messages: a plain string, a data row (answer left out) or messages.

    >>> as_messages("Hi")
    [{'role': 'user', 'content': 'Hi'}]
    """
    if isinstance(item, str):
        return [{"role": "user", "content": item}]
    if isinstance(item, dict):
        return row_to_messages(item, fmt, require_answer=False)
    return list(item)


def stop_token_ids(template, tokenizer) -> list[int]:
    """EOS plus any stop string of the template that is a single special token (<|im_end|>)."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    for s in template.stop_strings(tokenizer):
        enc = encode(tokenizer, s)
        if len(enc) == 1 and enc[0] in tokenizer.added_tokens_decoder and enc[0] not in ids:
            ids.append(enc[0])
    return ids


def trim_at_stop(text: str, stops: list[str]) -> str:
    """Cut a generated text at the first stop string.

    >>> trim_at_stop("4\\n\\n### Instruction:\\nmore", ["\\n\\n### Instruction:"])
    '4'
    """
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts for generation; returns (input_ids, attention_mask), each (B, T).

    >>> left_pad([[5, 6], [7]], 0)
    (tensor([[5, 6],
            [0, 7]]), tensor([[1, 1],
            [0, 1]]))
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


def generation_config(
    tokenizer, stop_ids: list[int], *, max_new_tokens: int, do_sample: bool,
    temperature: float, top_p: float, stop_strings: list[str] = (),
) -> GenerationConfig:
    """A GenerationConfig with every decoding knob set: greedy, or temperature/top-p sampling.

    Knobs left unset would be filled from the model's generation_config.json (e.g. top_k=20,
    repetition_penalty=1.05 in some instruct models); greedy decoding ignores the sampling ones.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    sampling = dict(temperature=temperature, top_p=top_p, top_k=0, min_p=0.0, typical_p=1.0,
                    epsilon_cutoff=0.0, eta_cutoff=0.0) if do_sample else {}
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=do_sample, num_beams=1, **sampling,
        repetition_penalty=1.0, no_repeat_ngram_size=0, min_length=0,
        eos_token_id=stop_ids, pad_token_id=pad, use_cache=True,
        stop_strings=list(stop_strings) or None,
    )


@torch.no_grad()
def generate(
    model,
    tokenizer,
    template,
    prompts: list,
    *,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int | None = None,
    fmt: str = "auto",
) -> list[str]:
    """Generate an answer for each prompt (str, data row or messages); returns only new text.

    Prompts are sorted by length so batches hold similar lengths; results come back in the
    input order, stripped of surrounding whitespace and of a character cut in half by
    max_new_tokens.
    """
    conversations = [as_messages(p, fmt) for p in prompts]
    encoded = [encode_prompt(m, template, tokenizer) for m in conversations]
    stop_ids = stop_token_ids(template, tokenizer)
    assert stop_ids, "the tokenizer needs an EOS token to stop generation"
    special = set(tokenizer.added_tokens_decoder)
    stop_strings = [s for s in template.stop_strings(tokenizer)
                    if not (len(enc := encode(tokenizer, s)) == 1 and enc[0] in special)]
    cfg = generation_config(tokenizer, stop_ids, max_new_tokens=max_new_tokens, do_sample=do_sample,
                            temperature=temperature, top_p=top_p, stop_strings=stop_strings)
    if do_sample and seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    out: list[str] = [""] * len(encoded)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids, mask = left_pad([encoded[i] for i in idx], cfg.pad_token_id)  # (B, T)
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 generation_config=cfg, tokenizer=tokenizer)  # (B, T + new)
            for row, i in enumerate(idx):
                new = gen[row, ids.shape[1]:].tolist()
                end = next((k for k, t in enumerate(new) if t in stop_ids), len(new))
                text = tokenizer.decode(new[:end], skip_special_tokens=True)
                # max_new_tokens can stop inside a multi-byte character (Korean in a byte-level
                # vocabulary): drop the incomplete tail rather than return U+FFFD
                out[i] = trim_at_stop(text, stop_strings).rstrip("\ufffd").strip()
    finally:
        model.train(was_training)
    return out


def decoding_settings(saved: dict | None, **given) -> dict:
    """The one source of decoding settings: the config's `sft.generation` defaults, a run's saved
    settings over them, and the values given here (None = not given) on top.

    >>> s = decoding_settings({"max_new_tokens": 32}, temperature=None, do_sample=True)
    >>> s["max_new_tokens"], s["do_sample"], s["temperature"], s["top_p"]
    (32, True, 1.0, 1.0)
    """
    from tunelab.config import GenerationSection

    settings = GenerationSection().model_dump()
    settings.update(saved or {})
    settings.update({k: v for k, v in given.items() if v is not None})
    return settings
