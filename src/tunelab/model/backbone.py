"""Load a pretrained backbone and its tokenizer, and find the parts that the training choices touch.

A backbone is the transformers base model (`AutoModel`: LlamaModel, GPT2Model, BertModel, ...),
without any LM or task head. tunelab never subclasses it: the class head, pooling and LoRA are
put around or into it (see `tunelab.classify.model` and `tunelab.model.lora`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tunelab.errors import TunelabError

# model_type values of BERT-style encoders; everything else is treated as a decoder (GPT/Llama style).
ENCODER_TYPES = {"bert", "mpnet", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra", "modernbert", "camembert", "albert"}
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")


def is_encoder(config) -> bool:
    return getattr(config, "model_type", "") in ENCODER_TYPES


def hidden_size(config) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(text, "hidden_size", None) or getattr(text, "n_embd"))


def load_tokenizer(folder: str | Path):
    """The backbone's tokenizer, with a pad token (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise TunelabError(f"{folder}: cannot load a tokenizer ({err})") from None
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise TunelabError(f"{folder}: the tokenizer has neither a pad nor an end-of-sequence token")
        tok.pad_token = tok.eos_token
    return tok


def load_backbone(folder: str | Path, dtype: torch.dtype = torch.float32, lm_head: bool = False) -> nn.Module:
    """The one loader: `AutoModel` (a backbone for a class head) or, with `lm_head`,
    `AutoModelForCausalLM` (SFT), from a local folder in `dtype` (fp32 by default, so
    bf16-stored assets train in full precision), quietly (unused LM-head weights are expected)."""
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return (AutoModelForCausalLM if lm_head else AutoModel).from_pretrained(str(folder), dtype=dtype)
    except (OSError, ValueError) as err:
        what = "a causal language model" if lm_head else "a transformers model"
        raise TunelabError(f"{folder}: cannot load {what} ({err})") from None
    finally:
        hf_logging.set_verbosity(previous)


def transformer_blocks(backbone: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the longest nn.ModuleList in the model (layers, h, encoder.layer)."""
    best = None
    for _, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and (best is None or len(module) > len(best)):
            best = module
    assert best is not None, "backbone without a ModuleList of blocks"
    return best


def final_norm(backbone: nn.Module) -> nn.Module | None:
    """The norm applied after the last block (decoders), if the backbone has one."""
    for name in FINAL_NORM_NAMES:
        module = getattr(backbone, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def set_causal(backbone: nn.Module, causal: bool) -> None:
    """Switch a decoder between causal and bidirectional attention.

    transformers builds the mask from `config.is_causal` (False -> a bidirectional padding mask)
    and SDPA falls back to each attention module's `is_causal` flag when no mask is needed, so
    both are set.
    """
    backbone.config.is_causal = causal
    for module in backbone.modules():
        if hasattr(module, "is_causal") and isinstance(module.is_causal, bool):
            module.is_causal = causal


def load_weights(path: str | Path) -> dict:
    """The tensors of a safetensors file, or a TunelabError naming it when it is missing, empty
    or cut short (safetensors' own error says only "incomplete metadata")."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"{path}: missing; the model folder is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise TunelabError(f"{path}: damaged or incomplete weights file ({err}); copy or export it again") from None


def load_config_of(folder: str | Path):
    """transformers' AutoConfig of a model folder, with a TunelabError naming it when config.json
    is missing or malformed."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise TunelabError(f"{folder}/config.json: cannot be read ({str(err).splitlines()[0]})") from None


def meta_backbone(folder: str | Path, lm_head: bool = False) -> nn.Module:
    """The model `load_backbone` would load, built from config.json alone on the meta device:
    every parameter with its shape and dtype (fp32, as loaded), no weights read or allocated.
    For counting parameters and estimating memory before a run (`tunelab estimate`)."""
    from transformers import AutoModel, AutoModelForCausalLM

    config = load_config_of(folder)
    with torch.device("meta"):
        return (AutoModelForCausalLM if lm_head else AutoModel).from_config(config, dtype=torch.float32)
