"""Requests that arrive together, answered in one decoding loop (`tunelab serve`'s batched decoding).

    completions = decode_batch(lm, [(prep, emit, cancelled), ...])   # one Completion per request

Why not `model.generate`: it takes one GenerationConfig per batch, while requests that arrive
together each have their own max_tokens, temperature, top_p, seed and stop strings, and each must
stream and stop on its own. The loop is plain: the prompts left-padded into one batch, one forward
pass over all of them (prefill), then one token per row per step through the KV cache, with
positions counted from each row's first real token as `generate` counts them. A row that has
finished rides along (its tokens are ignored) until every row is done, but its answer is handed
back at once (`on_done`); rows do not join a batch in flight (static batching: a request waits for
the batch before it to end).

Per row: greedy, or sampling as `generation_config` sets it (temperature, then the smallest set of
tokens whose probability reaches top_p), with a generator of its own when the request gives a seed
(so its sampled answer does not depend on its batch mates); the run's stop tokens, its text stop
strings and the request's; cancellation (timeout, client gone). Streaming and the final text go
through `textstream.TextStream` and `textstream.visible`, as for one request, so every delta is whole
characters and the deltas join to the final text. A batch of one runs the forward passes
`model.generate` would (tested: the same greedy tokens as `tunelab generate`); in a padded batch
the float sums may differ in their last bits, as they do in `tunelab generate`'s own batches.
"""

from __future__ import annotations

import torch

from tunelab.sft.generate import left_pad, stop_token_ids, trim_at_stop
from tunelab.sft.textstream import Completion, TextStream, visible


class Row:
    """One request's state in the batch: how it picks tokens, what it has streamed, whether it is done."""

    def __init__(self, prep, stream, cancelled, stop_ids: set[int], device: torch.device):
        s = prep.settings
        self.prep, self.stream, self.cancelled, self.stop_ids = prep, stream, cancelled, stop_ids
        self.sample, self.max_new = bool(s["do_sample"]), int(s["max_new_tokens"])
        self.temperature, self.top_p = float(s.get("temperature") or 1.0), float(s.get("top_p") or 1.0)
        seed = s.get("seed")
        self.generator = torch.Generator(device).manual_seed(int(seed)) if self.sample and seed is not None else None
        self.done = self.max_new <= 0

    def pick(self, logits: torch.Tensor, greedy: int) -> int:
        """The next token from this row's last logits (V,); `greedy` is their argmax."""
        if not self.sample:
            return greedy
        probs = sampling_probs(logits, self.temperature, self.top_p)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def take(self, token: int) -> None:
        """Append a token, stream what became visible, and decide whether the row is done."""
        self.stream.put(torch.tensor([token]))
        if token in self.stop_ids or len(self.stream.ids) >= self.max_new or (self.cancelled is not None and self.cancelled.is_set()):
            self.done = True
        elif self.prep.stops and trim_at_stop(self.stream.text(), self.prep.stops) != self.stream.text():
            self.done = True


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Probabilities after temperature, kept to the smallest top set whose mass reaches top_p
    (at least one token), renormalised.

    >>> sampling_probs(torch.tensor([2.0, 1.0, 0.0]), 1.0, 0.5).tolist()
    [1.0, 0.0, 0.0]
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = (sorted_p.cumsum(-1) - sorted_p) < top_p  # the mass before a token is still short of top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return probs / probs.sum()


@torch.no_grad()
def decode_batch(lm, requests: list[tuple], on_done=None) -> list:
    """Answer (prepared request, emit or None, cancelled event or None) tuples together; returns
    one `textstream.Completion` per request, in order. `on_done(i, completion)` is called as soon
    as request i is done, while its batch mates may still decode (a server answers it then)."""
    tokenizer, model = lm.tokenizer, lm.model
    stop_ids = stop_token_ids(lm.template, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    device = next(model.parameters()).device
    rows = []
    for prep, emit, cancelled in requests:
        stream = TextStream(tokenizer, stop_ids, prep.stops, emit)
        stream.prompt_seen = True  # tokens are put one by one, without the prompt first
        rows.append(Row(prep, stream, cancelled, set(stop_ids), device))
    results: list = [None] * len(rows)

    def settle() -> None:
        for i, row in enumerate(rows):
            if row.done and results[i] is None:
                results[i] = finish(row, stop_ids)
                if on_done is not None:
                    on_done(i, results[i])

    settle()
    ids, mask = left_pad([p.prompt for p, _, _ in requests], pad)  # (B, T)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its first real token
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    last = positions[:, -1:]
    while not all(row.done for row in rows):
        logits = out.logits[:, -1]  # (B, V)
        greedy = logits.argmax(-1).tolist()  # one read-back per step for the whole batch
        tokens = [pad if row.done else row.pick(logits[i], greedy[i]) for i, row in enumerate(rows)]
        for row, token in zip(rows, tokens):
            if not row.done:
                row.take(token)
        settle()
        if all(row.done for row in rows):
            break
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        last = last + 1
        out = model(input_ids=torch.tensor(tokens, device=device)[:, None], attention_mask=mask, position_ids=last,
                    past_key_values=out.past_key_values, use_cache=True)
    return results


def finish(row: Row, stop_ids: list[int]):
    """The row's Completion: the final visible text (its last delta streamed), why it stopped."""
    stream, prep = row.stream, row.prep
    raw = stream.text()
    text = visible(raw, prep.stops, final=True)
    if stream.emit is not None:
        stream.send(text)
    stopped = any(t in stop_ids for t in stream.ids) or trim_at_stop(raw, prep.stops) != raw
    reason = "length" if len(stream.ids) >= row.max_new and not stopped else "stop"
    return Completion(text, reason, len(prep.prompt), len(stream.ids))
