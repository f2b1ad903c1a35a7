"""Batches of SFT examples, and the SFT objective (summed token cross-entropy over targets).

    batch = collate(examples, pad_id=tokenizer.pad_token_id)   # right padding
    loss_sum, n_targets = sft_loss(model, batch)
    # the loop: total = sum of n_targets over the accumulation group's micro-batches;
    # (loss_sum / total).backward() for each, so every target token weighs the same.

Averaging per micro-batch and then over micro-batches (the well-known gradient-accumulation
bug) overweights tokens of short batches; returning sums lets the loop normalise once.
Padding is tracked by lengths and the attention mask, never by comparing ids with pad_id
(pad often equals EOS, and the EOS after an answer must stay a target).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunelab.sft.tokenize import IGNORE


def pad_right(seqs: list[list[int]], value: int, multiple_of: int | None = None) -> torch.Tensor:
    """Right-pad lists of ids to the longest (optionally rounded up to a multiple).

    >>> pad_right([[1, 2, 3], [4]], 0)
    tensor([[1, 2, 3],
            [4, 0, 0]])
    """
    width = max(len(s) for s in seqs)
    if multiple_of:
        width = -(-width // multiple_of) * multiple_of
    out = torch.full((len(seqs), width), value, dtype=torch.long)  # (B, T)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def attention_mask(lengths: list[int], width: int, left: bool = False) -> torch.Tensor:
    """1 on real tokens, 0 on padding, from the lengths alone.

    >>> attention_mask([3, 1], 3)
    tensor([[1, 1, 1],
            [1, 0, 0]])
    >>> attention_mask([3, 1], 3, left=True)
    tensor([[1, 1, 1],
            [0, 0, 1]])
    """
    pos = torch.arange(width).unsqueeze(0)  # (1, T)
    n = torch.tensor(lengths).unsqueeze(1)  # (B, 1)
    mask = pos >= width - n if left else pos < n  # (B, T)
    return mask.long()


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
    input_ids = pad_right(ids, pad_id, multiple_of)  # (B, T)
    label_ids = pad_right(labels, IGNORE, multiple_of)  # (B, T)
    mask = attention_mask([len(i) for i in ids], input_ids.shape[1])  # (B, T)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": label_ids,
            "num_target_tokens": count_targets(label_ids)}


def _takes_logits_to_keep(model) -> bool:
    """Whether the causal LM under any wrappers (DDP, PEFT) accepts `logits_to_keep`."""
    import inspect

    inner = getattr(model, "module", model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def sft_loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of the target tokens, and how many there are.

    Logits at position t are scored against the label at t+1 (the standard causal shift);
    labels of -100 (prompt, padding) are skipped. Returns (loss_sum, n_targets) as tensors;
    loss_sum is 0 (not NaN) when a batch has no targets. Only positions that predict a target
    in some row of the batch go through the LM head (`logits_to_keep`): with a 150k-260k
    vocabulary (Qwen, Gemma) the head over every prompt position costs more than the blocks.
    """
    targets = batch["labels"][:, 1:]  # (B, T-1)
    kwargs = {}
    if _takes_logits_to_keep(model):
        keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(1)  # (K,) positions t < T-1
        kwargs["logits_to_keep"] = keep.to(batch["input_ids"].device)
        targets = targets[:, keep]  # (B, K)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, **kwargs)
    logits = out.logits if kwargs else out.logits[:, :-1, :]  # (B, K or T-1, V): predicts t+1
    targets = targets.to(logits.device)
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),  # (B*K, V), fp32 for a stable softmax
        targets.reshape(-1),  # (B*K,)
        ignore_index=IGNORE,
        reduction="sum",
    )
    return loss_sum, (targets != IGNORE).sum()
