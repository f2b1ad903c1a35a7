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


# --- micro-batches cut by a token budget, no read-backs per micro-batch -------------------------


def test_micro_batches_by_count_or_by_token_budget():
    from tunelab.train.loop import micro_batches

    by_count = plan_steps(6, TrainConfig(batch_size=6), micro_batch=2)
    assert micro_batches([5, 1, 2, 0, 4, 3], by_count) == [[5, 1], [2, 0], [4, 3]]
    lengths = [3, 9, 4, 20, 5, 2]
    plan = plan_steps(6, TrainConfig(batch_size=6, max_tokens_per_micro_batch=10), lengths=lengths)
    assert plan.max_tokens == 10 and plan.step_size == 6
    cut = micro_batches([0, 1, 2, 3, 4, 5], plan)
    assert cut == [[0], [1], [2], [3], [4, 5]]  # consecutive; 20 > 10 is a micro-batch of its own
    assert sorted(i for part in cut for i in part) == list(range(6))
    assert all(sum(lengths[i] for i in part) <= 10 or len(part) == 1 for part in cut)
    with pytest.raises(ValueError, match="needs the token length"):
        plan_steps(6, TrainConfig(batch_size=6, max_tokens_per_micro_batch=10))


def _sft_step_gradient(tmp_path, packed: bool, max_tokens=None):
    """The gradient of one optimizer step of `fit` on a tiny Llama (fp32), read just before the update."""
    from tests.helpers import one_thread, tiny_model, tiny_tokenizer

    from tunelab.sft.collate import collate, pack
    from tunelab.sft.objective import SftObjective

    g = torch.Generator().manual_seed(0)
    data = []
    for n in (7, 12, 5, 9, 3, 11, 6, 8):
        ids = torch.randint(5, 300, (n,), generator=g).tolist()
        data.append({"input_ids": ids, "labels": [-100] * (n // 3) + ids[n // 3:]})
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=0)
    cfg = TrainConfig(max_steps=1, batch_size=8, lr=1e-3, warmup=0, device="cpu", max_tokens_per_micro_batch=max_tokens)
    accelerator, _ = make_accelerator(cfg)
    plan = plan_steps(len(data), cfg, lengths=[len(e["input_ids"]) for e in data])
    seen, real_step = {}, torch.optim.AdamW.step
    calls = []

    def recording_step(self, *a, **k):
        seen["grads"] = [p.grad.clone() for p in model.parameters()]
        return real_step(self, *a, **k)

    def counting_collate(items):
        calls.append(len(items))
        return pack(items) if packed else collate(items, pad_id=tok.pad_token_id)

    torch.optim.AdamW.step = recording_step
    try:
        with one_thread():
            fit(model, data, counting_collate, SftObjective(), None, cfg, plan, tmp_path, accelerator, log=lambda *a: None)
    finally:
        torch.optim.AdamW.step = real_step
    return seen["grads"], calls


@pytest.mark.parametrize("packed", [False, True])
def test_a_token_budget_leaves_the_step_gradient_unchanged(tmp_path, packed):
    """Eight examples in one micro-batch, or cut into micro-batches of at most 16 tokens: the
    loop divides every micro-loss by the targets of the whole step, so the step gradient is the same."""
    full, calls_full = _sft_step_gradient(tmp_path / "full", packed)
    cut, calls_cut = _sft_step_gradient(tmp_path / "cut", packed, max_tokens=16)
    assert calls_full == [8] and len(calls_cut) > 3 and sum(calls_cut) == 8
    for a, b in zip(cut, full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_no_read_back_per_micro_batch(tmp_path, monkeypatch):
    """Losses stay on the device within a step: the loop itself calls no .item() and one .tolist()
    per step (gradient norm and loss together), with 4 micro-batches a step."""
    import sys

    counts = {"item": 0, "tolist": 0}
    real_item, real_tolist = torch.Tensor.item, torch.Tensor.tolist

    def from_fit():
        return sys._getframe(2).f_code.co_name == "fit"

    def item(self):
        counts["item"] += from_fit()
        return real_item(self)

    def tolist(self):
        counts["tolist"] += from_fit()
        return real_tolist(self)

    monkeypatch.setattr(torch.Tensor, "item", item)
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    _, result = _run_micro(tmp_path, steps=3)
    assert result.steps == 3
    assert counts == {"item": 0, "tolist": 3}


def _run_micro(tmp_path, steps):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    data = [(torch.randn(3), float(i % 2)) for i in range(16)]
    cfg = TrainConfig(max_steps=steps, batch_size=4, lr=1e-2, warmup=0, device="cpu")
    accelerator, _ = make_accelerator(cfg)
    plan = plan_steps(len(data), cfg, micro_batch=1)  # 4 micro-batches a step
    return model, fit(model, data, collate, PoisonedObjective(()), None, cfg, plan, tmp_path, accelerator, log=lambda *a: None)


def test_optimizer_is_plain_adamw_on_a_cpu_and_compile_is_off_there():
    from tunelab.train import compiling

    optimizer = make_optimizer(torch.nn.Linear(3, 1), 1e-3, 0.0)
    assert not optimizer.defaults.get("fused")  # fused AdamW only when every parameter is on CUDA
    resolve = compiling.resolve_compile
    assert TrainConfig().compile == "auto" and not resolve("auto", "cpu")[0] and not resolve("auto", "cuda")[0] and resolve("on", "cuda")[0]
    assert not resolve("on", "cpu")[0] and not resolve("off", "cuda")[0]
    assert TrainConfig(compile="on").compile == "on" and TrainConfig(gradient_checkpointing=True).gradient_checkpointing


def test_prefetching_the_next_step_changes_nothing_but_the_order_of_work(tmp_path, monkeypatch):
    """With prefetch (the default on CUDA) step s+1's batches are collated before step s's
    update; the run (losses, weights) is the one without it, and no step is collated twice."""
    events = []
    real_step = torch.optim.AdamW.step

    def recording_step(self, *a, **k):
        events.append("update")
        return real_step(self, *a, **k)

    def recording_collate(items):
        events.append("collate")
        return collate(items)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    results = {}
    for prefetch in (False, True):
        events.clear()
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        data = [(torch.randn(3), float(i % 2)) for i in range(16)]
        cfg = TrainConfig(max_steps=6, batch_size=4, lr=1e-2, warmup=0, device="cpu")
        accelerator, _ = make_accelerator(cfg)
        result = fit(model, data, recording_collate, PoisonedObjective(()), None, cfg, plan_steps(len(data), cfg), tmp_path / str(prefetch),
                     accelerator, log=lambda *a: None, prefetch=prefetch)
        results[prefetch] = (result.history, [p.detach().clone() for p in model.parameters()], list(events))
    assert results[False][2] == ["collate", "update"] * 6
    assert results[True][2] == ["collate"] + ["collate", "update"] * 5 + ["update"]
    assert results[True][0] == results[False][0]
    for a, b in zip(results[True][1], results[False][1]):
        assert torch.equal(a, b)
