"""CUDA graphs for training (`train.cuda_graphs`): each micro-batch's forward and backward pass
replayed as one captured graph instead of thousands of kernel launches from Python.

    graphs = MicroStepGraphs(model, micro_step, device, log)   # micro_step(batch, scale) -> loss sum
    loss_sum = graphs(batch, 1 / step_targets)                 # captures the first time, replays after
    ...
    optimizer.zero_grad(set_to_none=False)                     # gradients stay where the graphs add

Why: on the H200 a small model's step is bound by the host, not by the chip (docs/benchmarks.md,
issue 15: a packed Qwen2-0.5B SFT step took 162.9 ms of wall time for 57.8 ms of kernels, 4,313
kernel launches; with compiled blocks 106.9 ms for 39.7 ms). A graph records the kernels of one
forward and backward pass once and launches them all with one call, so the step runs at the speed
of its kernels.

What a graph needs, and how tunelab gives it:
- Fixed shapes: a graph replays the same kernels on the same addresses. Packed rows built with
  `fixed_shapes` (`tunelab.sft.collate.pack`) round their length and their number of targets up
  onto a few sizes (`tunelab.train.batch.bucket`, at most 1/8 waste); a graph is captured the
  first time a shape is seen (that micro-batch runs eagerly on the capture stream first: it is
  the warm-up and counts as the real step) and replayed for every later batch of that shape.
  All captures share one memory pool: nothing made inside a graph outlives it except its loss,
  so the pool holds what one micro-batch needs, not a copy per shape.
- Inputs copied in: each replay copies the batch into the graph's own input tensors and the step's
  loss scale (1 / the step's targets) into a device scalar; nothing of a batch is baked in.
- Gradients at fixed addresses: the backward pass adds into each parameter's `.grad` in place, so
  the loop zeroes gradients in place, and each replay checks that no parameter or `.grad` tensor
  was replaced since the capture (if one was, the graphs are dropped and captured again).
- No host syncs inside a micro-batch: true of the packed paths (the SFT collator computes the
  target positions on the CPU, the classification collator gives the number of examples so that
  pooling reads no size back; transformers skips its mask checks while a stream captures).
- For classification, graphs run only when asked for (`on`): not yet measured on a GPU.

Memory: the pool keeps the largest captured shape's activations for good, and each new shape's
warm-up runs in the eager allocator beside it, so GPU memory reserved can reach about twice one
micro-batch's activations (measured peak allocated: 0.72x the stock path's against 0.68x for eager
packed rows, docs/benchmarks.md); near the memory limit `train.cuda_graphs: off`.

`resolve_cuda_graphs` says where it runs; elsewhere training is eager and the log says why. A
capture that fails (an operation that cannot be captured) turns graphs off for the rest of the run
with the reason in the log; the micro-batch it was captured for has already run eagerly, so the
run's result never depends on a capture.

Written here because neither torch nor transformers offers it for this loop: torch.compile's
"reduce-overhead" mode graphs compiled regions only, pays a compile and recompiles per shape, and
`torch.cuda.make_graphed_callables` graphs forward and backward separately, which keeps every
shape's activations alive in its own pool.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

MAX_GRAPHS = 64  # shapes captured per run at most; a batch of a new shape after that runs eagerly


def resolve_cuda_graphs(setting: str, device_type: str, task: str, packed: bool, processes: int, checkpointing: bool,
                        precision: str = "bf16") -> tuple[bool, str]:
    """`train.cuda_graphs` resolved for one run, and why, in words for the log; `precision` is the
    run's (`fp32` keeps packed attention off the varlen kernel, whose fp32 stand-in reads each
    example's bounds back from the GPU).

    >>> resolve_cuda_graphs("auto", "cuda", "sft", True, 1, False)[0], resolve_cuda_graphs("on", "cpu", "sft", True, 1, False)[0]
    (True, False)
    >>> resolve_cuda_graphs("on", "cuda", "sft", False, 1, False)[1]
    'train.cuda_graphs on -> off: needs packed rows (data.packing on), padded batches change shape every step'
    >>> resolve_cuda_graphs("auto", "cuda", "classification", True, 1, False)[0], resolve_cuda_graphs("on", "cuda", "classification", True, 1, False)[0]
    (False, True)
    >>> resolve_cuda_graphs("auto", "cuda", "sft", True, 1, False, "fp32")[0]
    False
    """
    if setting == "off":
        return False, "train.cuda_graphs off"
    blocker = None
    if device_type != "cuda":
        blocker = f"{device_type}: CUDA graphs are for CUDA only"
    elif task != "sft" and setting == "auto":
        blocker = f"auto turns them on for SFT, where they were measured; set train.cuda_graphs: on to use them for {task}"
    elif not packed:
        blocker = "needs packed rows (data.packing on), padded batches change shape every step"
    elif processes > 1:
        blocker = f"{processes} processes: the gradient all-reduce hooks are not captured"
    elif checkpointing:
        blocker = "train.gradient_checkpointing keeps RNG states for its recomputation, which a capture refuses"
    elif precision not in ("bf16", "fp16"):
        blocker = f"{precision}: packed attention runs on the varlen kernel in bf16/fp16 only (train.precision)"
    if blocker:
        return False, f"train.cuda_graphs {setting} -> off: {blocker}"
    return True, f"train.cuda_graphs {setting} -> on: each micro-batch's forward and backward replayed as one CUDA graph per row shape"


def _shape_key(batch: dict) -> tuple:
    """What a graph is recorded for: every tensor's shape and dtype, and every other value."""
    return tuple(sorted((k, tuple(v.shape), v.dtype) if torch.is_tensor(v) else (k, v) for k, v in batch.items()))


