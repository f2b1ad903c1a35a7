"""Variable-length ("varlen") attention for packed rows, registered as a transformers attention
implementation named `tunelab_varlen`.

A packed micro-batch is one row holding several examples back to back (`tunelab.sft.collate.pack`).
The collator also gives the example boundaries as cumulative lengths (`cu_seq_lens`, int32, one more
than the examples) and the longest example (`max_length`); the model receives them as the
`cu_seq_lens_q/k`, `max_length_q/k` keyword arguments that transformers already routes from the
model's forward down to every attention call (the same keywords its FlashAttention-2 path reads).
With them, attention runs per example and never across a boundary, and no mask is ever built.

Why this module: torch ships a FlashAttention varlen kernel (`torch.nn.attention.varlen.varlen_attn`,
torch >= 2.10, CUDA, bf16/fp16) that needs no compile step and no extra package, while the two
packed paths transformers offers out of the box each cost more than the padding they remove on the
H200 (docs/benchmarks.md): `sdpa` gets a dense (T, T) block mask and falls back to a slow kernel,
and `flex_attention` is slow uncompiled and recompiles per mask. transformers' own varlen path
(`flash_attention_2`) needs the flash-attn package, which has no wheel for the lent machine.

Where the kernel cannot run (CPU, fp32, attention dropout, a padded batch without boundaries) the
same function computes the identical result with stock `scaled_dot_product_attention`: one call
per example for packed rows (exact; this is what CI runs, so the packed-equals-padded tests cover
the bookkeeping on CPU), or transformers' sdpa path for padded batches with their mask. Causal
models attend to the left (`window_size=(-1, 0)`), bidirectional ones (a classifier with the
causal mask off, encoders) to the whole example, sliding-window layers to their window.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

NAME = "tunelab_varlen"


def kernel_available(device_type: str) -> bool:
    """Whether torch's FlashAttention varlen kernel can be used here (CUDA and torch >= 2.10)."""
    if device_type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def attention_dropout(config) -> float:
    """The attention dropout a model's config asks for in training (0.0 when none): the varlen
    kernel has none, so a packed model with it would run `_per_example`, one small call per
    example (measured 0.22x of padded for GPT-2's attn_pdrop 0.1 on the H200)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return max(float(getattr(text, name, 0.0) or 0.0) for name in ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob"))


def register() -> str:
    """Make `tunelab_varlen` a transformers attention implementation (idempotent); returns NAME."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, _mask)
    return NAME


def _mask(*args, attention_mask=None, **kwargs):
    """No mask for unpadded rows (packed rows carry their boundaries as cu_seq_lens); the sdpa
    mask of a padded batch otherwise (validation and generation batch padded rows)."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, sliding_window=None, **kwargs):
    """The transformers attention interface: query (B, Hq, T, D), key/value (B, Hkv, T, D) ->
    (output (B, T, Hq, D), None)."""
    cu = kwargs.get("cu_seq_lens_q")
    causal = bool(getattr(module, "is_causal", True))
    if cu is None or attention_mask is not None or query.shape[2] != key.shape[2]:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    assert query.shape[0] == 1, "packed rows come one per micro-batch"
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D)
    if q.is_cuda and torch.is_autocast_enabled("cuda"):
        # As sdpa does under autocast: rotary embeddings leave q and k in the fp32 of the residual
        # stream, the kernel takes the autocast dtype.
        half = torch.get_autocast_dtype("cuda")
        q, k, v = (t.to(half) for t in (q, k, v))
    # transformers' windows: causal q - k < w, bidirectional |q - k| <= w (masking_utils overlays).
    if not sliding_window:
        window = (-1, 0) if causal else (-1, -1)
    else:
        w = int(sliding_window)
        window = (w - 1, 0) if causal else (w, w)
    max_q = int(kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max()))
    use_kernel = q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and not (module.training and dropout > 0)
    out = _flash(q, k, v, cu, max_q, scaling, window) if use_kernel else _per_example(q, k, v, cu, scaling, window, dropout if module.training else 0.0)
    return out.unsqueeze(0), None


def _flash(q, k, v, cu, max_q: int, scale, window) -> torch.Tensor:
    """torch's FlashAttention varlen kernel; grouped-query heads expanded when the installed torch
    cannot do it itself (`enable_gqa` came in torch 2.12)."""
    from torch.nn.attention.varlen import varlen_attn

    kwargs = {"scale": scale, "window_size": window}
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in inspect.signature(varlen_attn).parameters:
            kwargs["enable_gqa"] = True
        else:
            k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    cu = cu.to(device=q.device, dtype=torch.int32)
    return varlen_attn(q, k, v, cu, cu, max_q, max_q, **kwargs)


def _per_example(q, k, v, cu, scale, window, dropout: float) -> torch.Tensor:
    """The reference: stock sdpa over each example's own slice, (T, H, D) in and out."""
    outs = []
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        qi, ki, vi = (t[start:end].transpose(0, 1) for t in (q, k, v))  # (H, n, D)
        n = end - start
        mask = None
        if window != (-1, 0) and window != (-1, -1):
            i = torch.arange(n, device=q.device)
            dist = i[:, None] - i[None, :]
            mask = (dist <= window[0]) & ((dist >= 0) if window[1] == 0 else (dist >= -window[0]))
        causal = window == (-1, 0)
        o = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=scale,
                                           enable_gqa=qi.shape[0] != ki.shape[0])
        outs.append(o.transpose(0, 1))
    return torch.cat(outs, dim=0)

