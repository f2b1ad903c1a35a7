"""Save a trained classifier as a self-describing folder, and load it back.

`model/` always holds `model.safetensors`, `config.json`, the tokenizer files and `tunelab.json`
(labels, pooling, causal mask, max length, and which form was written and why). Two forms:

- transformers: where a stock `*ForSequenceClassification` class computes the same function (a
  backbone, then its last non-pad token into a bias-free linear `score`: a decoder pooling
  `last`, causal or not, LoRA merged), the folder is that class's checkpoint: weights
  `<prefix>.*` and `score.weight`; config.json with `architectures`, `id2label`/`label2id`,
  `problem_type`, `pad_token_id` and `is_causal` (which transformers reads to build a
  bidirectional mask). `AutoModelForSequenceClassification.from_pretrained(model_dir)` then gives
  tunelab's logits, for single texts and for batches the saved tokenizer pads (on the right).
- tunelab: everything else, with the reason in tunelab.json. Stock encoder heads put a dense layer
  and a nonlinearity between the first token and the classifier (BERT's pooler, the RoBERTa and
  MPNet heads: tanh), which tunelab's single linear head cannot be written as; stock decoder
  heads pool only the last token. Weights `backbone.*` / `head.*`; config.json has model_type
  `tunelab-classifier` with the backbone's config under `backbone`, so transformers refuses the
  folder (ValueError: model type not recognised) instead of loading it with a random head.
  `tunelab.load` and `tunelab predict` load both forms.

A LoRA run is merged into the base weights first; its adapter is saved separately by PEFT
(`adapter/`, loadable with `PeftModel.from_pretrained(AutoModel..., adapter)`, head in
`adapter/head.safetensors`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from tunelab.classify.model import TextClassifier
from tunelab.data.io_atomic import staged_dir
from tunelab.errors import TunelabError
from tunelab.train.runtime import MODEL_META

FORMAT_VERSION = 2  # 2: the tunelab form's config.json is model_type tunelab-classifier (1: the backbone's own)
TUNELAB_MODEL_TYPE = "tunelab-classifier"  # unknown to transformers, so its Auto classes refuse the folder
POOLED = {"last": "the last real token", "first": "the first token", "mean": "the mean over real tokens"}


def _hf_class(config):
    """transformers' *ForSequenceClassification class for this backbone config (or None)."""
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification._model_mapping[type(config)]
    except KeyError:
        return None


