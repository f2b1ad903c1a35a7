"""The classification objective: summed (optionally class-weighted) cross-entropy per sequence.

The loop divides the summed loss of each micro-batch by the targets of the whole optimizer step,
so objectives return sums, never means; `count` says how many targets (or how much weight) a
batch holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ClassificationObjective:
    """Cross-entropy over sequences, optionally weighted per class.

    With class weights the step's loss is sum(w[y] * ce) / sum(w[y]), the same weighted mean as
    `F.cross_entropy(weight=w)`, so `count` returns the total weight of the batch's labels.
    """

    def __init__(self, class_weights: torch.Tensor | None = None):
        self.class_weights = class_weights
        self._on_device: dict[torch.device, torch.Tensor] = {}  # one copy per device, made once (no copy per batch)

    def _weights(self, labels: torch.Tensor) -> torch.Tensor:
        if self.class_weights is None:
            return torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
        if labels.device not in self._on_device:
            self._on_device[labels.device] = self.class_weights.to(labels.device)
        return self._on_device[labels.device][labels]

    def count(self, batch: dict) -> float:
        return float(self._weights(batch["labels"]).sum())

    def __call__(self, model, batch: dict) -> torch.Tensor:
        # Padded batches carry attention_mask; packed ones (PackingCollator) segment and position ids.
        logits = model(batch["input_ids"], batch.get("attention_mask"), segment_ids=batch.get("segment_ids"), position_ids=batch.get("position_ids"),
                       cu_seq_lens=batch.get("cu_seq_lens"), max_length=batch.get("max_length"), frozen_states=batch.get("frozen_states"),
                       num_sequences=batch.get("num_sequences"))  # (B, C)
        ce = F.cross_entropy(logits.float(), batch["labels"], reduction="none")  # (B,)
        return (ce * self._weights(batch["labels"])).sum()


def balanced_class_weights(label_ids: list[int], num_labels: int) -> torch.Tensor:
    """n / (C * count_c), as scikit-learn's 'balanced': rare classes weigh more.

    >>> balanced_class_weights([0, 0, 0, 1], 2).tolist()
    [0.6666666865348816, 2.0]
    """
    counts = torch.bincount(torch.tensor(label_ids), minlength=num_labels).float()
    return len(label_ids) / (num_labels * counts.clamp(min=1))
