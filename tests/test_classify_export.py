"""classify/export.py: which classifiers export as a stock transformers *ForSequenceClassification
folder (and give tunelab's probabilities there), and which as a tunelab folder that transformers
refuses loudly while `tunelab.load` and `tunelab predict` still read it.

Tiny random-init models of each family, built from transformers configs and exported in-process
(no training), so each case takes well under a second.
"""

import json

import pytest
import torch
from tests.helpers import build_tokenizer, one_thread, tiny_config

import tunelab
from tunelab.classify.export import TUNELAB_MODEL_TYPE, export_classifier
from tunelab.classify.model import TextClassifier, apply_trainable
from tunelab.classify.predict import Classifier
from tunelab.cli import main
from tunelab.config import LoraConfig

LABELS = ["ham", "spam", "other"]
TEXTS = ["win cash now", "see you at dinner tonight my love", "ok", "free prize claim urgent call now please reply"]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def _classifier(tokenizer, arch: str, pooling: str = "last", causal_mask: bool = True, lora: bool = False) -> TextClassifier:
    from transformers import AutoModel

    torch.manual_seed(0)
    model = TextClassifier(AutoModel.from_config(tiny_config(arch, len(tokenizer))), len(LABELS), pooling, causal_mask)
    torch.nn.init.normal_(model.head.weight, std=1.0)  # logits far from uniform, so a wrong function shows
    if lora:
        apply_trainable(model, "lora", lora=LoraConfig(r=4, alpha=8, dropout=0.0))
        for name, p in model.backbone.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero (a no-op adapter); make the merge matter
                torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def _export(tmp_path, tokenizer, model) -> tuple[dict, object]:
    folder = tmp_path / "model"
    meta = export_classifier(model, tokenizer, LABELS, folder, extra={"max_length": 32})
    return meta, folder


def _probs_in_memory(model, tokenizer, meta) -> torch.Tensor:
    return torch.softmax(Classifier(model, tokenizer, meta, torch.device("cpu")).logits(TEXTS), dim=-1)


@pytest.mark.parametrize("arch, causal_mask, lora", [
    ("llama", True, False), ("llama", True, True), ("qwen2", True, False), ("qwen2", False, False),
    ("gemma3", True, False), ("gemma3", False, False), ("gpt2", True, False), ("gpt2", False, True),
])
def test_decoders_pooling_last_load_in_stock_transformers_with_tunelab_probabilities(tmp_path, tokenizer, monkeypatch, arch, causal_mask, lora):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = _classifier(tokenizer, arch, "last", causal_mask, lora)
    monkeypatch.setattr(tokenizer, "padding_side", "left")  # as many decoder tokenizers ship
    meta, folder = _export(tmp_path, tokenizer, model)
    assert tokenizer.padding_side == "left"  # the caller's tokenizer is left as it was
    assert meta["hf_compatible"] is True and meta["hf_class"].endswith("ForSequenceClassification")
    assert meta["hf_class"] in meta["export_reason"] and ("causal" if causal_mask else "bidirectional") in meta["export_reason"]
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "ham", "1": "spam", "2": "other"} and config["label2id"]["spam"] == 1
    assert config["problem_type"] == "single_label_classification" and config["pad_token_id"] == tokenizer.pad_token_id
    assert config.get("is_causal", True) is causal_mask

    stock, info = AutoModelForSequenceClassification.from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert tok.padding_side == "right"  # stock positions count from the left edge (GPT-2: absolute embeddings)
    with torch.no_grad():
        batch = torch.softmax(stock.eval()(**tok(TEXTS, padding=True, return_tensors="pt")).logits, dim=-1)
        single = torch.cat([torch.softmax(stock(**tok(t, return_tensors="pt")).logits, dim=-1) for t in TEXTS])
    ours = torch.softmax(tunelab.load(folder, device="cpu").logits(TEXTS), dim=-1)
    assert (batch - ours).abs().max() < 1e-4 and (single - ours).abs().max() < 1e-4
    assert (ours - _probs_in_memory(model, tokenizer, meta)).abs().max() < 1e-5


@pytest.mark.parametrize("arch, pooling, reason", [
    ("bert", "first", "tanh"), ("bert", "mean", "tanh"), ("mpnet", "mean", "tanh"), ("mpnet", "first", "tanh"),
    ("roberta", "first", "tanh"), ("llama", "mean", "last non-pad token"), ("qwen2", "first", "last non-pad token"),
])
def test_other_classifiers_are_refused_by_transformers_and_load_in_tunelab(tmp_path, tokenizer, arch, pooling, reason):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model = _classifier(tokenizer, arch, pooling, causal_mask=arch in ("bert", "mpnet", "roberta"))
    meta, folder = _export(tmp_path, tokenizer, model)
    assert meta["hf_compatible"] is False and meta["weights_prefix"] == "backbone" and reason in meta["export_reason"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == TUNELAB_MODEL_TYPE and config["backbone"]["model_type"] == model.config.model_type
    for load in (AutoModelForSequenceClassification.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(ValueError, match=TUNELAB_MODEL_TYPE):  # loudly, not a random head
            load(str(folder))
    with pytest.raises(ValueError, match=TUNELAB_MODEL_TYPE):
        pipeline("text-classification", model=str(folder))
    assert AutoTokenizer.from_pretrained(str(folder))("ok")["input_ids"]  # the tokenizer still loads

    ours = torch.softmax(tunelab.load(folder, device="cpu").logits(TEXTS), dim=-1)
    assert (ours - _probs_in_memory(model, tokenizer, meta)).abs().max() < 1e-5


def test_folders_of_format_1_still_load(tmp_path, tokenizer):
    """Before format 2 the tunelab form's config.json was the backbone's own config."""
    model = _classifier(tokenizer, "bert", "mean")
    meta, folder = _export(tmp_path, tokenizer, model)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config["backbone"]))
    ours = torch.softmax(tunelab.load(folder, device="cpu").logits(TEXTS), dim=-1)
    assert (ours - _probs_in_memory(model, tokenizer, meta)).abs().max() < 1e-5


@pytest.mark.parametrize("arch, pooling, says", [
    ("llama", "last", "loads with transformers AutoModelForSequenceClassification: LlamaForSequenceClassification pools the last non-pad token"),
    ("bert", "first", "loads with tunelab.load or tunelab predict only; stock transformers refuses it: BertForSequenceClassification puts"),
])
def test_cli_export_says_which_form_and_why_and_predict_reads_it(tmp_path, tokenizer, capsys, arch, pooling, says):
    (tmp_path / "run").mkdir()
    _, folder = _export(tmp_path / "run", tokenizer, _classifier(tokenizer, arch, pooling))
    out = tmp_path / "exported"  # outside the folder exported from, as `tunelab export` requires
    assert main(["export", str(folder), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and says in lines[0], lines
    (tmp_path / "in.txt").write_text("win a free prize\nsee you tomorrow\n")
    assert main(["predict", str(out), "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "pred.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [set(r["probs"]) for r in rows] == [set(LABELS)] * 2