class _Captured:
    """One recorded micro-step: the graph, its input tensors, its loss scale and its output."""

    def __init__(self, graph, inputs: dict, scale: torch.Tensor, loss: torch.Tensor):
        self.graph, self.inputs, self.scale, self.loss = graph, inputs, scale, loss

    def replay(self, batch: dict, scale: float) -> torch.Tensor:
        for k, v in batch.items():
            if torch.is_tensor(v):
                self.inputs[k].copy_(v, non_blocking=True)
        self.scale.fill_(scale)
        self.graph.replay()
        # A copy: the captures share one pool, so a graph's output may lie in memory another
        # graph uses as scratch when it replays.
        return self.loss.clone()


class MicroStepGraphs:
    """Runs `micro_step(batch, scale)` (forward, backward of loss_sum * scale, returns loss_sum
    detached) through one CUDA graph per batch shape; see the module docstring.

    `backend` is for tests on a CPU: an object with `stream()` (the context warm-ups run in),
    `record(fn)` -> (graph, fn's output) (records fn without running it; `graph.replay()` runs it
    again into the same output) and `new_pool()`; torch.cuda's graphs by default.
    """

    def __init__(self, model: torch.nn.Module, micro_step: Callable[[dict, torch.Tensor], torch.Tensor], device: torch.device,
                 log: Callable[[str], None] = print, backend=None):
        self.model, self.micro_step, self.device, self.log = model, micro_step, device, log
        self.backend = backend or _CudaBackend(device)
        self.graphs: dict[tuple, _Captured] = {}
        self.addresses: list[tuple[int, int | None]] | None = None
        self.off_reason: str | None = None
        self.captures = self.replays = self.eager_past_cap = 0
        self.capture_seconds = 0.0  # host time of warm-ups and recordings: what new shapes cost

    @property
    def active(self) -> bool:
        """Whether gradients must stay where the graphs add into them (the loop's zero_grad)."""
        return self.off_reason is None

    def __call__(self, batch: dict, scale: float) -> torch.Tensor:
        if self.off_reason is not None:
            return self._eager(batch, scale)
        if self.graphs and self._addresses() != self.addresses:
            self.log("train.cuda_graphs: a parameter or gradient tensor was replaced; graphs captured again")
            self._drop_graphs()
        key = _shape_key(batch)
        captured = self.graphs.get(key)
        if captured is not None:
            self.replays += 1
            return captured.replay(batch, scale)
        if len(self.graphs) >= MAX_GRAPHS:
            if not self.eager_past_cap:
                self.log(f"train.cuda_graphs: {MAX_GRAPHS} row shapes captured; micro-batches of further shapes run eagerly")
            self.eager_past_cap += 1
            return self._eager(batch, scale)
        started = time.perf_counter()
        try:
            return self._warm_up_and_capture(key, batch, scale)
        finally:
            self.capture_seconds += time.perf_counter() - started

    def _drop_graphs(self) -> None:
        """Forget every graph, and their pool with them (a pool no graph uses any more cannot be
        captured into again: the next capture gets a fresh one)."""
        self.graphs.clear()
        self.backend.new_pool()

    def _eager(self, batch: dict, scale: float) -> torch.Tensor:
        return self.micro_step(batch, torch.full((), scale, device=self.device))

    def _addresses(self) -> list[tuple[int, int | None]]:
        return [(p.data_ptr(), None if p.grad is None else p.grad.data_ptr()) for p in self.model.parameters() if p.requires_grad]

    def _warm_up_and_capture(self, key: tuple, batch: dict, scale: float) -> torch.Tensor:
        """The batch runs eagerly on the capture stream (the real micro-step, and the warm-up the
        capture needs: kernel choice, library workspaces), then the same call is recorded."""
        inputs = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
        static_scale = torch.full((), scale, device=self.device)
        with self.backend.stream():
            loss = self.micro_step(inputs, static_scale).clone()
        before = self._addresses()
        without_grad = [p for p in self.model.parameters() if p.requires_grad and p.grad is None]
        try:
            graph, static_loss = self.backend.record(lambda: self.micro_step(inputs, static_scale))
        except Exception as err:  # an operation a graph cannot hold: eager from here on
            return self._turn_off(f"the capture failed ({_first_error(err)})", without_grad, loss)
        if self._addresses() != before:  # a gradient was made inside the graph's memory, never written
            return self._turn_off("a gradient tensor was created during the capture", without_grad, loss)
        self.graphs[key] = _Captured(graph, inputs, static_scale, static_loss)
        self.addresses = before
        self.captures += 1
        return loss

    def _turn_off(self, reason: str, without_grad: list, loss: torch.Tensor) -> torch.Tensor:
        """Eager from here on. A gradient the failed capture created lies in the graph's memory
        and was never computed (a capture runs nothing): those parameters get no gradient back."""
        for p in without_grad:
            p.grad = None
        self.off_reason = reason
        self.log(f"train.cuda_graphs -> off for the rest of the run: {reason}")
        self._drop_graphs()
        return loss

    def describe(self) -> str:
        """One line for the log at the end of training."""
        state = f"off ({self.off_reason})" if self.off_reason else "on"
        past = f", {self.eager_past_cap} eager past the {MAX_GRAPHS}-shape cap" if self.eager_past_cap else ""
        return (f"train.cuda_graphs {state}: {self.captures} shapes captured ({self.capture_seconds:.1f} s of warm-ups and "
                f"recordings), {self.replays} micro-batches replayed{past}")


def _first_error(err: BaseException) -> str:
    """The error that broke a capture, in one line: the first of the chain (a failed capture's
    exit raises "operation failed due to a previous error during capture" over the real one)."""
    while err.__context__ is not None or err.__cause__ is not None:
        err = err.__cause__ or err.__context__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


class _CudaBackend:
    """torch.cuda's graphs on one side stream (warm-up and captures on the same stream, as CUDA's
    libraries keep per-stream workspaces) and one memory pool shared by all captures."""

    def __init__(self, device: torch.device):
        self.side = torch.cuda.Stream(device)
        self.new_pool()

    def new_pool(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()

    @contextlib.contextmanager
    def stream(self):
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            yield
        torch.cuda.current_stream().wait_stream(self.side)

    def record(self, fn):
        """As `torch.cuda.graph(...)` without its device-wide synchronize and `empty_cache` on
        entry: those make every later allocation of the run a fresh cudaMalloc again, once per
        captured shape."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(self.side):
            graph.capture_begin(self.pool, capture_error_mode="thread_local")
            try:
                out = fn()
            finally:
                graph.capture_end()
        return graph, out
