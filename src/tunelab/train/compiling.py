"""torch.compile for training: whether a run compiles (`train.compile`), and compiling its blocks.

    compiled = setup_compile(cfg.train, model, device, log)
    with eager(compiled):  # validation, scoring: no gradients, no recompiles
        ...
    uncompile_blocks(model)  # before export and generation

Why compile at all: on a GPU a small model's training step is bound by the host, not by the
chip (docs/benchmarks.md: a packed Qwen2-0.5B SFT step took 162.9 ms of wall time for 57.8 ms
of kernels, batch 8 of 64-1024 tokens; compiled, 106.9 ms): thousands of small kernels (norms, rotary embeddings,
activations, autocast casts), each launched from Python. Compiling fuses them and cuts the
Python per block.

Why regional (each transformer block compiled in place, not the whole model): the blocks are
identical, so dynamo compiles one and reuses it for all of them (it inlines the module and
treats its parameters as inputs), which keeps the compile time that of one block; the
embedding, the LM head and tunelab's loss (a forward hook and Python-level chunking) stay
eager. Dynamic shapes from the first call, so a packed row or a padded batch of a new length
does not recompile. Parameter names do not change: checkpoints and exports are unaffected.

What `auto` does: measured on the H200 (docs/benchmarks.md), compiled blocks pay only with
packed rows (padded batches keep recompiling) and only for classification (steady 1.49x and
2.27x the stock path; SFT 2.13x against the eager packed path's 2.11x), after a one-time
6-24 s compile. So auto compiles a classification run on CUDA together with packed rows when it
is long enough to pay the compile back (`tunelab.train.fastpath`), and never an SFT run; `on`
compiles (CUDA only) and a CPU never compiles (inductor's CPU code needs a C++ toolchain and
gains little there).
"""

from __future__ import annotations

import contextlib

import torch


def resolve_compile(setting: str, device_type: str, auto=None) -> tuple[bool, str]:
    """`train.compile` resolved for this run, and why, in words for the log; `auto` is the run's
    `tunelab.train.fastpath.AutoChoice` (None: auto is off).

    >>> [resolve_compile(s, d)[0] for s, d in [("on", "cuda"), ("auto", "cuda"), ("off", "cuda"), ("on", "cpu")]]
    [True, False, False, False]
    """
    if setting == "off":
        return False, "train.compile off"
    if device_type != "cuda":
        return False, f"train.compile {setting}: off on {device_type} (compiling is for CUDA only)"
    if setting == "on":
        return True, "train.compile on"
    if auto is not None and auto.compile:
        return True, f"train.compile auto -> on: {auto.why}"
    return False, f"train.compile auto -> off: {auto.why if auto else 'on = compile the transformer blocks; pays with packed rows'}"


def setup_compile(train_cfg, model: torch.nn.Module, device: torch.device, log=print, auto=None) -> bool:
    """Resolve `train.compile` (`auto`: see `resolve_compile`), compile the blocks when on, and say
    so in one line. Returns whether the model's blocks are compiled (so that validation runs them
    eagerly: `eager`)."""
    on, why = resolve_compile(train_cfg.compile, device.type, auto)
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
