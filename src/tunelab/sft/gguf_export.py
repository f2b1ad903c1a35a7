"""Write a fine-tuned causal LM as one GGUF file that llama.cpp and Ollama load.

    write_gguf(model, tokenizer, template, "out/assistant-f16.gguf", chat_template=hf_chat_template(template, tokenizer),
               quant="f16", name="assistant")

Used by `tunelab export RUN DIR --gguf f16|q8_0` (sft/export.py). Three parts, each its own
function: the architecture's hyperparameters (`_write_hparams`), the tensors under GGUF names
(`gguf_tensors`: names from gguf-py's own `TensorNameMap`, plus the two layout changes llama.cpp
expects: Llama's q/k rows interleaved for its rotary kernel, Gemma's norm weights stored as 1 + w),
and the tokenizer (`tokenizer_metadata`: vocabulary, merges, token types, special ids, the run's
chat template and its end-of-turn token as EOT, so llama.cpp stops where tunelab stops).

Families: the decoders tunelab ships (`FAMILIES`); anything else is refused by name before a byte
is written. Tokenizers: byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM) as llama.cpp's "gpt2" model,
and SentencePiece-style BPE with byte fallback (Llama 2, Gemma) as its "llama" model, with scores
from the merge order. `tunelab`'s own GGUF import (assets/build.py: `convert_gguf`, through
transformers) reads the file back; the tests check the round trip gives the same greedy tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tunelab.errors import TunelabError

# transformers model_type -> gguf-py architecture name (gguf.MODEL_ARCH_NAMES values)
FAMILIES = {"llama": "llama", "qwen2": "qwen2", "gemma3_text": "gemma3"}
QUANTS = ("f16", "q8_0")
FAMILY_NAMES = "Llama, Qwen2, Gemma 3 (text)"


def check_family(model_type: str):
    """The gguf-py architecture of a transformers model_type, or a TunelabError naming the supported ones."""
    import gguf

    if model_type not in FAMILIES:
        raise TunelabError(f"--gguf: model_type {model_type!r} is not supported; GGUF export covers {FAMILY_NAMES} "
                           f"(model_type {', '.join(FAMILIES)}); export an HF folder with --dtype instead")
    return next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == FAMILIES[model_type])


def _rope_theta(config, kind: str = "full_attention") -> float:
    """rope_theta from transformers 5's `rope_parameters` (per attention kind for Gemma 3)."""
    params = getattr(config, "rope_parameters", None) or {}
    params = params.get(kind, params)
    if params.get("rope_type", "default") != "default":
        raise TunelabError(f"--gguf: rope scaling {params.get('rope_type')!r} is not supported by this export (plain RoPE only)")
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _write_hparams(w, config, log) -> None:
    """The architecture keys llama.cpp reads for these families (gguf-py's writer names them)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(config.vocab_size)
    w.add_rope_freq_base(_rope_theta(config))
    if config.model_type == "gemma3_text":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_sliding_window(config.sliding_window)
        w.add_sliding_window_pattern([t == "sliding_attention" for t in config.layer_types])
        w.add_rope_freq_base_swa(_rope_theta(config, "sliding_attention"))
        for key in ("final_logit_softcapping", "attn_logit_softcapping"):
            if getattr(config, key, None):
                raise TunelabError(f"--gguf: Gemma 3 with {key}={getattr(config, key)} is not supported by this export")
        if config.query_pre_attn_scalar != head_dim:
            log(f"note: query_pre_attn_scalar {config.query_pre_attn_scalar} != head_dim {head_dim}; llama.cpp scales "
                "Gemma 3 attention by 1/sqrt(head_dim), so its outputs will differ from transformers'")
    else:
        w.add_rope_dimension_count(head_dim)
        if head_dim != config.hidden_size // heads:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)


def _interleave_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Llama q/k rows from HF's rotate-half order (per head: first halves, then second halves)
    to the pairwise order of llama.cpp's rotary kernel (x0, x_half, x1, x_half+1, ...).

    >>> _interleave_rotary(np.arange(4).reshape(4, 1), 1).ravel().tolist()
    [0, 2, 1, 3]
    """
    rows = w.shape[0]
    # (n_head, 2 halves, head_dim / 2, in) -> (n_head, head_dim / 2, 2, in)
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model, quant: str):
    """(GGUF name, array, ggml type) for every weight, in state-dict order; tied LM heads skipped
    (llama.cpp reuses token_embd, as the HF model does)."""
    import gguf
    import torch

    config = model.config
    name_map = gguf.get_tensor_name_map(check_family(config.model_type), config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TunelabError(f"--gguf: weight {hf_name} of this {config.model_type} model has no GGUF name; "
                               "the model is a variant this export does not know")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if config.model_type == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config.num_attention_heads if "attn_q" in name else config.num_key_value_heads
            data = _interleave_rotary(data, heads)
        if config.model_type == "gemma3_text" and name.endswith("norm.weight"):
            data = data + 1.0  # HF Gemma norms compute x * (1 + w); llama.cpp multiplies by the stored weight
        yield name, *_encode(data, quant)


def _encode(data: np.ndarray, quant: str):
    """1-D tensors (norms, biases) in F32, as llama.cpp keeps them; matrices in F16 or Q8_0 (rows
    whose length is not a multiple of the 32-value Q8_0 block stay F16)."""
    import gguf

    T = gguf.GGMLQuantizationType
    if data.ndim < 2:
        return data.astype(np.float32), T.F32
    if quant == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[T.Q8_0][0] == 0:
        return gguf.quantize(data, T.Q8_0), T.Q8_0
    return data.astype(np.float16), T.F16


# ---- tokenizer ----------------------------------------------------------------------------------


def _flatten(node: dict | None) -> list[dict]:
    """The steps of a tokenizers component (a Sequence's parts in order, else the one step)."""
    if not node:
        return []
    parts = node.get("pretokenizers") or node.get("normalizers")
    return [p for part in parts for p in _flatten(part)] if parts else [node]


def _pre_tokenizer(spec: dict) -> str:
    """llama.cpp's name for how this byte-level tokenizer splits text before BPE (its
    `tokenizer.ggml.pre`; llama.cpp refuses to load a file whose name it does not know, so these
    are spelled as llama-vocab.cpp spells them: GPT-2's is "gpt-2", not the tokenizer model "gpt2")."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    steps = _flatten(spec.get("pre_tokenizer"))
    kinds = [s["type"] for s in steps]
    splits = [s["pattern"].get("Regex") for s in steps if s["type"] == "Split"]
    if splits:  # named by the regex, as transformers' own GGUF reader maps the names back
        names = [n for n, regex in GGUF_PRE_TOKENIZER_SPLITS.items() if regex == splits[0]]
        preferred = [n for n in ("llama-bpe", "qwen2") if n in names]
        if names:
            return (preferred or names)[0]
    elif kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    elif kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    raise TunelabError(f"--gguf: this tokenizer's pre-tokenizer ({kinds or 'none'}) is not one llama.cpp names; "
                       "supported: GPT-2 style byte-level, SmolLM, Llama 3, Qwen2, and SentencePiece-style BPE")


def _vocabulary(tokenizer, vocab_size: int) -> list[str]:
    """Token strings by id, padded to the model's embedding rows ([PAD<id>], as llama.cpp names unused rows)."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise TunelabError(f"--gguf: the tokenizer has ids up to {max(by_id)} but the model only {vocab_size} embedding rows")
    return [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]


def tokenizer_metadata(tokenizer, vocab_size: int) -> dict:
    """What llama.cpp needs to rebuild the tokenizer: model, pre, tokens, types, merges (and
    scores for SentencePiece-style), special ids and whether BOS is added."""
    import gguf

    from tunelab.sft.tokenize import special_prefix

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise TunelabError(f"--gguf: a {model.get('type')} tokenizer is not supported; GGUF export covers BPE tokenizers")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    tokens = _vocabulary(tokenizer, vocab_size)
    byte_level = any(s["type"] == "ByteLevel" for s in _flatten(spec.get("pre_tokenizer")))
    T = gguf.TokenType
    added = {tok.content: tok.special for tok in tokenizer.added_tokens_decoder.values()}

    def kind(i: int, t: str) -> int:
        if t in added:
            return (T.CONTROL if added[t] else T.USER_DEFINED).value
        if t == f"[PAD{i}]":
            return T.UNUSED.value
        if i == tokenizer.unk_token_id:
            return T.UNKNOWN.value
        if not byte_level and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            return T.BYTE.value
        return T.NORMAL.value

    meta = {"tokens": tokens, "types": [kind(i, t) for i, t in enumerate(tokens)], "merges": merges,
            "add_bos": bool(special_prefix(tokenizer)),
            "ids": {k: getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "unk", "pad")}}
    if byte_level:
        return {**meta, "model": "gpt2", "pre": _pre_tokenizer(spec)}
    if not model.get("byte_fallback"):
        raise TunelabError("--gguf: a BPE tokenizer that is neither byte-level nor SentencePiece-style (byte fallback) is not supported")
    # llama.cpp's SentencePiece tokenizer merges the adjacent pair whose result scores highest:
    # scoring each merge result by its rank reproduces the BPE merge order.
    rank = {m.replace(" ", ""): -float(r + 1) for r, m in reversed(list(enumerate(merges)))}
    floor = -float(len(merges) + 1)
    scores = [0.0 if len(t) == 1 or kind(i, t) != T.NORMAL.value else rank.get(t, floor) for i, t in enumerate(tokens)]
    prefix = any(s["type"] == "Metaspace" and s.get("prepend_scheme", "always") != "never" for s in _flatten(spec.get("pre_tokenizer"))) \
        or any(s["type"] == "Prepend" for s in _flatten(spec.get("normalizer")))
    return {**meta, "model": "llama", "pre": "default", "scores": scores, "add_space_prefix": prefix}


