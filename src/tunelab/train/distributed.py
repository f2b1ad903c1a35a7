"""Several processes, one run: every rank-dependent decision of training lives here.

    torchrun --standalone --nproc_per_node 2 -m tunelab.cli train CONFIG
    accelerate launch --multi_gpu --num_processes 2 -m tunelab.cli train CONFIG

A launcher starts N copies of `tunelab train` with RANK, WORLD_SIZE and LOCAL_RANK set;
accelerate's Accelerator (`runtime.make_accelerator`) joins them into a process group: gloo on
CPUs, NCCL on GPUs, by the same code. The rest of tunelab asks this module, never the rank:

- one writer: `on_main(fn, ...)` runs fn on rank 0 only and gives its result, or its error, to
  every process; it is also the barrier before the others read what rank 0 wrote. `main_only`
  silences logging and metric rows on the other ranks.
- the steps: `split_step` deals the examples of an optimizer step to the processes, as
  micro-batches balanced by tokens, the same number on every process (each forward pass of DDP
  and FSDP is a collective operation: a process with one more would wait forever).
- evaluation: `map_batches` runs batch k on process k % N and gathers the results in order, so a
  sharded evaluation computes exactly the batches of one process, once each.
- the model: `Sharding` resolves `train.distributed` (ddp, or FSDP2 with `fully_shard` on each
  transformer block and the root), switches gradient synchronisation off inside accumulation,
  and returns a plain, whole model at the end (`full_model`) for evaluation and export.
- checkpoints: `full_tensor` / `shard_like` move between a sharded parameter and the full tensor
  that checkpoints hold, so a checkpoint does not depend on the number of processes or the mode.
"""

from __future__ import annotations

import contextlib
import copy
import os

import torch

from tunelab.errors import TunelabError

MODES = ("auto", "ddp", "fsdp")


def _group() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if _group() else 1


def rank() -> int:
    return torch.distributed.get_rank() if _group() else 0


def is_main() -> bool:
    return rank() == 0


def check_launch(environ=os.environ) -> None:
    """Refuse a launch that asked for several processes and got one: `accelerate launch --cpu
    --num_processes N` starts a single process whatever N is (accelerate's simple launcher; it
    only sets MASTER_ADDR), which would train as one process without a word.

    >>> check_launch({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"})
    Traceback (most recent call last):
    ...
    tunelab.errors.TunelabError: accelerate launch --cpu starts one process whatever --num_processes says; ...
    >>> check_launch({"ACCELERATE_USE_CPU": "True"}), check_launch({"WORLD_SIZE": "2", "MASTER_ADDR": "h"})
    (None, None)
    """
    if "ACCELERATE_USE_CPU" in environ and "MASTER_ADDR" in environ and "WORLD_SIZE" not in environ:
        raise TunelabError(
            "accelerate launch --cpu starts one process whatever --num_processes says; for N processes on CPUs use "
            "`accelerate launch --multi_gpu --num_processes N -m tunelab.cli train CONFIG` on a machine without GPUs "
            "(or train.device=cpu), or `torchrun --standalone --nproc_per_node N -m tunelab.cli train CONFIG`")


def check_devices(device: torch.device) -> None:
    """One GPU per process: NCCL refuses two processes on one GPU with an obscure error."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda" and world_size() > 1 and local > torch.cuda.device_count():
        raise TunelabError(f"{local} processes on this machine but {torch.cuda.device_count()} GPU(s) visible: "
                           f"start at most one process per GPU (--nproc_per_node / --num_processes)")


# --- one writer -------------------------------------------------------------------------------


def on_main(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` on rank 0; every process returns its result (picklable). If it
    raises, rank 0 raises that error and the others exit quietly (status 1) instead of waiting
    forever for rank 0; the launcher then stops the run with rank 0's message. Returning is the
    barrier: what rank 0 wrote is in place before any process goes on."""
    if world_size() == 1:
        return fn(*args, **kwargs)
    box: list = [None]
    error = None
    if is_main():
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except BaseException as err:
            box[0], error = ("failed", None), err
    torch.distributed.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0][0] != "ok":
        raise SystemExit(1)
    return box[0][1]


