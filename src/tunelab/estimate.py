"""What a run will cost before it starts: parameters, memory against this machine's, and (measured)
time. The same short summary opens every `tunelab train`.

    tunelab estimate configs/spam-smollm2.yaml [key=value ...] [--measure [STEPS]]

Parameters are counted on the run's own model built on the meta device (shapes only: config.json
is read, no weights): the task's builder with its trainable policy, through `tasks.meta_model`.

Memory of one training micro-batch, in bytes (MB = 2**20, GB = 2**30). tunelab keeps fp32 weights
(bf16 / fp16 are autocast), so:

    weights      4 x all parameters
    gradients    4 x trainable parameters
    optimizer    8 x trainable parameters          AdamW: two fp32 states each
    autocast     2 x trainable parameters          bf16/fp16: the half copy autocast keeps of each
    activations  (stored blocks + 1) x per block  + LM-head logits (SFT)
    runtime      0.5 GB                            Python, torch, transformers (the CUDA context)

    per block    = (14 H + 5 I) x tokens x bytes per value       H hidden, I intermediate size
                 + ( 9 H +   I) x tokens x bytes when LoRA dropout is on (the dropped copies of
                   each adapted layer's input; all-linear targets)
                 + 3 x heads x T x tokens x bytes when the config's attention dropout is on
                   (GPT-2, BERT): sdpa then keeps the T x T scores, probabilities and dropped
                   probabilities of each head (T = data.max_length, the row length)
    tokens       = tokens of a micro-batch: batch_size x max_length (1 x max_length with padding
                   none; at most max(max_tokens_per_micro_batch, max_length)): an upper bound,
                   since `longest` padding pads to the longest text of the batch only
    bytes/value  = 4 in fp32, 2.5 under bf16/fp16 autocast (half matmul outputs, fp32 norms)
    stored       = the blocks from the lowest one holding a trainable weight to the top: autograd
                   keeps nothing below it (head: 0, last_blocks: N, all and lora: every block);
                   the +1 is one block's working set (a frozen block's forward, or the recompute
                   of a checkpointed one). Gradient checkpointing keeps only each stored block's
                   input: H x tokens x bytes per block.
    LM head      = 2 x min(tokens, logit_rows) x vocabulary x 4: the fp32 logits of one chunk of
                   target rows and their gradient (sft/objective.py)

The per-block constants were measured with `torch.autograd.graph.saved_tensors_hooks` (the bytes
autograd keeps) on Llama, Qwen2, Gemma 3, GPT-2 and BERT blocks with sdpa attention: what autograd
keeps is 0.81 to 1.17 times the formula for each, trained in full, last block or LoRA (hidden size
32, rows of 64 tokens; tests/test_estimate.py). The whole process, on this project's 2-core CPU
(`tunelab estimate configs/spam-minilm.yaml data.padding=max_length data.max_rows=200 --measure 3`:
MiniLM-L6, batch 16 x 128 tokens, fp32, all weights trained): formula 1.78 GB, peak resident
memory over the measured steps 1.54 GB. Eager attention, which keeps its T x T
scores even without dropout, needs more. A run is said not to fit when the total passes 90 % of
the machine's memory (CPU RAM from os.sysconf; the GPU's memory on CUDA), and the warning lists
the levers with the total each one gives.

`--measure` runs the real recipe on this machine in a scratch folder under the temporary
directory for a few optimizer steps (train.max_steps=STEPS, one validation) and times them; see
`measure_time` for how that becomes the time of the whole run.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from tunelab.assets.resolve import resolve_model
from tunelab.model.backbone import hidden_size, transformer_blocks
from tunelab.model.lora import count_parameters
from tunelab.progress import duration
from tunelab.tasks import meta_model, recipe
from tunelab.train.loop import plan_steps
from tunelab.train.runtime import cpu_has_native_bf16, make_accelerator

PER_HIDDEN, PER_INTERMEDIATE = 14, 5  # values autograd keeps per token and block, per unit of H and I
LORA_DROPOUT_PER_HIDDEN, LORA_DROPOUT_PER_INTERMEDIATE = 9, 1  # added by LoRA dropout (all-linear)
SCORES_WITH_DROPOUT = 3  # attention dropout: sdpa keeps scores, probabilities and dropped ones (x heads x T)
ATTENTION_DROPOUT_KEYS = ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob")
BYTES_PER_VALUE = {"fp32": 4.0, "bf16": 2.5, "fp16": 2.5}
RUNTIME_BYTES = 0.5 * 2**30
FIT_SHARE = 0.9  # of the machine's memory; the rest is headroom for what the formula leaves out


@dataclass(frozen=True)
class Shape:
    """What the memory formula needs to know of a model (any device, meta included)."""

    total_params: int
    trainable_params: int
    hidden: int
    intermediate: int
    blocks: int
    stored_blocks: int  # from the lowest block with a trainable weight to the top
    vocab: int
    heads: int
    attention_dropout: bool  # the config's attention dropout is on (GPT-2 and BERT configs have 0.1)
    lora_dropout: bool
    block_linears: tuple[tuple[int, int], ...] = field(repr=False)  # (in, out) of every linear layer in the blocks


def model_shape(model: nn.Module) -> Shape:
    """The sizes of `model` (a classifier, a causal LM, either wrapped by PEFT)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = hidden_size(config)
    blocks = transformer_blocks(model)
    trainable_blocks = [i for i, block in enumerate(blocks) if any(p.requires_grad for p in block.parameters())]
    trainable, total = count_parameters(model)
    # the base layers LoRA adapts (not LoRA's own); GPT-2's are transformers' Conv1D, weight (in, out)
    linears = tuple((m.in_features, m.out_features) if isinstance(m, nn.Linear) else tuple(m.weight.shape)
                    for block in blocks for name, m in block.named_modules()
                    if (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D") and "lora_" not in name)
    return Shape(
        total_params=total,
        trainable_params=trainable,
        hidden=hidden,
        intermediate=int(getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden),
        blocks=len(blocks),
        stored_blocks=len(blocks) - trainable_blocks[0] if trainable_blocks else 0,
        vocab=int(getattr(text, "vocab_size", 0) or 0),
        heads=int(getattr(text, "num_attention_heads", None) or getattr(text, "n_head", 0)),
        attention_dropout=any((getattr(text, key, 0) or 0) > 0 for key in ATTENTION_DROPOUT_KEYS),
        lora_dropout=any(isinstance(m, nn.Dropout) and m.p > 0 for name, m in model.named_modules() if "lora_dropout" in name),
        block_linears=linears,
    )


def micro_batch_tokens(batch_size: int, max_length: int, one_per_micro_batch: bool = False, max_tokens: int | None = None) -> int:
    """Tokens of the largest micro-batch (every text max_length tokens long).

    >>> micro_batch_tokens(8, 128), micro_batch_tokens(8, 128, one_per_micro_batch=True), micro_batch_tokens(8, 128, max_tokens=300)
    (1024, 128, 300)
    """
    tokens = (1 if one_per_micro_batch else batch_size) * max_length
    return min(tokens, max(max_tokens, max_length)) if max_tokens else tokens


def cfg_tokens(cfg, batch_size: int | None = None, max_length: int | None = None) -> int:
    """`micro_batch_tokens` for a run config (optionally with another batch size or max_length)."""
    one = cfg.data.padding == "none" and cfg.data.packing != "on"  # padding none: one sequence per micro-batch
    return micro_batch_tokens(batch_size or cfg.train.batch_size, max_length or cfg.data.max_length, one, cfg.train.max_tokens_per_micro_batch)


@dataclass(frozen=True)
class Footprint:
    """Bytes of one training step, by part (see the module docstring)."""

    weights: float
    gradients: float
    optimizer: float
    autocast: float
    activations: float
    runtime: float = RUNTIME_BYTES

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.autocast + self.activations + self.runtime


def block_bytes(shape: Shape, tokens: int, precision: str, length: int) -> float:
    """What autograd keeps for one transformer block of a micro-batch of `tokens` tokens in rows of
    `length` tokens."""
    per_token = PER_HIDDEN * shape.hidden + PER_INTERMEDIATE * shape.intermediate
    if shape.attention_dropout:
        per_token += SCORES_WITH_DROPOUT * shape.heads * length
    if shape.lora_dropout:
        per_token += LORA_DROPOUT_PER_HIDDEN * shape.hidden + LORA_DROPOUT_PER_INTERMEDIATE * shape.intermediate
    return per_token * tokens * BYTES_PER_VALUE[precision]


def activation_bytes(shape: Shape, tokens: int, length: int, precision: str, checkpointing: bool = False, logit_rows: int | None = None) -> float:
    """The activations term of the formula (module docstring)."""
    per_block = block_bytes(shape, tokens, precision, length)
    kept = shape.stored_blocks * (shape.hidden * tokens * BYTES_PER_VALUE[precision] if checkpointing else per_block)
    head = 2 * min(tokens, logit_rows) * shape.vocab * 4 if logit_rows else 0
    return kept + per_block + head


def footprint(shape: Shape, tokens: int, length: int, precision: str, checkpointing: bool = False, logit_rows: int | None = None) -> Footprint:
    """The formula's parts for micro-batches of `tokens` tokens in rows of `length`."""
    half = precision in ("bf16", "fp16")
    return Footprint(4.0 * shape.total_params, 4.0 * shape.trainable_params, 8.0 * shape.trainable_params,
                     2.0 * shape.trainable_params if half else 0.0, activation_bytes(shape, tokens, length, precision, checkpointing, logit_rows))


def machine_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what they are): the GPU's memory on CUDA, else the physical RAM."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(props.total_memory), f"GPU memory ({props.name})"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "CPU RAM"


@dataclass
class Estimate:
    policy: str
    shape: Shape
    tokens: int
    precision: str
    device: str
    memory: Footprint
    available: int
    where: str
    levers: list[tuple[str, float]]  # (overrides and why, the total they give) when it does not fit

    @property
    def fits(self) -> bool:
        return self.memory.total <= FIT_SHARE * self.available


def estimate_memory(cfg, model: nn.Module, device: torch.device, precision: str, available: int | None = None,
                    checkpointing: bool | None = None, logit_rows: int | None = None) -> Estimate:
    """Parameters and memory of `cfg` training `model` on `device` at `precision`.
    `checkpointing`: the recipe's gradient checkpointing (None: the task has none); `logit_rows`:
    rows of LM-head logits the loss holds at once (None: no LM head); `available`: the memory to
    compare with (default: this machine's)."""
    shape = model_shape(model)
    tokens = cfg_tokens(cfg)
    memory = footprint(shape, tokens, cfg.data.max_length, precision, bool(checkpointing), logit_rows)
    where = "the memory given"
    if available is None:
        available, where = machine_memory(device)
    est = Estimate(cfg.model.trainable, shape, tokens, precision, device.type, memory, available, where, [])
    if not est.fits:
        est.levers = levers(cfg, shape, device, precision, checkpointing, logit_rows, available)
    return est


def levers(cfg, shape: Shape, device: torch.device, precision: str, checkpointing: bool | None, logit_rows: int | None,
           available: float) -> list[tuple[str, float]]:
    """The settings that lower the memory of this run, each with the total it gives alone (for
    the batch size: the largest micro-batch that fits in `available`)."""
    def total(tokens=None, prec=precision, ckpt=bool(checkpointing), s=shape, length=cfg.data.max_length) -> float:
        return footprint(s, tokens or cfg_tokens(cfg), length, prec, ckpt, logit_rows).total

    out: list[tuple[str, float]] = []
    train, batch = cfg.train, cfg.train.batch_size
    smaller = [b for b in (batch // 2**k for k in range(1, batch.bit_length())) if b and batch % b == 0]
    if smaller and cfg_tokens(cfg, batch_size=smaller[-1]) < cfg_tokens(cfg):
        # the largest micro-batch that fits, else the smallest there is
        b = next((b for b in smaller if total(cfg_tokens(cfg, batch_size=b)) <= FIT_SHARE * available), smaller[-1])
        out.append((f"train.batch_size={b} train.grad_accum={train.grad_accum * batch // b}  (same {batch * train.grad_accum} examples per step)",
                     total(cfg_tokens(cfg, batch_size=b))))
    if shape.trainable_params > 0.5 * shape.total_params:
        r = cfg.model.lora.r
        adapters = sum(r * (i + o) for i, o in shape.block_linears)
        lora = replace(shape, trainable_params=adapters, stored_blocks=shape.blocks, lora_dropout=cfg.model.lora.dropout > 0)
        out.append((f"model.trainable=lora  (adapters of rank {r}: about {count(adapters)} trainable parameters)", total(s=lora)))
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
    if precision == "fp32" and native:
        out.append(("train.precision=bf16", total(prec="bf16")))
    if checkpointing is False:
        out.append(("train.gradient_checkpointing=true  (about a third more compute)", total(ckpt=True)))
    if cfg.data.max_length >= 16:
        half = cfg.data.max_length // 2
        out.append((f"data.max_length={half}  (longer texts are cut)", total(cfg_tokens(cfg, max_length=half), length=half)))
    now = total()
    return [(text, t) for text, t in out if t < now]


def size(n: float) -> str:
    """Bytes as KB, MB or GB (2**10, 2**20, 2**30).

    >>> size(3 * 2**20), size(1.5 * 2**30), size(110_000)
    ('3 MB', '1.50 GB', '107 KB')
    """
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def count(n: int) -> str:
    """A parameter count as K, M or B.

    >>> count(134_515_008), count(73_728)
    ('134.5M', '73.7K')
    """
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def format_estimate(est: Estimate) -> list[str]:
    """The short summary: parameters, memory by part against the machine's, and a warning with the
    levers when the run does not fit."""
    s, m = est.shape, est.memory
    lines = [
        f"estimate: {count(s.total_params)} parameters, {count(s.trainable_params)} trainable ({est.policy}); "
        f"micro-batch of up to {est.tokens} tokens, {est.precision} on {est.device}",
        f"memory: weights {size(m.weights)} + gradients {size(m.gradients)} + optimizer {size(m.optimizer)}"
        + (f" + autocast {size(m.autocast)}" if m.autocast else "")
        + f" + activations {size(m.activations)} + runtime {size(m.runtime)} = {size(m.total)} of {size(est.available)} ({est.where})",
    ]
    if not est.fits:
        lines.append(f"warning: this run needs about {size(m.total)}, more than {FIT_SHARE:.0%} of {size(est.available)} ({est.where}); "
                     "each of these lowers it (combine them):")
        lines += [f"  {text}  -> {size(t)}" for text, t in est.levers]
    return lines


def log_estimate(cfg, model: nn.Module, device: torch.device, precision: str, log=print, checkpointing: bool | None = None,
                 logit_rows: int | None = None) -> Estimate:
    """The summary at the start of a run (recipes call this once the model is built)."""
    est = estimate_memory(cfg, model, device, precision, checkpointing=checkpointing, logit_rows=logit_rows)
    for line in format_estimate(est):
        log(line)
    return est


@dataclass
class Timing:
    """Measured on this machine; seconds."""

    steps_measured: int
    step_seconds: float  # mean time of one optimizer step
    total_steps: int
    evaluations: int
    eval_seconds: float  # one validation pass with its checkpoint writes
    fixed_seconds: float  # everything but the loop: loading, data, test and train scoring, export
    peak_memory_mb: float

    @property
    def whole_seconds(self) -> float:
        return self.fixed_seconds + self.total_steps * self.step_seconds + max(self.evaluations, 1) * self.eval_seconds


def measure_time(cfg, steps: int = 5) -> Timing:
    """Run the real recipe for `steps` optimizer steps in a scratch folder (removed afterwards) and
    time it. The steps are timed by an optimizer-step hook (the mean interval between steps: step
    times are skewed by the few long texts, and the median of a handful of steps, used before,
    predicted the demo's training at 0.4-0.6x of its measured time);
    the rest of the loop (one validation with its checkpoint writes, and the first step's extra)
    is `eval_seconds`, and what the run does outside the loop is `fixed_seconds`, the same in the
    real run since the data and scoring are. The whole run is then

        fixed + total_steps x step + evaluations x eval

    with total_steps and evaluations (counted at least once: the first step's extra and the last
    checkpoint are in `eval_seconds`) from the plan the real run would make, its split sizes read
    from the scratch run's data_report.json. Early stopping can only make the run shorter."""
    stamps: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tunelab-estimate-") as scratch:
        run_cfg = cfg.model_copy(deep=True)
        run_cfg.output_dir = str(Path(scratch) / "run")
        run_cfg.train.max_steps, run_cfg.train.eval_every, run_cfg.train.save_every = steps, steps, None
        hook = register_optimizer_step_post_hook(lambda *_: stamps.append(time.perf_counter()))
        try:
            summary = recipe(cfg.task)(run_cfg, log=lambda *_: None)
        finally:
            hook.remove()
        report = json.loads((Path(run_cfg.output_dir) / "data_report.json").read_text(encoding="utf-8"))
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    step = statistics.fmean(intervals) if intervals else summary["train_seconds"] / max(summary["steps"], 1)
    sizes, skipped = report["sizes"], report.get("too_long_skipped", {})
    plan = plan_steps(sizes["train"] - skipped.get("train", 0), cfg.train.model_copy(update={"max_tokens_per_micro_batch": None}))
    every = plan.steps_per_epoch if cfg.train.eval_every == "epoch" else int(cfg.train.eval_every)
    evaluations = math.ceil(plan.total_steps / every) if sizes["validation"] - skipped.get("validation", 0) > 0 else 0
    return Timing(summary["steps"], step, plan.total_steps, evaluations, max(0.0, summary["train_seconds"] - summary["steps"] * step),
                  max(0.0, summary["total_seconds"] - summary["train_seconds"]), summary["peak_memory_mb"])


def format_timing(t: Timing, est: Estimate | None = None) -> list[str]:
    """The time of the whole run, by part, and the measured peak memory next to the formula's."""
    def secs(x: float) -> str:
        return f"{x:.2f}s" if x < 10 else duration(x)

    lines = [f"time: {t.steps_measured} steps measured on this machine, {secs(t.step_seconds)} a step -> {t.total_steps} steps "
             f"{secs(t.total_steps * t.step_seconds)} + {t.evaluations} validations x {secs(t.eval_seconds)} + loading, scoring and export "
             f"{secs(t.fixed_seconds)} = about {duration(t.whole_seconds)} for the whole run"]
    if est is not None:
        lines.append(f"measured peak memory over those steps {size(t.peak_memory_mb * 2**20)} (the formula: {size(est.memory.total)})")
    return lines


def estimate_config(cfg, available: int | None = None) -> Estimate:
    """`tunelab estimate` without --measure: the run's model on the meta device, the device and
    precision the run would get, and the memory estimate."""
    folder = resolve_model(cfg.model.name)
    model, costs = meta_model(cfg, folder)
    accelerator, precision = make_accelerator(cfg.train)
    return estimate_memory(cfg, model, accelerator.device, precision, available, **costs)
