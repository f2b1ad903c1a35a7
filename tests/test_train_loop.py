"""The one training loop on a linear model: a nan/inf step is skipped without touching the weights
and a run that keeps producing them stops with advice (not a silent 50 % model); early stopping
stops at the patience and keeps the best step; each learning-rate schedule has its shape."""

import math

import pytest
import torch

from tunelab.config import TrainConfig
from tunelab.errors import TunelabError
from tunelab.train.loop import MAX_NONFINITE_STEPS, fit, plan_steps
from tunelab.train.optim import make_optimizer, make_scheduler
from tunelab.train.runtime import make_accelerator


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


def collate(items):
    return {"x": torch.stack([x for x, _ in items]), "y": torch.tensor([y for _, y in items])}


def run(tmp_path, poison_calls=(), steps=12, evaluate=None, **train):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    data = [(torch.randn(3), float(i % 2)) for i in range(16)]
    cfg = TrainConfig(**{"max_steps": steps, "batch_size": 4, "lr": 1e-2, "warmup": 0, "device": "cpu", **train})
    accelerator, _ = make_accelerator(cfg)
    result = fit(model, data, collate, PoisonedObjective(poison_calls), evaluate, cfg, plan_steps(len(data), cfg), tmp_path, accelerator, log=lambda *a: None)
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


def test_early_stopping_stops_at_the_patience_and_keeps_the_best_step(tmp_path):
    losses = iter([0.5, 0.4, 0.45, 0.41, 0.3, 0.2])  # best at the 2nd evaluation, then 2 worse ones

    def evaluate(model):
        return {"loss": next(losses)}

    _, result = run(tmp_path, steps=12, evaluate=evaluate, eval_every=1, early_stopping={"metric": "loss", "patience": 2})
    assert result.stopped_early and result.steps == 4
    assert result.best["step"] == 2 and result.best["loss"] == 0.4
    assert (tmp_path / "checkpoints" / "best").is_dir()


def test_without_patience_training_runs_to_the_end(tmp_path):
    losses = iter([0.5 + i for i in range(12)])  # only ever worse
    _, result = run(tmp_path, steps=12, evaluate=lambda m: {"loss": next(losses)}, eval_every=1)
    assert not result.stopped_early and result.steps == 12 and result.best["step"] == 1


@pytest.mark.parametrize("schedule, at_half, at_end", [("cosine", 0.5, 0.0), ("linear", 0.5, 0.0), ("constant", 1.0, 1.0)])
def test_each_schedule_warms_up_then_has_its_shape(schedule, at_half, at_end):
    """Warmup ramps linearly to the peak; then cosine and linear reach half the peak halfway
    through the decay and 0 at the end, constant stays at the peak."""
    model = torch.nn.Linear(3, 1)
    optimizer = make_optimizer(model, 1e-2, 0.0)
    scheduler = make_scheduler(optimizer, total_steps=12, warmup=2, schedule=schedule)
    used = []
    for _ in range(12):
        used.append(optimizer.param_groups[0]["lr"])  # the rate this step trains with
        optimizer.step()
        scheduler.step()
    assert used[0] == pytest.approx(0.5e-2) and used[1] == pytest.approx(1e-2)  # warmup: 1/2, 2/2
    assert used[2] == pytest.approx(1e-2)  # the first step after warmup is at the peak
    assert used[7] == pytest.approx(at_half * 1e-2)  # 5 of 10 decay steps done
    assert scheduler.get_last_lr()[0] == pytest.approx(at_end * 1e-2, abs=1e-12)


def test_the_loop_trains_with_the_configured_schedule(tmp_path):
    """The rate the loop logs at its last step is the schedule's: 0 after linear decay, the peak for constant."""
    for schedule, last in (("linear", 0.0), ("constant", 1e-2)):
        _, result = run(tmp_path / schedule, steps=10, schedule=schedule)
        assert [m["lr"] for m in result.history if "lr" in m][-1] == pytest.approx(last, abs=1e-12)
