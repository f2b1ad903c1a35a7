"""The one training loop, on accelerate, for every task.

Task differences live in the `objective` (how a batch becomes a summed loss and how many targets
it holds) and in the model; the loop never sees pooling, templates or heads.

Order of examples is a pure function of (seed, epoch), and optimizer step `s` always uses the same
examples, so a run resumed from a checkpoint (weights, optimizer, scheduler, RNG states, counters)
continues exactly where it stopped and ends with the same result as an uninterrupted run.

Gradient accumulation: the loss of every micro-batch is its summed loss divided by the number of
targets (examples, or target tokens for SFT) of the whole optimizer step, so a step's gradient is
the true mean over all its targets whatever the micro-batch sizes are. That is also why a step's
examples may be cut into micro-batches by a token budget (`train.max_tokens_per_micro_batch`,
`micro_batches`) instead of by count: the cut changes memory and speed, not the gradient.

No host syncs inside the micro-batch loop: batches go to the GPU from pinned memory without
blocking, losses are summed on the device, and one read-back per step (gradient norm, loss) feeds
the non-finite check and the log. On CUDA the next step's batches are collated and sent before
that read-back, while the GPU still works (a background thread would contend for the GIL with
the loop's own launches; this ordering gets the overlap without one). On CUDA the optimizer is fused AdamW (`make_optimizer`); the recipes
compile the transformer blocks when `train.compile` resolves to on (`tunelab.train.compiling`), and
with `train.cuda_graphs` each micro-batch's forward and backward is one replayed CUDA graph
(`tunelab.train.cuda_graphs`).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from tunelab.errors import TunelabError
from tunelab.train import checkpoint as ckpt
from tunelab.train import distributed as dist
from tunelab.train.cuda_graphs import MicroStepGraphs
from tunelab.train.optim import make_optimizer, make_scheduler, warmup_steps

# A step whose loss or gradients are nan/inf is skipped (as a loss scaler would); this many in a
# row means the run diverged (a too-high learning rate, or an overflow in low precision): stop.
MAX_NONFINITE_STEPS = 5


class Objective(Protocol):
    def __call__(self, model, batch: dict) -> torch.Tensor: ...  # summed loss over the batch's targets
    def count(self, batch: dict) -> float: ...  # number (or total weight) of targets in the batch


@dataclass
class LoopPlan:
    """How the data is cut into steps; derived from the config, logged once."""

    n_examples: int
    micro_batch: int
    accum: int
    steps_per_epoch: int
    total_steps: int
    warmup: int
    max_tokens: int | None = None  # token budget of a micro-batch (then `micro_batch` only sets the step size)
    lengths: list[int] | None = field(default=None, repr=False)  # tokens of each example, for the budget

    @property
    def step_size(self) -> int:
        return self.micro_batch * self.accum


def plan_steps(n_examples: int, train_cfg, micro_batch: int | None = None, lengths: list[int] | None = None) -> LoopPlan:
    """Micro-batch, accumulation and step counts. A step holds batch_size x grad_accum examples;
    `micro_batch` (a divisor of batch_size; default batch_size) is how many go through the model
    at once, e.g. 1 for unpadded sequences, the rest accumulated. With
    `train.max_tokens_per_micro_batch` set, a step's examples are instead cut into micro-batches of
    at most that many tokens (see `micro_batches`); that needs `lengths`, the tokens of each example.

    >>> from types import SimpleNamespace as C
    >>> p = plan_steps(100, C(batch_size=8, grad_accum=2, max_steps=None, epochs=3, warmup=0.1), micro_batch=1)
    >>> p.micro_batch, p.accum, p.steps_per_epoch, p.total_steps, p.warmup
    (1, 16, 7, 21, 2)
    """
    micro = micro_batch or train_cfg.batch_size
    if train_cfg.batch_size % micro:
        raise ValueError(f"micro_batch {micro} does not divide batch_size {train_cfg.batch_size}")
    accum = train_cfg.grad_accum * (train_cfg.batch_size // micro)
    per_epoch = math.ceil(n_examples / (micro * accum))
    total = train_cfg.max_steps or max(1, math.ceil(train_cfg.epochs * per_epoch))
    max_tokens = getattr(train_cfg, "max_tokens_per_micro_batch", None)
    if max_tokens and lengths is None:
        raise ValueError("train.max_tokens_per_micro_batch needs the token length of each example (plan_steps(..., lengths=...))")
    if lengths is not None and len(lengths) != n_examples:
        raise ValueError(f"{len(lengths)} lengths for {n_examples} examples")
    return LoopPlan(n_examples, micro, accum, per_epoch, total, warmup_steps(train_cfg.warmup, total),
                    max_tokens or None, list(lengths) if max_tokens else None)


def micro_batches(indices: list[int], plan: LoopPlan) -> list[list[int]]:
    """The micro-batches of one step's examples (on one process): consecutive slices of
    `plan.micro_batch` examples, or with `plan.max_tokens` consecutive runs of at most that many
    tokens (an example longer than the budget is a micro-batch of its own). The step's gradient is
    the same for every cut, since each micro-loss is divided by the targets of the whole step.

    >>> from types import SimpleNamespace as C
    >>> cfg = C(batch_size=4, grad_accum=1, max_steps=None, epochs=1, warmup=0, max_tokens_per_micro_batch=10)
    >>> micro_batches([0, 1, 2, 3], plan_steps(4, cfg, lengths=[4, 5, 12, 3]))
    [[0, 1], [2], [3]]
    """
    if not plan.max_tokens:
        return [indices[k : k + plan.micro_batch] for k in range(0, len(indices), plan.micro_batch)]
    cut, current, tokens = [], [], 0
    for i in indices:
        n = plan.lengths[i]
        if current and tokens + n > plan.max_tokens:
            cut.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += n
    if current:
        cut.append(current)
    return cut


def epoch_order(epoch: int, plan: LoopPlan, seed: int, lengths: list[int] | None = None) -> list[list[int]]:
    """The steps of one epoch: lists of example indices, a pure function of (seed, epoch).

    Without `lengths`: consecutive slices of a seeded permutation. With `lengths` (group by
    length): the permutation is cut into windows of 50 steps, each window sorted by length and cut
    into steps, and the steps shuffled again, so a batch holds similar lengths (little padding)
    while the data order stays random. The last step may be smaller.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(plan.n_examples, generator=g).tolist()
    size = plan.step_size
    if lengths is not None:
        window = size * 50
        order = [i for w in range(0, len(order), window) for i in sorted(order[w : w + window], key=lambda i: lengths[i])]
    steps = [order[k : k + size] for k in range(0, len(order), size)]
    if lengths is not None:
        full = [s for s in steps if len(s) == size]
        perm = torch.randperm(len(full), generator=g).tolist()
        steps = [full[i] for i in perm] + [s for s in steps if len(s) != size]
    return steps


