"""The SFT objective: summed token cross-entropy over the answer tokens of a causal LM.

    loss_sum, n_targets = sft_loss(model, batch)
    # the loop: total = sum of n_targets over the accumulation group's micro-batches;
    # (loss_sum / total).backward() for each, so every target token weighs the same.

Averaging per micro-batch and then over micro-batches (the well-known gradient-accumulation
bug) overweights tokens of short batches; returning sums lets the loop normalise once.

Full logits are never materialised. A (tokens x vocabulary) fp32 logit tensor is the largest
thing in an SFT step (8k tokens x 256k Gemma vocabulary = 8 GiB), and most positions are prompt
tokens that are never scored. So the model runs up to its LM head, the head is handed an empty
slice (a forward pre-hook keeps the final hidden states instead), and the head is applied here
to the target positions alone, `CE_CHUNK` rows at a time, with an fp32 cross-entropy per chunk
and the chunk losses summed. When there is more than one chunk each chunk is checkpointed
(recomputed in the backward pass; the RNG state is kept for it only when the head has active
dropout, e.g. LoRA on the LM head: a CUDA graph capture refuses to read it), so at most one chunk's
logits are alive at any time. This is
plain torch on purpose: no fused-kernel package (Liger, flash-attn's CE, ...) is installed on
the target GPU machine, and the chunked head needs none.

The hook sits on the head module itself, so every wrapper the loop puts around the model (DDP,
accelerate's autocast, PEFT) still runs its own forward; the chunks run in the autocast state the
head saw. `head_is_plain` checks once per model that its logits really are head(hidden) (plus
Gemma's final soft-capping); a model that post-processes logits otherwise (Cohere's logit scale,
Granite's logit scaling, ...) takes the plain path: logits of the target positions only
(`logits_to_keep`), as before.

Packing (`tunelab.sft.collate.pack`) needs two model-side choices, made once per run by the
recipe: `packed_attention` (which attention kernel) and `packing_isolates` (does this model,
in this transformers version, keep packed examples apart at all).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunelab.sft.collate import pack, target_index
from tunelab.sft.tokenize import IGNORE

CE_CHUNK = 4096  # target positions per LM-head chunk: 4096 x 256k vocabulary x fp32 = 4 GiB at most


def _inner(model):
    """The transformers causal LM under DDP, torch.compile and PEFT wrappers."""
    inner = getattr(model, "module", model)  # DDP
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile of the whole model
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PEFT


def _takes_logits_to_keep(model) -> bool:
    """Whether the causal LM under any wrappers (DDP, PEFT) accepts `logits_to_keep`."""
    import inspect

    return "logits_to_keep" in inspect.signature(_inner(model).forward).parameters


def _model_inputs(batch: dict) -> dict:
    """Forward arguments of a padded batch (attention_mask) or a packed one (position_ids, no mask)."""
    inputs = {"input_ids": batch["input_ids"], "use_cache": False}
    if "position_ids" in batch:
        inputs["position_ids"] = batch["position_ids"]  # attention_mask stays None: the packed mask comes from these
        if "cu_seq_lens" in batch:  # the boundaries varlen attention reads (other kernels ignore them)
            inputs.update(cu_seq_lens_q=batch["cu_seq_lens"], cu_seq_lens_k=batch["cu_seq_lens"],
                          max_length_q=batch["max_length"], max_length_k=batch["max_length"])
    else:
        inputs["attention_mask"] = batch["attention_mask"]
    return inputs


def _softcap(config) -> float | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "final_logit_softcapping", None)


def _head_logits(head, hidden: torch.Tensor, cap: float | None) -> torch.Tensor:
    logits = head(hidden)
    if cap:  # Gemma 2/3: in the order the model applies it
        logits = torch.tanh(logits / cap) * cap
    return logits


class _CaptureHead:
    """Forward pre-hook for the LM head: keeps its input (the final hidden states) and the autocast
    state it runs in; with `skip`, hands the head an empty slice so that it computes no logits."""

    def __init__(self, skip: bool):
        self.skip, self.hidden, self.autocast = skip, None, None

    def __call__(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["input"]
        device = hidden.device.type
        self.hidden = hidden
        self.autocast = {"device_type": device, "enabled": torch.is_autocast_enabled(device), "dtype": torch.get_autocast_dtype(device)}
        if not self.skip:
            return None
        empty = hidden[..., :0, :]
        return ((empty, *args[1:]), kwargs) if args else (args, {**kwargs, "input": empty})


@torch.no_grad()
def head_is_plain(model) -> bool:
    """Whether the model's logits are exactly its output embedding applied to the final hidden
    states (then Gemma's soft-capping, if configured): checked once on four tokens, remembered on
    the model. Only then may `sft_loss` apply the head itself."""
    inner = _inner(model)
    known = getattr(inner, "_tunelab_plain_head", None)
    if known is not None:
        return known
    plain = False
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Module):
        capture = _CaptureHead(skip=False)
        handle = head.register_forward_pre_hook(capture, with_kwargs=True)
        was_training = inner.training
        inner.eval()
        try:
            device = next(inner.parameters()).device
            with torch.autocast(device.type, enabled=False):
                vocab = inner.get_input_embeddings().num_embeddings
                ids = (torch.arange(4, device=device)[None] + 3) % vocab  # past the usual pad/eos/bos ids
                logits = inner(input_ids=ids, use_cache=False).logits
                if capture.hidden is not None:
                    mine = _head_logits(head, capture.hidden, _softcap(inner.config))
                    plain = mine.shape == logits.shape and torch.allclose(mine.float(), logits.float(), rtol=1e-5, atol=1e-6)
        except Exception:  # any failure means: do not take the short cut
            plain = False
        finally:
            handle.remove()
            inner.train(was_training)
    inner._tunelab_plain_head = plain
    return plain


def _has_active_dropout(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training for m in module.modules())


def _chunk_loss(head, cap, autocast: dict, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed fp32 cross-entropy of one chunk of (hidden state, target) rows."""
    with torch.autocast(**autocast):
        logits = _head_logits(head, rows, cap)  # (n, V)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def sft_loss(model, batch: dict, chunk_size: int = CE_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of the target tokens, and how many there are.

    The hidden state at position t is scored against the label at t+1 (the standard causal
    shift); labels of -100 (prompt, padding, each packed example's first token) are skipped.
    Returns (loss_sum, n_targets) as tensors; loss_sum is 0 (not NaN, with a gradient) when a
    batch has no targets. Works on padded (`collate`) and packed (`pack`) batches; the LM head
    runs on the target positions only, `chunk_size` rows at a time (see the module docstring).
    """
    labels = batch["labels"]  # (B, T)
    index = batch.get("target_index")  # (N,) flat positions b*T+t that predict a target
    index = target_index(labels) if index is None else index.to(labels.device)
    # fixed-shape rows pad target_index (pack(fixed_shapes=True)); their real count is given
    n_targets = batch["num_target_tokens"] if "num_target_tokens" in batch else torch.tensor(index.numel())
    targets = labels.reshape(-1).index_select(0, index + 1)  # (N,) the token each of them predicts
    inputs = _model_inputs(batch)
    if not head_is_plain(model):
        return _loss_from_logits(model, inputs, labels), n_targets

    inner = _inner(model)
    head, cap = inner.get_output_embeddings(), _softcap(inner.config)
    capture = _CaptureHead(skip=True)
    handle = head.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        model(**inputs)
    finally:
        handle.remove()
    hidden = capture.hidden  # (B, T, H): the head's input
    assert hidden is not None and hidden.shape[:2] == labels.shape, "the LM head did not see the final hidden states"
    rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index.to(hidden.device))  # (N, H)
    targets = targets.to(hidden.device)
    recompute = torch.is_grad_enabled() and rows.shape[0] > chunk_size
    random_head = recompute and _has_active_dropout(head)  # e.g. LoRA on the LM head: the recomputation needs the same masks
    loss_sum = None
    for start in range(0, max(rows.shape[0], 1), chunk_size):  # at least one chunk: no targets give 0 with a gradient
        args = (head, cap, capture.autocast, rows[start:start + chunk_size], targets[start:start + chunk_size])
        part = checkpoint(_chunk_loss, *args, use_reentrant=False, preserve_rng_state=random_head) if recompute else _chunk_loss(*args)
        loss_sum = part if loss_sum is None else loss_sum + part
    return loss_sum, n_targets


def _loss_from_logits(model, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
    """The plain path: the model's own logits, of the positions that predict a target in some row
    of the batch (`logits_to_keep`) where the model takes it."""
    targets = labels[:, 1:]  # (B, T-1)
    kwargs = {}
    if _takes_logits_to_keep(model):
        keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(1)  # (K,) positions t < T-1
        kwargs["logits_to_keep"] = keep
        targets = targets[:, keep]  # (B, K)
    out = model(**inputs, **kwargs)
    logits = out.logits if kwargs else out.logits[:, :-1, :]  # (B, K or T-1, V): predicts t+1
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),  # (B*K, V), fp32 for a stable softmax
        targets.reshape(-1).to(logits.device),  # (B*K,)
        ignore_index=IGNORE,
        reduction="sum",
    )


def packed_attention(config, device_type: str) -> list[str]:
    """The attention kernels for packed rows, best first: one place for the choice.

    On CUDA `tunelab_varlen` (`tunelab.model.varlen`: torch's FlashAttention varlen kernel, each
    example attends only to itself, no mask, no compile), then `flex_attention` (transformers'
    masking_utils turns the packed position_ids into a document BlockMask; measured slower than
    padding uncompiled, docs/benchmarks.md). Neither supports attention dropout in training, so a
    model configured with one (GPT-2's attn_pdrop) keeps `sdpa`. On a CPU `sdpa`: masking_utils
    gives it a dense boolean block-causal (1, 1, T, T) mask built from the same position_ids:
    exact, and cheap at CPU lengths. `sdpa` is always the last resort.
    """
    from tunelab.model import varlen

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if device_type != "cuda" or varlen.attention_dropout(config) > 0.0:
        return ["sdpa"]
    kernels = ["flex_attention", "sdpa"]
    if varlen.kernel_available(device_type) and getattr(text, "attn_logit_softcapping", None) is None:
        kernels.insert(0, varlen.register())
    return kernels


@torch.no_grad()
def packing_isolates(model, tolerance: float = 1e-3) -> bool:
    """Whether packed examples stay apart in this model: the logits of a 5-token example packed
    after a 7-token one (a `pack` row: position_ids restarting, the boundaries, no attention mask)
    equal its logits alone.

    This checks what packing relies on, in the transformers version installed and with the model's
    current attention implementation: that masking_utils builds the per-example mask from
    position_ids and that the positions restart (rotary and learned position embeddings alike).
    A model that mixes examples differs by tens of percent; float noise is about 1e-7. Any error
    counts as no.
    """
    inner = _inner(model)
    was_training = inner.training
    inner.eval()
    try:
        device = next(inner.parameters()).device
        vocab = inner.get_input_embeddings().num_embeddings
        g = torch.Generator().manual_seed(0)
        low = 3 if vocab > 3 else 0  # past the usual pad/eos/bos ids
        first, second = torch.randint(low, vocab, (1, 7), generator=g), torch.randint(low, vocab, (1, 5), generator=g)
        with torch.autocast(device.type, enabled=False):
            alone = inner(input_ids=second.to(device), use_cache=False).logits
            ids = torch.cat([first, second], dim=1)[0].tolist()
            row = {k: v.to(device) if torch.is_tensor(v) else v for k, v in pack([{"input_ids": ids[:7], "labels": ids[:7]},
                                                                                   {"input_ids": ids[7:], "labels": ids[7:]}]).items()}
            packed = inner(**_model_inputs(row)).logits[:, 7:]
        scale = alone.abs().max().clamp_min(1e-6)
        return bool(((packed.float() - alone.float()).abs().max() / scale) < tolerance)
    except Exception:  # a model that cannot run packed rows does not pack
        return False
    finally:
        inner.train(was_training)


class SftObjective:
    """Token cross-entropy on the answer tokens of a causal LM (`sft_loss`);
    `count` is the batch's target tokens, so an accumulated step is the mean over all of them."""

    def count(self, batch: dict) -> float:
        return float(batch["num_target_tokens"])

    def __call__(self, model, batch: dict) -> torch.Tensor:
        loss_sum, _ = sft_loss(model, batch)
        return loss_sum
