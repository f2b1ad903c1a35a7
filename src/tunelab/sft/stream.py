"""One request's answer, streamed as whole characters: SFT generation as `tunelab serve` uses it.

    gen = load_generator("runs/docqa-ko")
    prep = gen.prepare(gen.chat_messages(messages), max_tokens=64, temperature=0, top_p=None, seed=None, stop=[])
    done = gen.decode(prep, emit=print)      # emit gets text deltas; done.text is the answer

Built from the pieces of `tunelab.sft.generate` (the run's template via `encode_prompt`, its stop
tokens, its decoding settings, the cut at stop strings and the same final clean-up), so a greedy
answer is the one `tunelab generate` gives (tested). What is added: the request's own stop
strings, streaming, a stop when the request is cancelled, and requests decoded together
(`tunelab.sft.batch_decode`, which runs the decoding loop for one request or several).

Streamed deltas are always whole characters (`tunelab.sft.textstream`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.errors import TunelabError
from tunelab.sft.batch_decode import decode_batch
from tunelab.sft.formats import row_to_messages
from tunelab.sft.generate import decoding_settings
from tunelab.sft.textstream import Completion
from tunelab.sft.tokenize import encode, encode_prompt


@dataclass
class Prepared:
    prompt: list[int]  # prompt ids, rendered with the run's template
    settings: dict  # decoding_settings: max_new_tokens, do_sample, temperature, top_p, seed
    stops: list[str]  # text stop strings: the template's (those not a special token) and the request's


def chat_messages(messages: list[dict]) -> list[dict]:
    """A request's messages checked as a `messages` data row is (system first, then user and
    assistant alternating), ending with the user turn to answer."""
    if messages[-1]["role"] != "user":
        raise TunelabError(f"the last message must be the user's, to be answered (got '{messages[-1]['role']}')")
    try:
        return row_to_messages({"messages": messages}, "messages", source="request", require_answer=False)
    except TunelabError as err:
        raise TunelabError(str(err).removeprefix("request:?: ")) from None


def prompt_messages(prompt: str) -> list[dict]:
    """A /v1/completions prompt as `tunelab generate --prompt` takes it: the user turn of the
    run's template."""
    return row_to_messages({"prompt": prompt}, "prompt_completion", source="request", require_answer=False)


def text_stops(template, tokenizer) -> list[str]:
    """The template's stop strings that are text, not one special token (those stop by id)."""
    special = set(tokenizer.added_tokens_decoder)
    return [s for s in template.stop_strings(tokenizer) if not (len(enc := encode(tokenizer, s)) == 1 and enc[0] in special)]


def prepare(lm, messages: list[dict], *, max_tokens, temperature, top_p, seed, stop: list[str]) -> Prepared:
    """Encode the prompt and settle the decoding settings (None = the run's); temperature 0 is
    greedy, as in the OpenAI API. A prompt too long for the model is a TunelabError."""
    prompt = encode_prompt(messages, lm.template, lm.tokenizer)
    settings = decoding_settings(lm.meta.get("generation"), max_new_tokens=max_tokens, top_p=top_p, seed=seed,
                                 do_sample=None if temperature is None else temperature > 0, temperature=temperature or None)
    room = getattr(lm.model.config, "max_position_embeddings", None)
    if room is not None and len(prompt) + settings["max_new_tokens"] > room:
        raise TunelabError(f"the prompt has {len(prompt)} tokens; with max_tokens={settings['max_new_tokens']} that is more than "
                           f"the model's {room} positions: shorten the messages or lower max_tokens")
    return Prepared(prompt, settings, [*text_stops(lm.template, lm.tokenizer), *stop])


def decode(lm, prep: Prepared, emit=None, cancelled=None) -> Completion:
    """Generate one answer; `emit(delta)` streams it (a batch of one of `decode_batch`)."""
    return decode_batch(lm, [(prep, emit, cancelled)])[0]


class Generator:
    """An SFT run that answers requests (the server's `sft` backend), alone or several together."""

    def __init__(self, lm):
        self.lm, self.model, self.meta = lm, lm.model, lm.meta

    chat_messages = staticmethod(chat_messages)
    prompt_messages = staticmethod(prompt_messages)

    def prepare(self, messages: list[dict], **settings) -> Prepared:
        return prepare(self.lm, messages, **settings)

    def decode(self, prep: Prepared, emit=None, cancelled=None) -> Completion:
        return decode(self.lm, prep, emit, cancelled)

    def decode_many(self, requests: list[tuple], on_done=None) -> list[Completion]:
        """(prepared, emit, cancelled) tuples decoded in one batch (`decode_batch`)."""
        return decode_batch(self.lm, requests, on_done)


def load_generator(run, device: str | None = None) -> Generator:
    from tunelab.sft.export import load_sft

    return Generator(load_sft(run, device))
