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

from tunelab.train.batch import pad


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


class ClassificationCollator:
    """Turns a list of (ids, label) into a padded batch; callable by a torch DataLoader."""

    def __init__(self, pad_id: int, padding: str = "longest", max_length: int = 256):
        self.pad_id, self.padding, self.max_length = pad_id, padding, max_length

    def __call__(self, items: list[tuple[list[int], int]]) -> dict:
        seqs = [ids for ids, _ in items]
        length = self.max_length if self.padding == "max_length" else None
        input_ids, attention_mask = pad(seqs, self.pad_id, length)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": torch.tensor([y for _, y in items], dtype=torch.long)}
