"""classify/export.py: which classifiers export as a stock transformers *ForSequenceClassification
folder (and give tunelab's probabilities there), and which as a tunelab folder that transformers
refuses loudly while `tunelab.load` and `tunelab predict` still read it. Decoders pooling `last`
and encoders pooling `pooler` (BERT, ALBERT, RoBERTa, MPNet) take the first form; ELECTRA and
DistilBERT (other nonlinearities), `first`/`mean` encoders and other decoders the second.

Tiny random-init models of each family, built from transformers configs and exported in-process
(no training), so each case takes well under a second.
"""

import json

import pytest
import torch
from tests.helpers import ENCODERS, build_tokenizer, one_thread, tiny_config

import tunelab
from tunelab.classify.export import TUNELAB_MODEL_TYPE, export_classifier
from tunelab.classify.model import TextClassifier, apply_trainable
from tunelab.classify.predict import Classifier
from tunelab.cli import main
from tunelab.config import LoraConfig
from tunelab.errors import TunelabError

LABELS = ["ham", "spam", "other"]
TEXTS = ["win cash now", "see you at dinner tonight my love", "ok", "free prize claim urgent call now please reply"]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def _classifier(tokenizer, arch: str, pooling: str = "last", causal_mask: bool = True, lora: bool = False, head_dropout: float = 0.0) -> TextClassifier:
    from transformers import AutoModel

    torch.manual_seed(0)
    model = TextClassifier(AutoModel.from_config(tiny_config(arch, len(tokenizer))), len(LABELS), pooling, causal_mask, head_dropout)
    torch.nn.init.normal_(model.head.weight, std=1.0)  # logits far from uniform, so a wrong function shows
    if model.pooler_dense is not None:  # and a dense layer that is neither the backbone's pooler nor near zero
        for p in (*model.pooler_dense.parameters(), model.head.bias):
            torch.nn.init.normal_(p, std=0.3)
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


@pytest.mark.parametrize("arch, lora", [("bert", False), ("bert", True), ("albert", False), ("roberta", False), ("mpnet", False)])
def test_encoders_pooling_pooler_load_in_stock_transformers_with_tunelab_probabilities(tmp_path, tokenizer, arch, lora):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = _classifier(tokenizer, arch, "pooler", lora=lora, head_dropout=0.2)
    meta, folder = _export(tmp_path, tokenizer, model)
    stock_name = {"bert": "BertForSequenceClassification", "albert": "AlbertForSequenceClassification",
                  "roberta": "RobertaForSequenceClassification", "mpnet": "MPNetForSequenceClassification"}[arch]
    assert meta["hf_compatible"] is True and meta["hf_class"] == stock_name and "tanh" in meta["export_reason"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == arch and config["architectures"] == [stock_name]
    assert config["id2label"] == {"0": "ham", "1": "spam", "2": "other"} and config["label2id"]["spam"] == 1
    assert config["problem_type"] == "single_label_classification" and config["pad_token_id"] == tokenizer.pad_token_id
    dropout = {"bert": "classifier_dropout", "albert": "classifier_dropout_prob", "roberta": "classifier_dropout"}.get(arch)
    assert dropout is None or config[dropout] == pytest.approx(0.2)  # MPNet's head uses hidden_dropout_prob

    stock, info = AutoModelForSequenceClassification.from_pretrained(str(folder), output_loading_info=True)
    assert type(stock).__name__ == stock_name and stock.num_labels == len(LABELS)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert tok.padding_side == "right"  # stock heads read position 0 of every row
    with torch.no_grad():
        batch = torch.softmax(stock.eval()(**tok(TEXTS, padding=True, return_tensors="pt")).logits, dim=-1)
        single = torch.cat([torch.softmax(stock(**tok(t, return_tensors="pt")).logits, dim=-1) for t in TEXTS])
    ours = _probs_in_memory(model, tokenizer, meta)
    assert (batch - ours).abs().max() < 1e-4 and (single - ours).abs().max() < 1e-4
    assert (ours - torch.softmax(tunelab.load(folder, device="cpu").logits(TEXTS), dim=-1)).abs().max() < 1e-5
    assert ours.max() - ours.min() > 0.1  # not a uniform answer that any function would match
    if lora:  # the adapter's head file: the head as before, plus the pooler's dense layer
        from safetensors.torch import load_file

        assert set(load_file(str(folder / "adapter" / "head.safetensors"))) == {"weight", "bias", "pooler_dense.weight", "pooler_dense.bias"}


@pytest.mark.parametrize("arch, from_backbone", [("bert", True), ("albert", True), ("roberta", False), ("mpnet", False), ("electra", False)])
def test_pooler_dense_starts_as_the_stock_class_does_and_trains_with_the_head(tokenizer, arch, from_backbone):
    """BERT and ALBERT classes feed the backbone's pretrained pooler to the classifier; RoBERTa's
    and MPNet's heads start a fresh dense layer (seeded, like the head)."""
    from transformers import AutoModel

    torch.manual_seed(0)
    backbone = AutoModel.from_config(tiny_config(arch, len(tokenizer)))
    torch.manual_seed(1)
    model = TextClassifier(backbone, 2, "pooler")
    pooler = {"bert": "pooler.dense", "albert": "pooler"}.get(arch)
    if from_backbone:
        assert torch.equal(model.pooler_dense.weight, backbone.get_submodule(pooler).weight)
        assert torch.equal(model.pooler_dense.bias, backbone.get_submodule(pooler).bias)
    else:
        other = AutoModel.from_config(tiny_config(arch, len(tokenizer)))
        torch.manual_seed(1)
        again = TextClassifier(other, 2, "pooler")
        assert torch.equal(model.pooler_dense.weight, again.pooler_dense.weight)  # seeded
        assert model.pooler_dense.weight.std() < 0.05 and not model.pooler_dense.bias.any()  # initializer_range, as the head
    for policy in ("head", "last_blocks"):
        apply_trainable(model, policy, last_blocks=1)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert {"head.weight", "head.bias", "pooler_dense.weight", "pooler_dense.bias"} <= trainable
        assert policy != "head" or len(trainable) == 4


def test_decoders_refuse_pooling_pooler(tokenizer):
    from transformers import AutoModel

    with pytest.raises(TunelabError, match=r"model.pooling = pooler is for encoders .*llama is a decoder, use model.pooling: last"):
        TextClassifier(AutoModel.from_config(tiny_config("llama", len(tokenizer))), 2, "pooler")


@pytest.mark.parametrize("arch, pooling, reason", [
    ("bert", "first", "tanh"), ("bert", "mean", "tanh"), ("mpnet", "mean", "tanh"), ("mpnet", "first", "tanh"),
    ("roberta", "first", "tanh"), ("albert", "mean", "model.pooling: pooler"), ("llama", "mean", "last non-pad token"),
    ("qwen2", "first", "last non-pad token"), ("electra", "pooler", "gelu, not tanh"), ("distilbert", "pooler", "ReLU (pre_classifier), not tanh"),
    ("electra", "first", "gelu"),
])
def test_other_classifiers_are_refused_by_transformers_and_load_in_tunelab(tmp_path, tokenizer, arch, pooling, reason):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model = _classifier(tokenizer, arch, pooling, causal_mask=arch in ENCODERS)
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
    ("mpnet", "pooler", "loads with transformers AutoModelForSequenceClassification: MPNetForSequenceClassification puts dense + tanh"),
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
