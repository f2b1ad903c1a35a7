"""Save a trained classifier as a self-describing folder, and load it back.

`model/` always holds: `model.safetensors`, `config.json`, the tokenizer files and `tunelab.json`
(pooling, causal mask, labels, max length: what tunelab's loader needs).

When stock transformers computes the same function (a decoder pooling the last real token under
the causal mask), the folder *is* a transformers `*ForSequenceClassification` checkpoint: weights
named `<prefix>.*` and `score.weight`, `architectures`, `id2label` and `pad_token_id` in
config.json, so `AutoModelForSequenceClassification.from_pretrained(model_dir)` gives the same
logits. Otherwise the weights are named `backbone.*` / `head.*` and `tunelab.json` says that
tunelab's loader is needed. A LoRA run is merged into the base weights first; its adapter is saved
separately by PEFT (`adapter/`, loadable with `PeftModel.from_pretrained(AutoModel..., adapter)`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tunelab.classify.model import TextClassifier
from tunelab.data.io_atomic import staged_dir
from tunelab.errors import TunelabError
from tunelab.train.runtime import MODEL_META

FORMAT_VERSION = 1


def _hf_class(config):
    """transformers' *ForSequenceClassification class for this backbone config (or None)."""
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification._model_mapping[type(config)]
    except KeyError:
        return None


def merged_backbone(model: TextClassifier) -> torch.nn.Module:
    """The backbone with LoRA folded in (a plain transformers model either way)."""
    backbone = model.backbone
    if hasattr(backbone, "merge_and_unload"):
        import copy

        backbone = copy.deepcopy(backbone).merge_and_unload()
    return backbone


def export_classifier(model: TextClassifier, tokenizer, labels: list[str], out_dir: Path, extra: dict | None = None) -> dict:
    """Write `out_dir` atomically (temporary folder, then rename; an older export stays until the
    new one is complete); return the tunelab.json content."""
    with staged_dir(out_dir) as tmp:
        return _write_export(model, tokenizer, labels, tmp, extra)


def _write_export(model: TextClassifier, tokenizer, labels: list[str], tmp: Path, extra: dict | None) -> dict:
    if hasattr(model.backbone, "save_pretrained") and hasattr(model.backbone, "peft_config"):
        model.backbone.save_pretrained(str(tmp / "adapter"))
        save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, str(tmp / "adapter" / "head.safetensors"))
    backbone = merged_backbone(model)
    config = backbone.config
    hf_cls = _hf_class(config) if model.hf_representable() else None
    config = type(config).from_dict(config.to_dict())  # a copy we can annotate
    config.num_labels = len(labels)
    config.id2label = {i: name for i, name in enumerate(labels)}
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.pad_token_id = tokenizer.pad_token_id
    backbone_state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    if hf_cls is not None:
        prefix = hf_cls.base_model_prefix
        tensors = {f"{prefix}.{k}": v for k, v in backbone_state.items()}
        tensors["score.weight"] = model.head.weight.detach().cpu().contiguous()
        config.architectures = [hf_cls.__name__]
    else:
        tensors = {f"backbone.{k}": v for k, v in backbone_state.items()}
        tensors.update({f"head.{k}": v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()})
        config.architectures = [type(backbone).__name__]
    # Tied weights share storage; safetensors wants each stored once.
    seen, unique = {}, {}
    for k, v in tensors.items():
        key = (v.data_ptr(), v.shape, v.dtype)
        if key in seen and v.data_ptr() != 0:
            continue
        seen[key] = k
        unique[k] = v.clone()
    save_file(unique, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    meta = {
        "format_version": FORMAT_VERSION,
        "task": "classification",
        "labels": labels,
        "pooling": model.pooling,
        "causal_mask": model.causal_mask,
        "encoder": model.encoder,
        "hf_compatible": hf_cls is not None,
        "hf_class": hf_cls.__name__ if hf_cls is not None else None,
        "weights_prefix": hf_cls.base_model_prefix if hf_cls is not None else "backbone",
        **(extra or {}),
    }
    (tmp / MODEL_META).write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    return meta


def load_exported(model_dir: Path, device: str | torch.device = "cpu") -> tuple[TextClassifier, object, dict]:
    """Rebuild the classifier from an exported folder: (model in eval mode, tokenizer, meta)."""
    from transformers import AutoModel

    from tunelab.model.backbone import load_config_of, load_tokenizer, load_weights
    from tunelab.train.runtime import read_model_meta

    model_dir = Path(model_dir)
    meta = read_model_meta(model_dir)
    if meta.get("task", "classification") != "classification":
        raise TunelabError(f"{model_dir}: a {meta['task']} model, not a classifier; use `tunelab generate` or `tunelab chat`")
    missing_keys = [k for k in ("labels", "pooling", "causal_mask", "weights_prefix") if k not in meta]
    if missing_keys:
        raise TunelabError(f"{model_dir / MODEL_META}: damaged (no {', '.join(missing_keys)}); export or train the model again")
    backbone = AutoModel.from_config(load_config_of(model_dir))
    model = TextClassifier(backbone, len(meta["labels"]), meta["pooling"], meta["causal_mask"])
    tensors = load_weights(model_dir / "model.safetensors")
    prefix = meta["weights_prefix"] + "."
    state = {}
    for k, v in tensors.items():
        if k.startswith(prefix):
            state["backbone." + k[len(prefix) :]] = v
        elif k == "score.weight":
            state["head.weight"] = v
        else:
            state[k] = v
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _is_tied_copy(model, k, state)]
    if missing or unexpected:
        raise TunelabError(f"{model_dir}/model.safetensors does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval(), load_tokenizer(model_dir), meta


def _is_tied_copy(model, key: str, state: dict) -> bool:
    """Weights tied to another tensor (stored once) are fine to be missing."""
    params = dict(model.named_parameters())
    p = params.get(key)
    return p is not None and any(q is p for name, q in params.items() if name != key and name in state)