def main_only(fn):
    """`fn` on rank 0, a function that does nothing on the others (logging, metric rows)."""
    return fn if is_main() else (lambda *args, **kwargs: None)


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def close(finished: bool) -> None:
    """End the process group before the interpreter does. A group left to interpreter exit can
    abort a process ("terminate called without an active exception", SIGABRT) when another rank
    has already gone and gloo's threads are torn down mid-connection. After a finished command
    the ranks meet once more, so none leaves while another still uses the group; after a failure
    they do not wait for each other."""
    if not _group():
        return
    if finished and world_size() > 1:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """`values` summed over the processes (a copy; the input is left alone)."""
    values = values.clone()
    if world_size() > 1:
        torch.distributed.all_reduce(values)
    return values


def gather_tensor(t: torch.Tensor) -> list[torch.Tensor]:
    """Every process's `t` (same shape and dtype everywhere), in rank order, on every process."""
    if world_size() == 1:
        return [t]
    if torch.distributed.get_backend() == "nccl":  # NCCL moves GPU tensors only
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    parts = [torch.empty_like(t) for _ in range(world_size())]
    torch.distributed.all_gather(parts, t.contiguous())
    return parts


# --- sharded evaluation -----------------------------------------------------------------------


def map_batches(fn, batches: list) -> list:
    """`[fn(b) for b in batches]` with the work dealt over the processes: batch k runs on process
    k % N, and the results (picklable, on the CPU) come back in batch order on every process.
    Every process calls fn the same number of times, since under FSDP a forward pass gathers
    weights from all of them: one with fewer batches runs one of its own (or the first) again and
    drops the result. The batches are those one process would run, so the results are the same.

    >>> map_batches(lambda b: sum(b), [[1, 2], [3], [4, 5]])
    [3, 3, 9]
    """
    world = world_size()
    if world == 1 or not batches:
        return [fn(b) for b in batches]
    mine = list(range(rank(), len(batches), world))
    results = [fn(batches[k]) for k in mine]
    for _ in range(-(-len(batches) // world) - len(mine)):
        fn(batches[mine[0] if mine else 0])  # a stand-in call, so that collectives pair up
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, results)
    out: list = [None] * len(batches)
    for r, part in enumerate(gathered):
        for j, value in enumerate(part):
            out[r + j * world] = value
    return out


# --- steps over processes ---------------------------------------------------------------------


def split_step(indices: list[int], micro: list[list[int]], world: int, lengths: list[int] | None = None) -> list[list[list[int]]]:
    """The micro-batches of each process for one optimizer step, every process the same number.

    `micro` is how one process would cut the step (`loop.micro_batches`). Without `lengths`
    (micro-batches of a fixed number of examples) each process takes every world-th example,
    `indices[r::world]`, cut the same way. With `lengths` (a token budget) whole micro-batches
    are dealt, the largest first, to the process with the fewest tokens so far; a micro-batch of
    several examples is halved while the count does not divide evenly. A process left short
    gets `[]`, a stand-in micro-batch that the loop runs with no targets (zero loss).

    >>> split_step([0, 1, 2, 3, 4], [[0, 1, 2, 3, 4]], 2)
    [[[0, 2, 4]], [[1, 3]]]
    >>> split_step([0, 1, 2], [[0], [1], [2]], 2, lengths=[9, 4, 4])
    [[[0], []], [[1], [2]]]
    >>> split_step([0, 1, 2, 3], [[0, 1], [2, 3]], 3, lengths=[3, 3, 5, 5])
    [[[0, 1]], [[2]], [[3]]]
    """
    if world == 1:
        return [micro]
    if lengths is None:
        size = max(len(m) for m in micro)
        per_rank = [[part[k:k + size] for k in range(0, len(part), size)] for part in (indices[r::world] for r in range(world))]
    else:
        micro = [list(m) for m in micro]
        tokens = lambda m: sum(lengths[i] for i in m)  # noqa: E731
        while len(micro) % world:
            splittable = [m for m in micro if len(m) > 1]
            if not splittable:
                break
            big = max(splittable, key=tokens)
            at = micro.index(big)
            micro[at:at + 1] = [big[: len(big) // 2], big[len(big) // 2:]]
        rounds = -(-len(micro) // world)
        per_rank, load = [[] for _ in range(world)], [0] * world
        for m in sorted(micro, key=tokens, reverse=True):
            r = min((r for r in range(world) if len(per_rank[r]) < rounds), key=lambda r: (load[r], r))
            per_rank[r].append(m)
            load[r] += tokens(m)
    rounds = max(len(p) for p in per_rank)
    return [p + [[]] * (rounds - len(p)) for p in per_rank]


# --- the model ----------------------------------------------------------------------------------


def resolve_mode(setting: str, world: int, precision: str, log=print) -> str:
    """`train.distributed` resolved: `none` for one process, else `ddp` (auto) or as asked.

    >>> resolve_mode("auto", 1, "fp32", log=lambda *_: None), resolve_mode("auto", 2, "bf16", log=lambda *_: None)
    ('none', 'ddp')
    """
    if setting not in MODES:
        raise TunelabError(f"train.distributed = {setting!r} is not one of {', '.join(MODES)}")
    if world == 1:
        if setting == "fsdp":
            log("train.distributed fsdp: one process, nothing to shard; training as usual")
        return "none"
    mode = "ddp" if setting == "auto" else setting
    if mode == "fsdp" and precision == "fp16":
        raise TunelabError("train.distributed fsdp with train.precision fp16 is not supported (fp16 needs a gradient scaler "
                           "for sharded gradients); use train.precision bf16 or fp32")
    log(f"train.distributed {setting} -> {mode}: {world} processes"
        + (", weights, gradients and optimizer states sharded (FSDP2)" if mode == "fsdp" else ", one whole model each"))
    return mode


def _meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose parameters are on the meta device (no memory; buffers are real
    copies, they are small and some, like rotary frequencies, are not in any state dict). Tied
    parameters stay tied: deepcopy maps each parameter object through the same memo entry."""
    memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad) for p in model.parameters()}
    return copy.deepcopy(model, memo)


class Sharding:
    """How the model is spread over the processes: `none`, `ddp` or `fsdp` (see `resolve_mode`).

        sharding = Sharding(train_cfg.distributed, accelerator, precision, log)
        model = sharding.shard(model)                 # before the optimizer is built
        model, optimizer = sharding.prepare(model, optimizer)
        with sharding.grad_sync(model, sync): ...      # inside accumulation
        plain = sharding.full_model(model)             # at the end, on every process

    FSDP2: each transformer block and then the root get `fully_shard` (bf16 compute with fp32
    reductions when the run is bf16); the optimizer holds this process's shards only."""

    def __init__(self, setting: str, accelerator, precision: str, log=print):
        self.accelerator = accelerator
        self.mode = resolve_mode(setting, world_size(), precision, log)
        self.precision = precision
        self._skeleton = None

    def shard(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.mode != "fsdp":
            return model
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        from tunelab.model.backbone import transformer_blocks

        self._skeleton = _meta_copy(model)
        mesh = init_device_mesh(self.accelerator.device.type, (world_size(),))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if self.precision == "bf16" else MixedPrecisionPolicy()
        for block in transformer_blocks(model):
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model

    def prepare(self, model, optimizer):
        """accelerate's prepare (DDP wrapper, autocast) for none/ddp; the optimizer alone for FSDP,
        whose model is already sharded in place and must not be wrapped again."""
        if self.mode == "fsdp":
            return model, self.accelerator.prepare(optimizer)
        return self.accelerator.prepare(model, optimizer)

    def module(self, model):
        """The model to evaluate with: without the DDP wrapper (its forward would broadcast
        buffers, a collective, on every call), as it is under FSDP (a forward must be collective)."""
        return model if self.mode == "fsdp" else self.accelerator.unwrap_model(model)

    @contextlib.contextmanager
    def grad_sync(self, model, sync: bool):
        """Gradients are reduced over the processes only when `sync` (the last micro-batch of a step)."""
        if self.mode == "ddp" and not sync:
            with model.no_sync():
                yield
        elif self.mode == "fsdp":
            model.set_requires_gradient_sync(sync)
            yield
        else:
            yield

    def full_model(self, model) -> torch.nn.Module:
        """The trained model, plain and whole on every process: DDP's inner module, or for FSDP a
        copy built from the meta skeleton taken before sharding, with every parameter gathered."""
        if self.mode != "fsdp":
            return self.accelerator.unwrap_model(model)
        skeleton, self._skeleton = self._skeleton, None
        fulls = [full_tensor(p.detach()) for _, p in model.named_parameters()]  # collective, same order everywhere
        new = {id(p): torch.nn.Parameter(t.clone(), requires_grad=p.requires_grad) for (_, p), t in zip(skeleton.named_parameters(), fulls)}
        for module in skeleton.modules():
            for key, p in module._parameters.items():
                if p is not None:
                    module._parameters[key] = new[id(p)]
        return skeleton


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) parameter or state gathered whole; a plain tensor as it is. With
    shards, every process must call this for the same tensors in the same order."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` (a whole tensor every process holds, e.g. read from a checkpoint) laid out as `like`:
    this process's shard when `like` is sharded (no communication), else `full` itself."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)
