"""What a streamed answer may show so far, as whole characters: the text pieces of SFT decoding.

Streamed deltas are always whole characters: the generated ids are decoded as a whole after each
token and only the part that cannot change any more is sent: a byte-level vocabulary can end on
half a Korean character (U+FFFD at the end, held back until the rest arrives), and a tail that
may be the start of a stop string is held back too. The deltas join to exactly the final text.
Used by `tunelab.sft.batch_decode` (the decoding loop) for `tunelab.sft.stream`'s requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers.generation.streamers import BaseStreamer

from tunelab.sft.generate import trim_at_stop


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (EOS, end of turn, a stop string) or "length" (max_tokens)
    prompt_tokens: int
    completion_tokens: int


def visible(text: str, stops: list[str], final: bool) -> str:
    """The part of a growing answer that can be sent: cut at a stop string, stripped as
    `generate` strips answers, without an incomplete last character and, until the end, without
    a tail that may be the start of a stop string.

    >>> visible("3년 이\\ufffd", [], final=False)
    '3년 이'
    >>> visible("Paris\\n[Ques", ["\\n[Question]"], final=False), visible("Paris\\n[Ques", ["\\n[Question]"], final=True)
    ('Paris', 'Paris\\n[Ques')
    """
    text = trim_at_stop(text, stops)
    if not final:
        hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        text = text[: len(text) - hold]
    return text.rstrip("\ufffd").strip()


class TextStream(BaseStreamer):
    """A `model.generate` streamer that hands whole-character text deltas to `emit`."""

    def __init__(self, tokenizer, stop_ids: list[int], stops: list[str], emit):
        self.tokenizer, self.stop_ids, self.stops, self.emit = tokenizer, set(stop_ids), stops, emit
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_seen = False

    def text(self) -> str:
        end = next((k for k, t in enumerate(self.ids) if t in self.stop_ids), len(self.ids))
        return self.tokenizer.decode(self.ids[:end], skip_special_tokens=True)

    def send(self, text: str) -> None:
        # a decode that rewrote what was sent (rare clean-up of spaces) waits for the final text
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.emit(text[len(self.sent):])
            self.sent = text

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt
            self.prompt_seen = True
            return
        self.ids.extend(value.flatten().tolist())
        if self.emit is not None:
            self.send(visible(self.text(), self.stops, final=False))

    def end(self) -> None:
        pass
