"""Tokenize texts once and pad them into batches by the configured strategy.

Padding strategies:
- `longest`: pad each batch to its longest sequence (least wasted compute);
- `max_length`: pad every batch to `max_length` (the anchors' "pad to the model context");
- `none`: batches of one sequence, no padding at all (the loop accumulates gradients to keep the
  effective batch size).
Batches are dicts of tensors: input_ids and attention_mask (B, T), labels (B,).

Packing (`PackingCollator`, data.packing): no padding either, but without giving up the batch: the
micro-batch's examples are laid end to end in one row, input_ids, position_ids and segment_ids
(1, total tokens), labels (B,). Positions restart at 0 for every example and segment_ids number
the examples 1..B, so the model can pool each example and keep attention inside it
(`tunelab.classify.packing` says how for each backbone family); logits and loss equal the padded
batch's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.train.batch import bucket, pad


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


class PackingCollator:
    """Turns a list of (ids, label) into one padding-free packed row; callable by a DataLoader.

    `multiple_of` (optional) pads the row's end to a multiple of that many tokens, for kernels or
    compilers that like fixed shapes: the tail is its own segment 0 (positions from 0 again), which
    no example attends to and pooling skips. `fixed_shapes` (for CUDA graphs,
    `tunelab.train.cuda_graphs`) instead rounds the row up onto a few lengths
    (`tunelab.train.batch.bucket`) with a tail of at least one token, gives `max_length` as the
    row's length (an upper bound is all the kernel needs) and `num_sequences`, so that neither
    attention nor pooling reads a size back from the GPU.

    >>> b = PackingCollator(pad_id=0)([([5, 6, 7], 1), ([8, 9], 0)])
    >>> b["input_ids"].tolist(), b["position_ids"].tolist(), b["segment_ids"].tolist(), b["labels"].tolist()
    ([[5, 6, 7, 8, 9]], [[0, 1, 2, 0, 1]], [[1, 1, 1, 2, 2]], [1, 0])
    >>> b["cu_seq_lens"].tolist(), b["max_length"]  # example boundaries, for varlen attention
    ([0, 3, 5], 3)
    """

    def __init__(self, pad_id: int = 0, multiple_of: int | None = None, fixed_shapes: bool = False):
        self.pad_id, self.multiple_of, self.fixed_shapes = pad_id, multiple_of, fixed_shapes

    def __call__(self, items: list[tuple[list[int], int]]) -> dict:
        lengths = torch.tensor([len(ids) for ids, _ in items], dtype=torch.long)  # (B,)
        if not len(items) or int(lengths.min()) == 0:
            raise ValueError("packing needs at least one example and no empty one")
        input_ids = torch.tensor([t for ids, _ in items for t in ids], dtype=torch.long)  # (T,)
        starts = torch.cumsum(lengths, 0) - lengths  # (B,) where each example begins
        position_ids = torch.arange(len(input_ids)) - torch.repeat_interleave(starts, lengths)  # (T,)
        segment_ids = torch.repeat_interleave(torch.arange(1, len(items) + 1), lengths)  # (T,)
        bounds, longest = [0, *torch.cumsum(lengths, 0).tolist()], int(lengths.max())
        if self.multiple_of or self.fixed_shapes:
            tail = bucket(len(input_ids) + 1) - len(input_ids) if self.fixed_shapes else -len(input_ids) % self.multiple_of
            input_ids = torch.cat([input_ids, torch.full((tail,), self.pad_id, dtype=torch.long)])
            # fixed shapes: positions 0 (a tail can be longer than an encoder's position table)
            position_ids = torch.cat([position_ids, torch.zeros(tail, dtype=torch.long) if self.fixed_shapes else torch.arange(tail)])
            segment_ids = torch.cat([segment_ids, torch.zeros(tail, dtype=torch.long)])
            if tail:
                bounds.append(bounds[-1] + tail)  # the tail attends to itself only
                longest = max(longest, tail)
        batch = {"input_ids": input_ids[None], "position_ids": position_ids[None], "segment_ids": segment_ids[None],
                 "labels": torch.tensor([y for _, y in items], dtype=torch.long),
                 "cu_seq_lens": torch.tensor(bounds, dtype=torch.int32), "max_length": len(input_ids) if self.fixed_shapes else longest}
        if self.fixed_shapes:
            batch["num_sequences"] = len(items)
        return batch
