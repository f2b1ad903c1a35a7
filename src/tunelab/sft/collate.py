"""Batches of SFT examples: right-padded ids, labels and the attention mask.

    batch = collate(examples, pad_id=tokenizer.pad_token_id)   # right padding

Padding is tracked by lengths and the attention mask, never by comparing ids with pad_id
(pad often equals EOS, and the EOS after an answer must stay a target).
"""

from __future__ import annotations

import torch

from tunelab.sft.tokenize import IGNORE
from tunelab.train.batch import pad


def count_targets(labels: torch.Tensor) -> torch.Tensor:
    """Number of trained tokens after the causal shift (position 0 is never predicted).

    >>> count_targets(torch.tensor([[-100, 5, 2, -100], [7, 8, -100, -100]]))
    tensor(3)
    """
    return (labels[:, 1:] != IGNORE).sum()


def collate(examples: list[dict], pad_id: int, multiple_of: int | None = None) -> dict:
    """Pad a list of {"input_ids", "labels"} to the longest; labels padded with -100.

    Returns input_ids, attention_mask, labels (each (B, T), long) and num_target_tokens
    (a 0-d long tensor: the targets of this micro-batch, as `sft_loss` counts them).

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
            "num_target_tokens": count_targets(label_ids)}
