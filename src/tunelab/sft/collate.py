"""Batches of SFT examples: right-padded rows (`collate`) or one padding-free packed row (`pack`).

    batch = collate(examples, pad_id=tokenizer.pad_token_id)   # (B, T): right padding + attention mask
    batch = pack(examples)                                     # (1, N): the examples end to end

Padding is tracked by lengths and the attention mask, never by comparing ids with pad_id
(pad often equals EOS, and the EOS after an answer must stay a target).

Packing puts the examples of a micro-batch into one row with `position_ids` restarting at 0 for
each example and no attention mask. With `attention_mask=None`, transformers (masking_utils,
`find_packed_sequence_indices`) reads the example boundaries off the position restarts and builds
a block-causal mask, so no example attends to another one (sdpa/eager: a dense boolean mask;
flex_attention: a block mask that skips the blocks between examples). The label of each
example's first token is -100, so the causal shift never makes the last token of one example
predict the first token of the next: the trained targets are exactly those of the padded batch.

Both batches carry `num_target_tokens` (what the loop normalises by) and `target_index` (flat
positions b*T+t that predict a target at t+1), computed here on the CPU so that the loss needs no
device-to-host sync to find its targets.
"""

from __future__ import annotations

import itertools

import torch

from tunelab.sft.tokenize import IGNORE
from tunelab.train.batch import bucket, pad

# Fixed-shape rows round the target count more coarsely than the row length: a padded target costs
# one LM-head row (about a tenth of a token's whole cost for a Qwen2-0.5B shape), and every new
# (length, targets) pair is one more CUDA graph to capture.
TARGET_STEPS_PER_OCTAVE = 4


def count_targets(labels: torch.Tensor) -> torch.Tensor:
    """Number of trained tokens after the causal shift (position 0 is never predicted).

    >>> count_targets(torch.tensor([[-100, 5, 2, -100], [7, 8, -100, -100]]))
    tensor(3)
    """
    return (labels[:, 1:] != IGNORE).sum()


def target_index(labels: torch.Tensor) -> torch.Tensor:
    """Flat positions b*T + t of a (B, T) batch whose next label (t+1) is a target, in order.

    `hidden.reshape(B*T, H)[index]` are the hidden states that predict the targets
    `labels.reshape(-1)[index + 1]`.

    >>> target_index(torch.tensor([[-100, 5, 2, -100], [7, 8, -100, -100]])).tolist()
    [0, 1, 4]
    """
    T = labels.shape[1]
    rows, cols = (labels[:, 1:] != IGNORE).nonzero(as_tuple=True)
    return rows * T + cols


def collate(examples: list[dict], pad_id: int, multiple_of: int | None = None) -> dict:
    """Pad a list of {"input_ids", "labels"} to the longest; labels padded with -100.

    Returns input_ids, attention_mask, labels (each (B, T), long), num_target_tokens
    (a 0-d long tensor: the targets of this micro-batch, as `sft_loss` counts them) and
    target_index (see `target_index`).

    >>> b = collate([{"input_ids": [5, 6, 2], "labels": [-100, 6, 2]},
    ...              {"input_ids": [5, 2], "labels": [-100, 2]}], pad_id=2)
    >>> b["labels"].tolist(), b["attention_mask"].tolist(), int(b["num_target_tokens"])
    ([[-100, 6, 2], [-100, 2, -100]], [[1, 1, 1], [1, 1, 0]], 3)
    """
    ids = [list(e["input_ids"]) for e in examples]
    labels = [list(e["labels"]) for e in examples]
    assert all(len(i) == len(l) for i, l in zip(ids, labels)), "ids and labels differ in length"
    input_ids, mask = pad(ids, pad_id, multiple_of=multiple_of)  # (B, T) each
    label_ids, _ = pad(labels, IGNORE, width=input_ids.shape[1])  # (B, T)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": label_ids,
            "num_target_tokens": count_targets(label_ids), "target_index": target_index(label_ids)}


def pack(examples: list[dict], fixed_shapes: bool = False) -> dict:
    """Concatenate a list of {"input_ids", "labels"} into one (1, N) row, N = the total length.

    Returns input_ids, position_ids (0, 1, ... for each example), labels (the first label of each
    example set to -100), num_target_tokens, target_index, and the example boundaries as
    cu_seq_lens (int32, cumulative lengths) and max_length (the longest example) for varlen
    attention (`tunelab.model.varlen`); no attention_mask (transformers reads the example
    boundaries from position_ids only when the mask is None).

    >>> b = pack([{"input_ids": [5, 6, 2], "labels": [-100, 6, 2]},
    ...           {"input_ids": [7, 2], "labels": [7, 2]}])
    >>> b["input_ids"].tolist(), b["position_ids"].tolist(), b["labels"].tolist()
    ([[5, 6, 2, 7, 2]], [[0, 1, 2, 0, 1]], [[-100, 6, 2, -100, 2]])
    >>> int(b["num_target_tokens"]), b["target_index"].tolist(), b["cu_seq_lens"].tolist(), b["max_length"]
    (3, [0, 1, 3], [0, 3, 5], 3)

    `fixed_shapes` (for CUDA graphs, `tunelab.train.cuda_graphs`) rounds the varying sizes up onto
    a few (`tunelab.train.batch.bucket`): the row gets a tail of padding tokens that is its own
    example (positions 0, labels -100, attention inside the tail only), `target_index` is
    filled up with the tail's first position (whose next label is -100, so it adds no loss and no
    gradient), and `max_length` is the row's length (an upper bound is all the kernel needs).
    `num_target_tokens` stays the real count, so the loss and gradients are unchanged.
    """
    ids, labels, positions = [], [], []
    for e in examples:
        n = len(e["input_ids"])
        assert n == len(e["labels"]) and n > 0, "ids and labels differ in length, or an empty example"
        ids += e["input_ids"]
        labels += [IGNORE, *e["labels"][1:]]  # the first token is never a target (as in `collate`)
        positions += range(n)
    lengths = [len(e["input_ids"]) for e in examples]
    real = len(ids)
    if fixed_shapes:  # a tail of at least 2 tokens: its first position predicts an ignored label
        tail = bucket(real + 2) - real
        ids += [ids[-1]] * tail
        labels += [IGNORE] * tail
        positions += [0] * tail  # not 0..tail-1: a long tail would run past a model's position table
        lengths.append(tail)
    label_ids = torch.tensor([labels], dtype=torch.long)  # (1, N)
    index = target_index(label_ids)
    if fixed_shapes:
        index = torch.cat([index, torch.full((bucket(len(index), TARGET_STEPS_PER_OCTAVE) - len(index),), real, dtype=index.dtype)])
    cu_seq_lens = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    return {"input_ids": torch.tensor([ids], dtype=torch.long), "position_ids": torch.tensor([positions], dtype=torch.long),
            "labels": label_ids, "num_target_tokens": count_targets(label_ids), "target_index": index,
            "cu_seq_lens": cu_seq_lens, "max_length": len(ids) if fixed_shapes else max(lengths)}
