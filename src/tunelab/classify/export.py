"""Save a trained classifier as a self-describing folder, and load it back.

`model/` always holds `model.safetensors`, `config.json`, the tokenizer files and `tunelab.json`
(labels, pooling, causal mask, max length, and which form was written and why). Two forms:

- transformers: where a stock `*ForSequenceClassification` class computes the same function, the
  folder is that class's checkpoint, so `AutoModelForSequenceClassification.from_pretrained(dir)`
  gives tunelab's probabilities (tested < 1e-4). Two kinds of run qualify:
  - a decoder pooling `last` (causal or not, LoRA merged): a backbone, then its last non-pad token
    into a bias-free linear `score`; weights `<prefix>.*` and `score.weight`; config.json with
    `is_causal` (which transformers reads to build a bidirectional mask).
  - an encoder pooling `pooler` (first token -> dense -> tanh -> dropout -> linear) of a family
    whose stock class is exactly that (`POOLER_HEADS`): BERT and ALBERT, whose classes run the
    backbone's own pooler (`<prefix>.pooler.dense` / `<prefix>.pooler`) before `classifier`, and
    RoBERTa, XLM-R, CamemBERT and MPNet, whose `classifier.dense` + `classifier.out_proj` replace
    the backbone's pooler (not written: those classes have none). ELECTRA (gelu) and DistilBERT
    (ReLU) put another nonlinearity there and stay in the tunelab form, with that reason.
  Either kind: config.json with `architectures`, `id2label`/`label2id`, `problem_type` and
  `pad_token_id`; tunelab.json maps tunelab's head weights to the stock names (`head_weights`).
  Stock classes read fixed positions (position 0, or positions counted from the left edge), so
  batches are padded on the right, as the saved tokenizer does.
- tunelab: everything else, with the reason in tunelab.json. Stock encoder heads put a dense layer
  and a nonlinearity between the first token and the classifier, which `first`/`mean` pooling's
  single linear head cannot be written as; stock decoder heads pool only the last token. Weights
  `backbone.*` / `head.*` (/ `pooler_dense.*`); config.json has model_type `tunelab-classifier`
  with the backbone's config under `backbone`, so transformers refuses the folder (ValueError:
  model type not recognised) instead of loading it with a random head.
  `tunelab.load` and `tunelab predict` load both forms.

A LoRA run is merged into the base weights first; its adapter is saved separately by PEFT
(`adapter/`, loadable with `PeftModel.from_pretrained(AutoModel..., adapter)`, head in
`adapter/head.safetensors`: the head's `weight`/`bias` and, pooling pooler, `pooler_dense.*`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from tunelab.classify.model import PRETRAINED_POOLER, TextClassifier
from tunelab.data.io_atomic import staged_dir
from tunelab.errors import TunelabError
from tunelab.train.runtime import MODEL_META

FORMAT_VERSION = 2  # 2: the tunelab form's config.json is model_type tunelab-classifier (1: the backbone's own)
TUNELAB_MODEL_TYPE = "tunelab-classifier"  # unknown to transformers, so its Auto classes refuse the folder
POOLED = {"last": "the last real token", "first": "the first token", "mean": "the mean over real tokens",
          "pooler": "the first token through dense + tanh"}
# Encoder families whose stock *ForSequenceClassification computes `pooling: pooler` (first token ->
# dense -> tanh -> dropout -> linear; read in transformers' modeling_*.py): where the stock class
# keeps the dense layer and the linear classifier, `{prefix}` its base_model_prefix, and the config
# field of the classifier dropout (None: the class uses hidden_dropout_prob).
_BACKBONE_POOLER = {"dense": "{prefix}.pooler.dense", "classifier": "classifier", "dropout": "classifier_dropout"}
_OWN_HEAD = {"dense": "classifier.dense", "classifier": "classifier.out_proj", "dropout": "classifier_dropout"}
POOLER_HEADS = {
    "bert": _BACKBONE_POOLER,  # BertPooler (dense + tanh on [CLS]) -> dropout -> classifier
    "albert": {**_BACKBONE_POOLER, "dense": "{prefix}.pooler", "dropout": "classifier_dropout_prob"},  # pooler + pooler_activation (tanh)
    "roberta": _OWN_HEAD,  # RobertaClassificationHead: dropout -> dense -> tanh -> dropout -> out_proj
    "xlm-roberta": _OWN_HEAD,
    "camembert": _OWN_HEAD,
    "mpnet": {**_OWN_HEAD, "dropout": None},  # MPNetClassificationHead: as RoBERTa's, dropout hidden_dropout_prob
}
assert set(PRETRAINED_POOLER) <= set(POOLER_HEADS) and all("{prefix}" in POOLER_HEADS[t]["dense"] for t in PRETRAINED_POOLER)
# Encoder families whose stock head is not dense + tanh: why `pooling: pooler` cannot be written as it.
OTHER_ENCODER_HEADS = {
    "electra": "ElectraForSequenceClassification's ElectraClassificationHead applies gelu, not tanh, after its dense layer",
    "distilbert": "DistilBertForSequenceClassification puts a ReLU (pre_classifier), not tanh, after its dense layer",
}


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


def _pooler_head_fits(hf_cls, config, model: TextClassifier, backbone: nn.Module, layout: dict) -> str | None:
    """None when `hf_cls` is this backbone class with the dense layer and the classifier at the
    names `layout` gives, shaped like the run's (built on the meta device), else what differs."""
    with torch.device("meta"):
        stock = hf_cls(config)
    prefix = hf_cls.base_model_prefix
    if type(getattr(stock, prefix, None)) is not type(backbone):
        return f"{hf_cls.__name__}'s backbone is not a {type(backbone).__name__}"
    for part, mine in (("dense", model.pooler_dense), ("classifier", model.head)):
        name = layout[part].format(prefix=prefix)
        try:
            theirs = stock.get_submodule(name)
        except AttributeError:
            return f"{hf_cls.__name__} has no {name}"
        if not isinstance(theirs, nn.Linear) or theirs.weight.shape != mine.weight.shape or (theirs.bias is None) != (mine.bias is None):
            return f"{hf_cls.__name__}.{name} is not shaped like this run's layer"
    return None