def _bare_score_head(hf_cls, config, model: TextClassifier, backbone: nn.Module) -> bool:
    """True when `hf_cls` is this backbone class plus `score`, a bias-free linear layer like the
    run's head, and nothing else (built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        stock = hf_cls(config)
    prefix, score = hf_cls.base_model_prefix, getattr(stock, "score", None)
    return ({name for name, _ in stock.named_children()} == {prefix, "score"} and type(getattr(stock, prefix)) is type(backbone)
            and isinstance(score, nn.Linear) and score.bias is None and model.head.bias is None)


def stock_form(model: TextClassifier, backbone: nn.Module, config) -> tuple[type | None, str]:
    """(the transformers class that computes exactly what `model` does, or None; why, one clause).
    `backbone` is the merged backbone, `config` its copy with the label count set."""
    hf_cls = _hf_class(config)
    if hf_cls is None:
        return None, f"transformers has no *ForSequenceClassification class for model_type {config.model_type!r}"
    name = hf_cls.__name__
    if not _bare_score_head(hf_cls, config, model, backbone):
        if model.encoder:
            return None, (f"{name} puts a dense layer and a nonlinearity (tanh in BERT, RoBERTa, MPNet) between the first token and its "
                          f"classifier, and no weights make those the identity; this run's head is one linear layer on {POOLED[model.pooling]}")
        return None, f"{name}'s head is not one bias-free linear layer on the backbone, as this run's is"
    if model.pooling != "last":
        return None, f"{name} pools the last non-pad token; this run pools {POOLED[model.pooling]}"
    attention = "causal" if model.causal_mask else "bidirectional (config.json is_causal: false)"
    return hf_cls, f"{name} pools the last non-pad token into a bias-free linear layer, as this run does, with {attention} attention"


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
    config = type(backbone.config).from_dict(backbone.config.to_dict())  # a copy we can annotate
    config.num_labels = len(labels)
    config.id2label = {i: name for i, name in enumerate(labels)}
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.pad_token_id = tokenizer.pad_token_id
    config.problem_type = "single_label_classification"
    hf_cls, reason = stock_form(model, backbone, config)
    backbone_state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    head_state = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    if hf_cls is not None:
        prefix = hf_cls.base_model_prefix
        tensors = {f"{prefix}.{k}": v for k, v in backbone_state.items()} | {"score.weight": head_state["weight"]}
        config.architectures = [hf_cls.__name__]
        config.save_pretrained(str(tmp))
    else:
        prefix = "backbone"
        tensors = {f"backbone.{k}": v for k, v in backbone_state.items()} | {f"head.{k}": v for k, v in head_state.items()}
        config.architectures = [type(backbone).__name__]
        refusing = {"model_type": TUNELAB_MODEL_TYPE, "architectures": [type(model).__name__],
                    "note": f"a tunelab classifier: load it with tunelab.load(folder) or `tunelab predict`; stock transformers cannot compute it: {reason}",
                    "id2label": config.id2label, "label2id": config.label2id, "backbone": config.to_dict()}
        (tmp / "config.json").write_text(json.dumps(refusing, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    save_file(_stored_once(tensors), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    # Right padding: stock classes take positions 0.. from the left edge (GPT-2's absolute
    # embeddings would shift under left padding); tunelab's own collator ignores this setting.
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        tokenizer.save_pretrained(str(tmp))
    finally:
        tokenizer.padding_side = side
    meta = {
        "format_version": FORMAT_VERSION,
        "task": "classification",
        "labels": labels,
        "pooling": model.pooling,
        "causal_mask": model.causal_mask,
        "encoder": model.encoder,
        "hf_compatible": hf_cls is not None,
        "hf_class": hf_cls.__name__ if hf_cls is not None else None,
        "export_reason": reason,
        "weights_prefix": prefix,
        **(extra or {}),
    }
    (tmp / MODEL_META).write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    return meta


def _stored_once(tensors: dict) -> dict:
    """Tied weights share storage; safetensors wants each stored once (the first name kept)."""
    seen, unique = set(), {}
    for k, v in tensors.items():
        key = (v.data_ptr(), v.shape, v.dtype)
        if key in seen and v.data_ptr() != 0:
            continue
        seen.add(key)
        unique[k] = v.clone()
    return unique


def load_exported(model_dir: Path, device: str | torch.device = "cpu") -> tuple[TextClassifier, object, dict]:
    """Rebuild the classifier from an exported folder, either form: (model in eval mode, tokenizer, meta)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from tunelab.model.backbone import load_tokenizer, load_weights
    from tunelab.train.runtime import read_model_meta

    model_dir = Path(model_dir)
    meta = read_model_meta(model_dir)
    if meta.get("task", "classification") != "classification":
        raise TunelabError(f"{model_dir}: a {meta['task']} model, not a classifier; use `tunelab generate` or `tunelab chat`")
    missing_keys = [k for k in ("labels", "pooling", "causal_mask", "weights_prefix") if k not in meta]
    if missing_keys:
        raise TunelabError(f"{model_dir / MODEL_META}: damaged (no {', '.join(missing_keys)}); export or train the model again")
    backbone = AutoModel.from_config(_backbone_config(model_dir))
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
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer reads config.json and warns about the tunelab model type
    try:
        tokenizer = load_tokenizer(model_dir)
    finally:
        hf_logging.set_verbosity(previous)
    return model.to(device).eval(), tokenizer, meta


def _backbone_config(model_dir: Path):
    """The backbone's transformers config: config.json itself (transformers form, and folders of
    format 1) or its `backbone` entry (tunelab form)."""
    from transformers import CONFIG_MAPPING

    from tunelab.model.backbone import load_config_of

    path = model_dir / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TunelabError(f"{path}: cannot be read ({err}); export or train the model again") from None
    if raw.get("model_type") != TUNELAB_MODEL_TYPE:
        return load_config_of(model_dir)
    inner = raw.get("backbone") if isinstance(raw.get("backbone"), dict) else {}
    if inner.get("model_type") not in CONFIG_MAPPING:
        raise TunelabError(f"{path}: 'backbone' holds no transformers config this version knows (model_type {inner.get('model_type')!r})")
    return CONFIG_MAPPING[inner["model_type"]].from_dict(inner)


def _is_tied_copy(model, key: str, state: dict) -> bool:
    """Weights tied to another tensor (stored once) are fine to be missing."""
    params = dict(model.named_parameters())
    p = params.get(key)
    return p is not None and any(q is p for name, q in params.items() if name != key and name in state)
