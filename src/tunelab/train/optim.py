"""AdamW with weight decay only where it belongs, and the learning-rate schedule.

Weight decay pulls weights towards zero; on norm gains and biases that only hurts, so parameters
with fewer than 2 dimensions (norms, biases) get none, as in GPT-2/nanoGPT/LLaMA recipes.
"""

from __future__ import annotations

import math

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups of the trainable parameters: matrices with decay, the rest without."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over `param_groups`; the fused CUDA kernel (one launch for all parameters instead of
    several per tensor) when every trainable parameter is a floating-point CUDA tensor, the default
    implementation otherwise (CPU runs stay as they were)."""
    groups = param_groups(model, weight_decay)
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)


def warmup_steps(warmup: float, total_steps: int) -> int:
    """`warmup` < 1 is a fraction of all steps, otherwise a step count.

    >>> warmup_steps(0.1, 200), warmup_steps(30, 200)
    (20, 30)
    """
    return int(round(warmup * total_steps)) if warmup < 1 else int(warmup)


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at `step` (0-based): linear warmup, then decay to 0.

    >>> [round(lr_factor(s, 10, 2, "linear"), 2) for s in (0, 1, 2, 6, 9)]
    [0.5, 1.0, 1.0, 0.5, 0.12]
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer, total_steps: int, warmup: int, schedule: str):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup, schedule))