def stock_form(model: TextClassifier, backbone: nn.Module, config) -> tuple[type | None, str]:
    """(the transformers class that computes exactly what `model` does, or None; why, one clause).
    `backbone` is the merged backbone, `config` its copy with the label count set."""
    hf_cls = _hf_class(config)
    if hf_cls is None:
        return None, f"transformers has no *ForSequenceClassification class for model_type {config.model_type!r}"
    name, family = hf_cls.__name__, config.model_type
    if model.encoder:
        if model.pooling != "pooler":
            if family in OTHER_ENCODER_HEADS:
                return None, f"{OTHER_ENCODER_HEADS[family]}; this run's head is one linear layer on {POOLED[model.pooling]}"
            if family in POOLER_HEADS:
                return None, (f"{name} puts a dense layer and a nonlinearity (tanh) between the first token and its classifier, and no "
                              f"weights make those the identity; this run's head is one linear layer on {POOLED[model.pooling]} "
                              f"(train with model.pooling: pooler for the head {name} loads)")
            return None, f"{name}'s head is not one linear layer on {POOLED[model.pooling]}, as this run's is"
        if family in OTHER_ENCODER_HEADS:
            return None, f"{OTHER_ENCODER_HEADS[family]}; this run's pooler head applies tanh"
        if family not in POOLER_HEADS:
            return None, f"tunelab knows no {name} head that is dense + tanh on the first token (stock heads of that form: {', '.join(POOLER_HEADS)})"
        problem = _pooler_head_fits(hf_cls, config, model, backbone, POOLER_HEADS[family])
        if problem is not None:
            return None, problem
        return hf_cls, f"{name} puts dense + tanh on the first token into a linear classifier, as this run's pooler head does"
    if not _bare_score_head(hf_cls, config, model, backbone):
        return None, f"{name}'s head is not one bias-free linear layer on the backbone, as this run's is"
    if model.pooling != "last":
        return None, f"{name} pools the last non-pad token; this run pools {POOLED[model.pooling]}"
    attention = "causal" if model.causal_mask else "bidirectional (config.json is_causal: false)"
    return hf_cls, f"{name} pools the last non-pad token into a bias-free linear layer, as this run does, with {attention} attention"