def _write_tokenizer(w, tok: dict, chat_template: str, eot_id: int | None) -> None:
    w.add_tokenizer_model(tok["model"])
    w.add_tokenizer_pre(tok["pre"])
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    if tok["merges"]:
        w.add_token_merges(tok["merges"])
    if "scores" in tok:
        w.add_token_scores(tok["scores"])
        w.add_add_space_prefix(tok["add_space_prefix"])
    for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id), ("pad", w.add_pad_token_id)):
        if tok["ids"][key] is not None:
            add(tok["ids"][key])
    if eot_id is not None:
        w.add_eot_token_id(eot_id)
    w.add_add_bos_token(tok["add_bos"])
    w.add_add_eos_token(False)
    w.add_chat_template(chat_template)


def write_gguf(model, tokenizer, template, path: str | Path, *, chat_template: str, quant: str, name: str,
               licence: str | None = None, log=print) -> Path:
    """One GGUF file of `model` (a plain causal LM, LoRA merged) with the tokenizer and
    `chat_template` (the run's template as HF Jinja, `export.hf_chat_template`); the template's
    end-of-turn token (<|im_end|>, <end_of_turn>) is EOT, so llama.cpp stops there."""
    import gguf

    from tunelab.sft.generate import stop_token_ids

    if quant not in QUANTS:
        raise TunelabError(f"--gguf {quant}: expected one of {', '.join(QUANTS)}")
    config = model.config
    arch = check_family(config.model_type)
    tok = tokenizer_metadata(tokenizer, config.vocab_size)
    eot = [i for i in stop_token_ids(template, tokenizer) if i != tokenizer.eos_token_id]
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    try:
        w.add_name(name)
        if licence:
            w.add_license(licence)
        w.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _write_hparams(w, config, log)
        _write_tokenizer(w, tok, chat_template, eot[0] if eot else None)
        for tensor_name, data, ggml_type in gguf_tensors(model, quant):
            w.add_tensor(tensor_name, data, raw_dtype=ggml_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return Path(path)
