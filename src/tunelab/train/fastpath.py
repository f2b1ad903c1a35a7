"""What `auto` means for the GPU fast path's two switches, `data.packing` and `train.compile`.

One home for the rule, so the log, the config's documentation and the tests say the same thing.
Measured on the H200 (docs/benchmarks.md, issue 15; random-init real shapes, bf16, one run each
side by side with the stock path):

- Classification, packed rows on torch's varlen kernel against padded batches: 1.10-1.28x for a
  Qwen2-0.5B shape on texts of 128-1024 tokens (three runs), 0.85x for SmolLM2-135M on texts of
  10-120 tokens: packing alone pays for long texts only. Hence PACK_MIN_MEAN_TOKENS, between the
  two measured means (576 and 65 tokens).
- Classification, packed rows with compiled blocks, without the first step (the one-time compile,
  6-24 s): 46,012 tokens/s against padded 33,302 (Qwen2-0.5B, long texts) and 20,100 against
  14,149 (SmolLM2-135M, short texts), about 1.4x either way, so the compile is paid back after
  roughly 600 and 200 steps. Hence COMPILE_MIN_STEPS, above both.
- SFT: packed against padded 0.88-1.19x over four runs (noise) while each micro-batch was launched
  from Python; replayed as CUDA graphs (`tunelab.train.cuda_graphs`) packed rows run at 1.43x the
  padded path (Qwen2-0.5B full SFT, 100 steps: 43,160 against 30,180 tokens/s) and 2.9x the stock
  path (200 steps, full SFT; 2.5x for LoRA). So auto packs SFT rows where the graphs run (CUDA, the
  varlen kernel, one process, no gradient checkpointing), and pads elsewhere. Compiled blocks
  stay off for SFT: with graphs they reach 1.5x the graphs alone once compiled, but the compile
  (23 s for full SFT, 90 s for LoRA, and slower steps after it in a fresh process) is paid back only after
  thousands of steps.

Compiled blocks were measured with every layer training, so `auto` compiles only then (LoRA and
partly frozen models get packed rows by the same rule, without compile). Neither switch applies on a CPU; packing also yields to the frozen-prefix cache (which feeds
padded batches and saves far more: the frozen blocks run once), and needs the varlen kernel (a
packed row under a dense mask is slower than padding).
"""

from __future__ import annotations

from dataclasses import dataclass

PACK_MIN_MEAN_TOKENS = 256
COMPILE_MIN_STEPS = 1000


@dataclass(frozen=True)
class AutoChoice:
    """What `auto` resolves to for one run: pack, compile, and why, in words for the log."""

    packing: bool
    compile: bool
    why: str


def classification_auto(device_type: str, blocker: str | None, steps: int, mean_tokens: float, policy: str = "all",
                        graphs_asked: bool = False) -> AutoChoice:
    """`auto` for a classification run: `blocker` is why packed rows cannot run fast here (no varlen
    kernel, attention dropout, the frozen-prefix cache applies), None when they can; `steps` the
    planned optimizer steps; `mean_tokens` the mean training text length in tokens; `policy` the
    trainable policy (compiled blocks were measured with every layer training: LoRA and partly
    frozen models get packed rows by the same rule, not compiled blocks); `graphs_asked`:
    `train.cuda_graphs: on`, which replays packed rows only, so auto packs for it.

    >>> classification_auto("cuda", None, 2000, 60.0).compile, classification_auto("cuda", None, 300, 600.0).packing
    (True, True)
    >>> classification_auto("cuda", None, 300, 60.0).packing, classification_auto("cpu", None, 5000, 600.0).packing
    (False, False)
    >>> classification_auto("cuda", None, 300, 60.0, graphs_asked=True).packing
    True
    """
    if device_type != "cuda":
        return AutoChoice(False, False, f"{device_type}: padded micro-batches")
    if blocker:
        return AutoChoice(False, False, f"padded micro-batches ({blocker})")
    if graphs_asked and not (steps >= COMPILE_MIN_STEPS and policy == "all"):
        return AutoChoice(True, False, "packed rows (train.cuda_graphs on replays packed rows only)")
    if steps >= COMPILE_MIN_STEPS and policy == "all":
        return AutoChoice(True, True, f"packed rows and compiled blocks ({steps} steps >= {COMPILE_MIN_STEPS}: the one-time compile pays)")
    if steps >= COMPILE_MIN_STEPS or mean_tokens >= PACK_MIN_MEAN_TOKENS:
        no_compile = f"{steps} steps < {COMPILE_MIN_STEPS}" if steps < COMPILE_MIN_STEPS else f"trainable {policy}: compile measured for all only"
        return AutoChoice(True, False, f"packed rows ({steps} steps, texts of {mean_tokens:.0f} tokens on average; {no_compile}: no compile)")
    return AutoChoice(False, False, f"padded micro-batches (texts of {mean_tokens:.0f} tokens on average < {PACK_MIN_MEAN_TOKENS} "
                                    f"and {steps} steps < {COMPILE_MIN_STEPS})")


def sft_auto(device_type: str, graphs_blocker: str | None, varlen_kernel: bool) -> AutoChoice:
    """`auto` for an SFT run: packed rows when their micro-batches can be replayed as CUDA graphs
    (`graphs_blocker` is why not, None when they can) on the varlen kernel; padded otherwise.

    >>> sft_auto("cuda", None, True).packing, sft_auto("cuda", None, False).packing, sft_auto("cpu", None, True).packing
    (True, False, False)
    """
    if device_type != "cuda":
        return AutoChoice(False, False, "padded micro-batches")
    if graphs_blocker:
        return AutoChoice(False, False, f"padded micro-batches ({graphs_blocker}; without CUDA graphs packed rows measured within noise of padded ones)")
    if not varlen_kernel:
        return AutoChoice(False, False, "padded micro-batches (no varlen attention kernel for this model here)")
    return AutoChoice(True, False, "packed rows, each micro-batch replayed as a CUDA graph (2.9x the stock path on the H200)")