def _stock_tensors(hf_cls, model: TextClassifier, backbone_state: dict, config) -> tuple[dict, dict]:
    """The weights under `hf_cls`'s names, and tunelab.json's `head_weights` (tunelab name -> stock
    name). Sets the classifier dropout in `config` to the run's head dropout."""
    prefix = hf_cls.base_model_prefix
    heads = {"head": model.head}
    if model.pooler_dense is None:  # a decoder's score
        names = {"head": "score"}
    else:
        layout = POOLER_HEADS[config.model_type]
        names = {"pooler_dense": layout["dense"].format(prefix=prefix), "head": layout["classifier"]}
        heads["pooler_dense"] = model.pooler_dense
        if layout["dropout"] is not None:
            setattr(config, layout["dropout"], float(model.dropout.p))
        if not layout["dense"].startswith("{prefix}."):  # the stock class has no backbone pooler: leave it out
            backbone_state = {k: v for k, v in backbone_state.items() if not k.startswith("pooler.")}
    tensors = {f"{prefix}.{k}": v for k, v in backbone_state.items()}
    head_weights = {}
    for ours, module in heads.items():
        for k, v in module.state_dict().items():
            tensors[f"{names[ours]}.{k}"] = v.detach().cpu().contiguous()  # replaces the backbone's own pooler (BERT, ALBERT)
            head_weights[f"{ours}.{k}"] = f"{names[ours]}.{k}"
    return tensors, head_weights


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
    head_state = {f"{name}.{k}": v.detach().cpu().contiguous() for name in ("head", "pooler_dense") if getattr(model, name) is not None
                  for k, v in getattr(model, name).state_dict().items()}
    if hasattr(model.backbone, "save_pretrained") and hasattr(model.backbone, "peft_config"):
        model.backbone.save_pretrained(str(tmp / "adapter"))
        adapter_head = {k.removeprefix("head."): v for k, v in head_state.items()}  # the head as `weight`/`bias`, as before pooler
        save_file(adapter_head, str(tmp / "adapter" / "head.safetensors"))
    backbone = merged_backbone(model)
    config = type(backbone.config).from_dict(backbone.config.to_dict())  # a copy we can annotate
    config.num_labels = len(labels)
    config.id2label = {i: name for i, name in enumerate(labels)}
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.pad_token_id = tokenizer.pad_token_id
    config.problem_type = "single_label_classification"
    hf_cls, reason = stock_form(model, backbone, config)
    backbone_state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    if hf_cls is not None:
        prefix = hf_cls.base_model_prefix
        tensors, head_weights = _stock_tensors(hf_cls, model, backbone_state, config)
        config.architectures = [hf_cls.__name__]
        config.save_pretrained(str(tmp))
    else:
        prefix, head_weights = "backbone", {k: k for k in head_state}
        tensors = {f"backbone.{k}": v for k, v in backbone_state.items()} | head_state
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
        "head_weights": head_weights,
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
    ours = {stock: mine for mine, stock in meta.get("head_weights", {"head.weight": "score.weight"}).items()}  # folders before head_weights: decoders' score
    state = {}
    for k, v in tensors.items():
        if k in ours:
            state[ours[k]] = v
        if k.startswith(prefix):
            state["backbone." + k[len(prefix) :]] = v  # BERT, ALBERT: the pooler also stays in the backbone (unused there)
        elif k not in ours:
            state[k] = v
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The backbone's own pooler is not stored where the stock class has none (RoBERTa, MPNet, ...):
    # tunelab never reads it (pooling pooler has its own dense layer).
    missing = [k for k in missing if not _is_tied_copy(model, k, state) and not (model.pooler_dense is not None and k.startswith("backbone.pooler."))]
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
