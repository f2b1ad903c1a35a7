"""Tokenize texts once and pad them into batches by the configured strategy.

Padding strategies:
- `longest`: pad each batch to its longest sequence (least wasted compute);
- `max_length`: pad every batch to `max_length` (the anchors' "pad to the model context");
- `none`: batches of one sequence, no padding at all (the loop accumulates gradients to keep the
  effective batch size).
Batches are dicts of tensors: input_ids and attention_mask (B, T), labels (B,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Encoded:
    ids: list[list[int]]
    labels: list[int]
    truncated: int  # how many texts were cut to max_length


def encode_texts(tokenizer, texts: list[str], labels: list[int], max_length: int) -> Encoded:
    """Token ids without padding, truncated to max_length (and counted).

    A text that is too long is truncated by the tokenizer itself, which shortens the text and
    keeps the special tokens an encoder expects at both ends ([CLS] ... [SEP], <s> ... </s>),
    exactly as `tokenizer(text, truncation=True, max_length=...)` does for a transformers user.
    Cutting the full ids instead would drop the closing [SEP] of every long text.
    """
    if not texts:
        return Encoded([], [], 0)
    # verbose=False: the over-long texts are expected here (they are counted), not a warning.
    ids = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    long = [i for i, x in enumerate(ids) if len(x) > max_length]
    if long:
        cut = tokenizer([texts[i] for i in long], add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
        for i, x in zip(long, cut):
            ids[i] = x
    return Encoded(ids, list(labels), len(long))


def pad_batch(seqs: list[list[int]], pad_id: int, length: int | None = None, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists to one length; returns (input_ids, attention_mask), both (B, T).

    >>> pad_batch([[5, 6, 7], [8]], pad_id=0)[0].tolist()
    [[5, 6, 7], [8, 0, 0]]
    >>> pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")[1].tolist()
    [[1, 1, 1], [0, 0, 1]]
    """
    T = length or max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[:T]
        if side == "right":
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        else:
            ids[i, T - len(s) :] = torch.tensor(s)
            mask[i, T - len(s) :] = 1
    return ids, mask


class ClassificationCollator:
    """Turns a list of (ids, label) into a padded batch; callable by a torch DataLoader."""

    def __init__(self, pad_id: int, padding: str = "longest", max_length: int = 256):
        self.pad_id, self.padding, self.max_length = pad_id, padding, max_length

    def __call__(self, items: list[tuple[list[int], int]]) -> dict:
        seqs = [ids for ids, _ in items]
        length = self.max_length if self.padding == "max_length" else None
        input_ids, attention_mask = pad_batch(seqs, self.pad_id, length)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": torch.tensor([y for _, y in items], dtype=torch.long)}
