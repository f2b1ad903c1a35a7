"""A step with a nan/inf loss is skipped without touching the weights; a run that keeps
producing them stops with a message that says what to change (not a silent 50 % model)."""

import math

import pytest
import torch

from tunelab.config import TrainConfig
from tunelab.errors import TunelabError
from tunelab.train.loop import MAX_NONFINITE_STEPS, fit
from tunelab.train.run import make_accelerator


class PoisonedObjective:
    """Mean squared error of a linear model, returning nan on the listed (0-based) calls."""

    def __init__(self, poison_calls):
        self.poison_calls, self.calls = set(poison_calls), 0

    def count(self, batch):
        return float(len(batch["x"]))

    def __call__(self, model, batch):
        loss = ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).sum()
        poisoned = self.calls in self.poison_calls
        self.calls += 1
        return loss * float("nan") if poisoned else loss


def run(tmp_path, poison_calls, steps=12):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    data = [(torch.randn(3), float(i % 2)) for i in range(16)]
    collate = lambda items: {"x": torch.stack([x for x, _ in items]), "y": torch.tensor([y for _, y in items])}
    cfg = TrainConfig(max_steps=steps, batch_size=4, lr=1e-2, warmup=0, device="cpu")
    accelerator, _ = make_accelerator(cfg)
    result = fit(model, data, collate, PoisonedObjective(poison_calls), None, cfg, "longest", tmp_path, accelerator, log=lambda *a: None)
    return model, result


def test_a_nonfinite_step_is_skipped_and_training_goes_on(tmp_path):
    model, result = run(tmp_path, poison_calls={3})
    assert result.steps == 12
    assert all(torch.isfinite(p).all() for p in model.parameters())
    logged = [m["train_loss"] for m in result.history if "train_loss" in m]
    assert math.isnan(logged[0]) and math.isfinite(logged[-1])  # the skipped step shows in the log


def test_a_diverged_run_stops_with_advice(tmp_path):
    with pytest.raises(TunelabError, match=r"diverged.*5 steps in a row.*Lower train.lr \(now 0.01\)"):
        run(tmp_path, poison_calls=set(range(2, 2 + MAX_NONFINITE_STEPS)))
