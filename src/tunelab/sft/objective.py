"""The SFT objective: summed token cross-entropy over the answer tokens of a causal LM.

    loss_sum, n_targets = sft_loss(model, batch)
    # the loop: total = sum of n_targets over the accumulation group's micro-batches;
    # (loss_sum / total).backward() for each, so every target token weighs the same.

Averaging per micro-batch and then over micro-batches (the well-known gradient-accumulation
bug) overweights tokens of short batches; returning sums lets the loop normalise once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunelab.sft.tokenize import IGNORE


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


class SftObjective:
    """Token cross-entropy on the answer tokens of a causal LM (`sft_loss`);
    `count` is the batch's target tokens, so an accumulated step is the mean over all of them."""

    def count(self, batch: dict) -> float:
        return float(batch["num_target_tokens"])

    def __call__(self, model, batch: dict) -> torch.Tensor:
        loss_sum, _ = sft_loss(model, batch)
        return loss_sum