@dataclass
class LoopResult:
    steps: int
    best: dict | None
    stopped_early: bool
    train_seconds: float
    plan: LoopPlan
    history: list[dict] = field(default_factory=list)
    step_seconds: float = 0.0  # the training steps alone: validation and checkpoint writes left out
    model: torch.nn.Module | None = field(default=None, repr=False)  # trained, best weights, plain and whole on every process
    first_step_seconds: float | None = None  # the run's first step (compiling, kernel selection, allocator warm-up)


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if metric == "loss" else new > old


def fit(
    model: torch.nn.Module,
    dataset: list,
    collate: Callable[[list], dict],
    objective: Objective,
    evaluate: Callable[[torch.nn.Module], dict] | None,
    train_cfg,
    plan: LoopPlan,
    run_dir: Path,
    accelerator,
    resume: bool = False,
    lengths: list[int] | None = None,
    log: Callable[[str], None] = print,
    cuda_graphs: bool = False,
    prefetch: bool | None = None,
) -> LoopResult:
    """Train `model` on `dataset` (a list of items `collate` understands) and keep the best
    checkpoint by the validation metric. Writes `metrics.jsonl` and `checkpoints/` in run_dir.
    `plan` (from `plan_steps`) cuts the data into steps and micro-batches; `lengths` (one per
    example) turns on batching by similar length; `cuda_graphs` (resolved by the recipe,
    `tunelab.train.cuda_graphs`) replays each micro-batch shape as one captured CUDA graph;
    `prefetch` (default: on CUDA) prepares each next step's batches before waiting for this one's."""
    from tunelab.progress import progress_bar

    cut = f"micro-batches of at most {plan.max_tokens} tokens, {plan.step_size} examples per step" if plan.max_tokens else \
        f"micro-batch {plan.micro_batch} x accumulation {plan.accum} = {plan.step_size} per step"
    log(f"plan: {plan.n_examples} examples, {cut}, {plan.steps_per_epoch} steps/epoch, {plan.total_steps} steps, warmup {plan.warmup}")
    model = model.to(accelerator.device)  # before the optimizer, so that it can be the fused one on CUDA
    precision = {"no": "fp32"}.get(str(accelerator.mixed_precision), str(accelerator.mixed_precision))
    sharding = dist.Sharding(train_cfg.distributed, accelerator, precision, log)
    model = sharding.shard(model)  # FSDP: the optimizer must see the sharded parameters
    optimizer = make_optimizer(model, train_cfg.lr, train_cfg.weight_decay)
    scheduler = make_scheduler(optimizer, plan.total_steps, plan.warmup, train_cfg.schedule)
    model, optimizer = sharding.prepare(model, optimizer)
    plain = sharding.module(model)  # what checkpoints and evaluation see
    graphs = None
    if cuda_graphs:
        graphs = MicroStepGraphs(model, functools.partial(micro_step, model, objective, accelerator), accelerator.device, log)

    ckpt_root = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    write_row = dist.main_only(_append_metrics)
    counters = {"step": 0, "best_value": None, "best_step": None, "bad_evals": 0, "train_seconds": 0.0, "step_seconds": 0.0, "stopped_early": False}
    if resume and (last := dist.on_main(ckpt.latest_checkpoint, ckpt_root)) is not None:
        counters = ckpt.load_checkpoint(last, plain, optimizer, scheduler)
        log(f"resumed from {last.name} (step {counters['step']} of {plan.total_steps})")
    dist.on_main(_truncate_metrics, metrics_path, counters["step"])

    metric = train_cfg.early_stopping.metric
    eval_every = plan.steps_per_epoch if train_cfg.eval_every == "epoch" else int(train_cfg.eval_every)
    bar = progress_bar(total=plan.total_steps, initial=counters["step"], desc="train", unit="step", disable=not dist.is_main())
    say = dist.main_only(bar.write)  # a disabled bar still writes its messages
    started = time.perf_counter() - counters["train_seconds"]
    running = []
    nonfinite_run = 0  # consecutive steps whose loss or gradients were nan/inf
    order = _StepOrder(plan, train_cfg.seed, lengths)
    prefetch = accelerator.device.type == "cuda" if prefetch is None else prefetch

    def prepare(step: int) -> _Prepared:
        return _prepare_step(order.indices(step), dataset, collate, objective, plan, accelerator)

    upcoming: _Prepared | None = None  # the next step's batches, when prefetched
    model.train()
    while counters["step"] < plan.total_steps and not counters["stopped_early"]:
        step_started = time.perf_counter()
        step = counters["step"]
        step_loss, total_targets = _forward_backward(model, upcoming or prepare(step), objective, sharding, accelerator, graphs)
        # The next step's batches are cut, collated and sent while the GPU still works on this one
        # (the read-back below waits for it): the host's share of a step hides behind the chip's.
        upcoming = prepare(step + 1) if prefetch and step + 1 < plan.total_steps else None
        # The gradient norm (clipping at infinity leaves the gradients as they are) tells whether
        # this update is finite; a non-finite one is skipped so it cannot poison the weights. A
        # nan/inf loss gives such gradients too; the norm is taken after the all-reduce, so every
        # process makes the same choice. One read-back per step: norm, loss and targets together.
        grad_norm = dist.full_tensor(accelerator.clip_grad_norm_(model.parameters(), train_cfg.max_grad_norm or math.inf))
        readback = [torch.as_tensor(grad_norm).float().reshape(()).to(step_loss.device), step_loss]
        if torch.is_tensor(total_targets):
            readback.append(total_targets.float())
        grad_norm, step_loss, *reduced = torch.stack(readback).tolist()
        total_targets = reduced[0] if reduced else total_targets
        if math.isfinite(grad_norm):
            optimizer.step()
            nonfinite_run = 0
        else:
            nonfinite_run += 1
            say(f"step {step + 1}: loss {step_loss:.4g}, gradient norm {grad_norm:.4g}: not finite, update skipped")
            if nonfinite_run >= MAX_NONFINITE_STEPS:
                raise TunelabError(
                    f"training diverged: loss or gradients were not finite (nan/inf) for {nonfinite_run} steps in a row, "
                    f"up to step {step + 1}. Lower train.lr (now {train_cfg.lr:g}) or set train.precision=fp32; "
                    f"checkpoints written so far are in {ckpt_root}.")
        scheduler.step()
        optimizer.zero_grad(set_to_none=graphs is None or not graphs.active)  # graphs add into the gradients where they were captured
        counters["step"] = step + 1
        running.append(step_loss / total_targets)
        lr = scheduler.get_last_lr()[0]
        bar.update(1)
        bar.set_postfix(loss=f"{running[-1]:.4f}", lr=f"{lr:.2e}")
        step_took = time.perf_counter() - step_started
        counters["step_seconds"] = counters.get("step_seconds", 0.0) + step_took
        counters.setdefault("first_step_seconds", step_took)  # kept from the first run on a resume

        done = counters["step"] >= plan.total_steps
        if counters["step"] % 10 == 0 or done:
            write_row(metrics_path, {"step": counters["step"], "epoch": round(counters["step"] / plan.steps_per_epoch, 3), "train_loss": sum(running) / len(running), "lr": lr})
            running = []
        if evaluate is not None and (counters["step"] % eval_every == 0 or done):
            counters["train_seconds"] = time.perf_counter() - started
            scores = evaluate(plain)  # sharded over the processes inside; the same scores on each
            model.train()
            write_row(metrics_path, {"step": counters["step"], "split": "validation", **scores})
            say(f"step {counters['step']}: " + "  ".join(f"val_{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float)))
            if _better(metric, scores[metric], counters["best_value"]):
                counters.update(best_value=scores[metric], best_step=counters["step"], bad_evals=0)
                ckpt.save_best(ckpt_root, plain, {"step": counters["step"], "metric": metric, **scores})
            else:
                counters["bad_evals"] += 1
                patience = train_cfg.early_stopping.patience
                if patience and counters["bad_evals"] >= patience:
                    counters["stopped_early"] = True
                    say(f"early stop: val_{metric} did not improve for {patience} evaluations")
        save_now = (train_cfg.save_every and counters["step"] % train_cfg.save_every == 0) or (evaluate is not None and counters["step"] % eval_every == 0) or done or counters["stopped_early"]
        if save_now:
            counters["train_seconds"] = time.perf_counter() - started
            ckpt.save_checkpoint(ckpt_root, counters["step"], plain, optimizer, scheduler, counters)
    bar.close()
    if graphs is not None:
        log(graphs.describe())
        graphs = None  # the captured graphs' memory goes back before evaluation and export
    counters["train_seconds"] = max(counters["train_seconds"], time.perf_counter() - started) if counters["step"] else 0.0
    best = None
    if evaluate is not None:
        best = ckpt.load_best(ckpt_root, plain)
    return LoopResult(counters["step"], best, counters["stopped_early"], counters["train_seconds"], plan, dist.on_main(_read_metrics, metrics_path),
                      counters.get("step_seconds", counters["train_seconds"]), sharding.full_model(model), counters.get("first_step_seconds"))


class _StepOrder:
    """The example indices of each step (`epoch_order`), each epoch computed once."""

    def __init__(self, plan: LoopPlan, seed: int, lengths: list[int] | None):
        self.plan, self.seed, self.lengths, self.epochs = plan, seed, lengths, {}

    def indices(self, step: int) -> list[int]:
        epoch, within = divmod(step, self.plan.steps_per_epoch)
        if epoch not in self.epochs:
            self.epochs = {epoch: epoch_order(epoch, self.plan, self.seed, self.lengths)}  # the one in use
        return self.epochs[epoch][within]


@dataclass
class _Prepared:
    """One optimizer step's micro-batches on this process, already on the device."""

    micro: list[tuple[dict, list[int]]]  # (batch, its example indices; [] for a stand-in)
    total_targets: float | torch.Tensor  # over all processes: what every micro-loss is divided by


def _prepare_step(step_indices: list[int], dataset: list, collate, objective: Objective, plan: LoopPlan, accelerator) -> _Prepared:
    """Cut this process's share of a step (`distributed.split_step`; every process gets as many
    micro-batches), collate it, count its targets and send it to the device (without waiting)."""
    world = dist.world_size()
    parts = dist.split_step(step_indices, micro_batches(step_indices, plan), world, plan.lengths if plan.max_tokens else None)[dist.rank()]
    # A stand-in micro-batch ([]: this process has no examples left for it) runs the step's first
    # example with its loss times 0, so that the collective forward and backward passes pair up.
    micro = [collate([dataset[i] for i in (part or step_indices[:1])]) for part in parts]
    local_targets = float(sum(objective.count(b) for b, part in zip(micro, parts) if part))
    if world > 1:
        total_targets = dist.all_sum(torch.full((), local_targets, device=accelerator.device)).clamp_min(1e-9)
    else:
        total_targets = max(local_targets, 1e-9)
    return _Prepared([(_to_device(b, accelerator.device), part) for b, part in zip(micro, parts)], total_targets)


def _forward_backward(model, prepared: _Prepared, objective: Objective, sharding, accelerator, graphs: MicroStepGraphs | None = None):
    """Forward and backward passes of a prepared step's micro-batches, through `graphs` when
    given. Returns this step's loss summed over all processes (a device tensor) and its targets
    over all processes (a float with one process, a device tensor otherwise)."""
    world, micro, total_targets = dist.world_size(), prepared.micro, prepared.total_targets
    step_loss = torch.zeros((), device=accelerator.device)
    for k, (batch, part) in enumerate(micro):
        # DDP and FSDP average gradients over processes; times world gives the global mean.
        scale = world / total_targets if part else 0.0
        if graphs is not None:  # one process (resolve_cuda_graphs): no stand-ins, no grad_sync
            loss_sum = graphs(batch, scale)
        else:
            with sharding.grad_sync(model, k == len(micro) - 1):
                loss_sum = micro_step(model, objective, accelerator, batch, scale)
        if part:
            step_loss += loss_sum.to(step_loss.device)
    return (dist.all_sum(step_loss) if world > 1 else step_loss), total_targets


def micro_step(model, objective: Objective, accelerator, batch: dict, scale) -> torch.Tensor:
    """Forward and backward pass of one micro-batch, its summed loss times `scale` (a float or a
    device scalar: 1 / the step's targets) back-propagated; returns the summed loss, detached, fp32.
    The same call is what `MicroStepGraphs` captures."""
    loss_sum = objective(model, batch)
    accelerator.backward(loss_sum * scale)
    return loss_sum.detach().float()


def _to_device(batch: dict, device: torch.device) -> dict:
    """A batch's tensors on `device`; to a GPU from pinned memory without blocking the host (a
    plain copy from pageable memory waits for the GPU to finish everything queued before it)."""
    if device.type != "cuda":
        return {key: v.to(device) if torch.is_tensor(v) else v for key, v in batch.items()}
    return {key: v.pin_memory().to(device, non_blocking=True) if torch.is_tensor(v) else v for key, v in batch.items()}


def _append_metrics(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, forget log rows written after the checkpoint (they will be written again)."""
    rows = [r for r in _read_metrics(path) if r["step"] <= step]
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
