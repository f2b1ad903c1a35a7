"""torch.compile for training: whether a run compiles (`train.compile`), and compiling its blocks.

    compiled = setup_compile(cfg.train, model, device, plan.total_steps, log)
    with eager(compiled):  # validation, scoring: no gradients, no recompiles
        ...
    uncompile_blocks(model)  # before export and generation

Why compile at all: on a GPU a small model's training step is bound by the host, not by the
chip (docs/benchmarks.md: a Qwen2-0.5B SFT step took 153.6 ms of wall time for 57.8 ms of
kernels, batch 8 of 64-1024 tokens): thousands of small kernels (norms, rotary embeddings,
activations, autocast casts), each launched from Python. Compiling fuses them and cuts the
Python per block.

Why regional (each transformer block compiled in place, not the whole model): the blocks are
identical, so dynamo compiles one and reuses it for all of them (it inlines the module and
treats its parameters as inputs), which keeps the compile time that of one block; the
embedding, the LM head and tunelab's loss (a forward hook and Python-level chunking) stay
eager. Dynamic shapes from the first call, so a packed row or a padded batch of a new length
does not recompile. Parameter names do not change: checkpoints and exports are unaffected.

Why `auto` depends on the run's length: compiling costs a fixed time once (tens of seconds on
the H200) and saves a little on every step, so it pays only for runs long enough; `auto`
compiles on CUDA when the planned steps reach `COMPILE_MIN_STEPS`, `on` always on CUDA, and a
CPU never compiles (inductor's CPU code needs a C++ toolchain and gains little there).
"""

from __future__ import annotations

import contextlib

import torch

# `auto` compiles a CUDA run of at least this many optimizer steps. None: not yet measured, so
# auto stays off (the measurement: docs/benchmarks.md, GPU fast path).
COMPILE_MIN_STEPS: int | None = None


def resolve_compile(setting: str, device_type: str, total_steps: int) -> tuple[bool, str]:
    """`train.compile` resolved for this run, and why, in words for the log.

    >>> resolve_compile("on", "cuda", 10)[0], resolve_compile("off", "cuda", 10**6)[0], resolve_compile("on", "cpu", 10**6)[0]
    (True, False, False)
    """
    if setting == "off":
        return False, "train.compile off"
    if device_type != "cuda":
        return False, f"train.compile {setting}: off on {device_type} (compiling is for CUDA only)"
    if setting == "on":
        return True, "train.compile on"
    if COMPILE_MIN_STEPS is None:
        return False, "train.compile auto -> off (on = compile the transformer blocks)"
    if total_steps >= COMPILE_MIN_STEPS:
        return True, f"train.compile auto -> on ({total_steps} steps, compiling pays from {COMPILE_MIN_STEPS})"
    return False, f"train.compile auto -> off ({total_steps} steps, compiling pays from {COMPILE_MIN_STEPS}; on = compile anyway)"


def setup_compile(train_cfg, model: torch.nn.Module, device: torch.device, total_steps: int, log=print) -> bool:
    """Resolve `train.compile`, compile the blocks when on, and say so in one line. Returns whether
    the model's blocks are compiled (so that validation runs them eagerly: `eager`)."""
    on, why = resolve_compile(train_cfg.compile, device.type, total_steps)
    if on:
        log(f"{why}: {compile_blocks(model)} transformer blocks compiled (dynamic shapes)")
    elif train_cfg.compile != "auto" or device.type == "cuda":
        log(why)
    return on


def compile_blocks(model: torch.nn.Module, backend: str = "inductor") -> int:
    """torch.compile each transformer block in place with dynamic shapes (see the module
    docstring). Returns how many blocks were compiled. `backend` other than inductor is for
    tests: "aot_eager" traces forward and backward as inductor would, without generating code."""
    from tunelab.model.backbone import transformer_blocks

    blocks = transformer_blocks(model)
    for block in blocks:
        block.compile(dynamic=True, backend=backend)
    return len(blocks)


def uncompile_blocks(model: torch.nn.Module) -> None:
    """Undo `compile_blocks` (before generation, whose one-token steps gain nothing from it)."""
    from tunelab.model.backbone import transformer_blocks

    for block in transformer_blocks(model):
        block._compiled_call_impl = None  # what nn.Module.compile sets


def eager(compiled: bool):
    """A context in which compiled blocks run their plain Python code: validation and scoring (no
    gradients, other shapes) would otherwise recompile (measured on an H200: 20 s for a first
    validation under compile)."""
    if compiled and hasattr(torch.compiler, "set_stance"):
        return torch.compiler.set_stance("force_eager")
    return contextlib.nullcontext()
