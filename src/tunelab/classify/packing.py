"""Padding-free packed micro-batches: how each backbone family keeps attention inside each example.

A packed micro-batch (`collate.PackingCollator`) is one row (1, T) holding all its examples back
to back, T the sum of their lengths: `position_ids` restart at 0 for every example and
`segment_ids` number the examples 1, 2, 3, ... No padding is computed, and the logits, loss and
gradients equal those of the padded batch if (a) every token gets the position it has when its
example is alone and (b) no token attends to a token of another example. (b) is where the
families differ; each path below was checked against transformers 5.23 by
tests/test_classify_packing.py (packed == padded, and changing one example leaves the others' logits
unchanged):

- Decoders with the causal mask on (llama, qwen2, gemma3_text, gpt2): no attention mask is
  passed, only the packed `position_ids`. transformers' causal mask builder then finds the
  restarts (`masking_utils.find_packed_sequence_indices`: wherever the position does not grow by
  one) and builds a block-causal mask, Gemma 3's sliding-window layers included. This is the path
  transformers maintains for packed training.
- Decoders with the causal mask off and every encoder: transformers' bidirectional mask builder
  ignores `position_ids`, so left alone every token would see the whole row. We build the mask
  ourselves: block-diagonal over the segments, (1, 1, T, T), in the format the attention
  implementation takes. Every family here passes a ready 4D mask through unchanged: boolean
  (True = attend) for sdpa, additive float (0 or the dtype's minimum) for eager (MPNet's attention
  always adds the mask to its scores). Families with sliding-window layers (Gemma 3, Qwen 2 when
  the window is on) take a dict {layer type: mask}: a plain tensor would give their sliding layers
  full attention. Within an example the window is the one transformers applies to the example
  alone: |query - key| <= window for a bidirectional decoder.
- Positions: decoders and BERT-style encoders count from 0; RoBERTa-style embeddings (roberta,
  xlm-roberta, camembert, mpnet) count from padding_idx + 1, which is what they compute for an
  unpadded example. MPNet's relative position bias uses index distances, equal to position
  distances inside an example (and masked across them).

- Varlen (CUDA, `use_varlen`): where torch's FlashAttention varlen kernel runs
  (`tunelab.model.varlen`), the families in VARLEN_FAMILIES switch to the `tunelab_varlen`
  attention: no mask at all, the example boundaries go down to every attention call as
  `cu_seq_lens` (built by the collator), the window per layer as transformers passes it. The dense
  (T, T) masks above make sdpa fall back to a slower kernel and cost O(T^2) memory; measured on the
  H200 in docs/benchmarks.md. MPNet (no attention interface in transformers) keeps its mask.

Anything else is not packed: other families (ModernBERT's local attention and unpadding, DeBERTa's
own relative-attention masks, ... not verified), attention implementations other than sdpa and
eager (flash attention and flex attention not verified here), Gemma 3 with
`use_bidirectional_attention`. `PackingPlan.problem` says why, and the recipe pads those batches
instead and logs it (see `resolve_packing`): a wrong guess would silently let examples attend to
each other, with no error, only worse models.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from tunelab.model.backbone import is_encoder

# Decoders whose packed paths were verified; those in MASK_DICT_FAMILIES take {layer type: mask}.
PACKED_DECODERS = {"llama", "qwen2", "gemma3_text", "gpt2"}
MASK_DICT_FAMILIES = {"qwen2", "gemma3_text"}
# Encoders whose packed path (4D mask + explicit positions) was verified, with where positions start
# ("pad+1": RoBERTa-style embeddings, padding_idx + 1).
PACKED_ENCODERS = {"bert": 0, "electra": 0, "albert": 0, "distilbert": 0, "roberta": "pad+1", "xlm-roberta": "pad+1", "camembert": "pad+1", "mpnet": "pad+1"}
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")
# Families whose attention goes through transformers' attention interface with the forward's keyword
# arguments routed down to it, so `cu_seq_lens` reaches every layer (checked by the packed == padded
# tests with the varlen plan).
VARLEN_FAMILIES = {"llama", "qwen2", "gemma3_text", "gpt2", "bert", "roberta", "xlm-roberta", "camembert", "electra", "albert", "distilbert"}


@dataclass(frozen=True)
class PackingPlan:
    """How one backbone runs a packed row; `problem` (why it cannot) is None when it can."""

    problem: str | None
    mode: str = ""  # "positions": transformers' block-causal mask from position_ids; "mask": our 4D mask; "varlen": boundaries
    attention: str = ""  # the attention implementation the plan was made for
    position_start: int = 0  # added to the restarting positions (RoBERTa-style embeddings)
    sliding_window: int | None = None  # for the "sliding_attention" entry of a mask dict
    mask_dict: bool = False
    decoder: bool = True  # decoders also get use_cache=False

    def describe(self) -> str:
        if self.problem:
            return self.problem
        if self.mode == "positions":
            return f"block-causal mask built by transformers from the restarting position_ids ({self.attention})"
        if self.mode == "varlen":
            return f"varlen attention over each example's own tokens, no mask ({self.attention})"
        fmt = "boolean" if self.attention == "sdpa" else "additive"
        per_layer = " per layer type (sliding window inside each example)" if self.sliding_window is not None else ""
        return f"block-diagonal {fmt} 4D mask{per_layer} ({self.attention})"


def packing_plan(backbone, causal: bool) -> PackingPlan:
    """Whether and how `backbone` (a transformers base model, causal mask `causal` for decoders)
    can run packed rows with each example attending only to itself."""
    config = backbone.config
    family = getattr(config, "model_type", "")
    attention = getattr(config, "_attn_implementation", None) or "eager"
    encoder = is_encoder(config)
    if family not in (PACKED_ENCODERS if encoder else PACKED_DECODERS):
        return PackingPlan(f"packing is not verified for {family or 'this'} models (verified: {', '.join(sorted(PACKED_DECODERS | set(PACKED_ENCODERS)))})")
    if attention not in ATTENTION_IMPLEMENTATIONS:
        return PackingPlan(f"packing is not verified with attention implementation {attention!r} (verified: {', '.join(ATTENTION_IMPLEMENTATIONS)})")
    if getattr(config, "use_bidirectional_attention", False):
        return PackingPlan("packing is not verified for use_bidirectional_attention models")
    if not encoder and causal:
        return PackingPlan(None, "positions", attention)
    start = PACKED_ENCODERS.get(family, 0)
    if start == "pad+1":
        start = int(backbone.embeddings.padding_idx) + 1
    layer_types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None) if "sliding_attention" in layer_types else None
    if window is not None and family not in MASK_DICT_FAMILIES:
        return PackingPlan(f"{family} has sliding-window layers but takes one mask for all layers")
    return PackingPlan(None, "mask", attention, start, window, family in MASK_DICT_FAMILIES, decoder=not encoder)


def block_mask(segment_ids: torch.Tensor, position_ids: torch.Tensor, attention: str, dtype: torch.dtype, window: int | None = None) -> torch.Tensor:
    """(B, 1, T, T) mask letting each token attend to every token of its own segment (and, with
    `window`, only to those at most `window` positions away). Boolean for sdpa, additive for eager.

    >>> block_mask(torch.tensor([[1, 1, 2]]), torch.tensor([[0, 1, 0]]), "sdpa", torch.float32)[0, 0].int().tolist()
    [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    """
    allowed = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    if window is not None:
        allowed = allowed & ((position_ids[:, :, None] - position_ids[:, None, :]).abs() <= window)
    allowed = allowed[:, None]  # (B, 1, T, T)
    if attention == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def segment_bounds(segment_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cu_seq_lens int32, longest segment) of a packed row (1, T): where each run of equal segment
    ids starts, plus T. The collator builds these on the host; this is for callers that pass only
    segment ids (one host sync).

    >>> cu, longest = segment_bounds(torch.tensor([[1, 1, 1, 2, 2, 0]]))
    >>> cu.tolist(), longest
    ([0, 3, 5, 6], 3)
    """
    _, counts = torch.unique_consecutive(segment_ids[0], return_counts=True)
    cu = torch.zeros(len(counts) + 1, dtype=torch.int32, device=segment_ids.device)
    cu[1:] = torch.cumsum(counts, 0)
    return cu, int(counts.max())


def varlen_plan(plan: PackingPlan, family: str) -> PackingPlan | None:
    """The plan with varlen attention instead of a mask, or None where the family is not verified."""
    if plan.problem or family not in VARLEN_FAMILIES:
        return None
    from tunelab.model.varlen import NAME

    return replace(plan, mode="varlen", attention=NAME, mask_dict=False)


def use_varlen(model, device: torch.device, log=print) -> bool:
    """On CUDA with torch's varlen kernel, switch a packed classifier (`TextClassifier`) to varlen
    attention (see the module docstring); True when switched. `restore_attention` undoes it.
    A model with attention dropout keeps its plan (the kernel has no dropout), with a log line."""
    from tunelab.model import varlen

    plan = varlen_plan(model.packing_plan, getattr(model.config, "model_type", ""))
    if plan is None or not varlen.kernel_available(device.type):
        return False
    if (p := varlen.attention_dropout(model.config)) > 0:
        log(f"data.packing: attention dropout {p:g} is on, which the varlen kernel cannot apply: packed rows keep the "
            f"{model.packing_plan.describe()} (slower than padded batches on a GPU; data.packing off, or the model's attention dropout 0)")
        return False
    varlen.register()
    _base(model.backbone).set_attn_implementation(plan.attention)
    model.plan_before_varlen, model.packing_plan = model.packing_plan, plan
    log(f"data.packing: {plan.describe()}")
    return True


def varlen_blocker(model, device: torch.device) -> str | None:
    """Why packed rows of this classifier cannot run on the varlen kernel here, or None when they
    can (what `use_varlen` checks, in words for `data.packing: auto`)."""
    from tunelab.model import varlen

    family = getattr(model.config, "model_type", "")
    if model.packing_plan.problem:
        return model.packing_plan.problem
    if varlen_plan(model.packing_plan, family) is None:
        return f"varlen attention is not verified for {family}"
    if not varlen.kernel_available(device.type):
        return "torch's varlen attention kernel is not available"
    if (p := varlen.attention_dropout(model.config)) > 0:
        return f"attention dropout {p:g}, which the varlen kernel cannot apply"
    return None


def restore_attention(model) -> None:
    """The attention implementation and plan the model had before `use_varlen` (before export: a
    saved config must name an implementation stock transformers knows)."""
    before = getattr(model, "plan_before_varlen", None)
    if before is not None:
        _base(model.backbone).set_attn_implementation(before.attention)
        model.packing_plan, model.plan_before_varlen = before, None


def _base(backbone):
    return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone


def packed_backbone_inputs(plan: PackingPlan, segment_ids: torch.Tensor, position_ids: torch.Tensor, dtype: torch.dtype,
                           cu_seq_lens: torch.Tensor | None = None, max_length: int | None = None) -> dict:
    """Keyword arguments (besides input_ids) for the backbone's forward on a packed row."""
    if plan.problem:
        raise ValueError(f"this model cannot run packed batches: {plan.problem}")
    if plan.mode == "varlen":
        if cu_seq_lens is None:
            cu_seq_lens, max_length = segment_bounds(segment_ids)
        extra = {"use_cache": False} if plan.decoder else {}
        return {"attention_mask": None, "position_ids": position_ids + plan.position_start, "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
                "max_length_q": int(max_length), "max_length_k": int(max_length), **extra}
    if plan.mode == "positions":
        return {"attention_mask": None, "position_ids": position_ids, "use_cache": False}
    full = block_mask(segment_ids, position_ids, plan.attention, dtype)
    mask = full
    if plan.mask_dict:
        mask = {"full_attention": full}
        if plan.sliding_window is not None:
            mask["sliding_attention"] = block_mask(segment_ids, position_ids, plan.attention, dtype, plan.sliding_window)
    extra = {"use_cache": False} if plan.decoder else {}
    return {"attention_mask": mask, "position_ids": position_ids + plan.position_start, **extra}


def resolve_packing(setting: str, device: torch.device, plan: PackingPlan, log=print, auto=None) -> bool:
    """data.packing (auto|on|off) with auto resolved by `auto` (a `tunelab.train.fastpath.AutoChoice`;
    None = off), then the model's plan applied: a model that cannot be packed is padded, with a log
    line saying why."""
    if setting == "auto":
        wanted = bool(auto and auto.packing)
        log(f"data.packing auto -> {'on' if wanted else 'off'}: {auto.why if auto else 'padded micro-batches'}")
    else:
        wanted = setting == "on"
    if not wanted:
        if setting == "off":
            log("data.packing off: padded micro-batches")
        return False
    if plan.problem:
        log(f"data.packing: falling back to padded micro-batches: {plan.problem}")
        return False
    log(f"data.packing on: each micro-batch is one padding-free row; attention isolated per example by a {plan.describe()}")
    return True
