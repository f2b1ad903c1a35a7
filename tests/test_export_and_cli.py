"""Exported model folders load in transformers with the same logits; the CLI end to end."""

import json

import pytest
import torch
from tests.helpers import base_config, make_model_dir, one_thread, write_config

from tunelab.classify.run import train_classifier
from tunelab.cli import main
from tunelab.config import load_config

TEXTS = ["win cash now", "see you at dinner tonight my love", "ok"]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _train(tmp_path, data, model_dir, **model):
    raw = base_config(data, model_dir, tmp_path / "run", max_steps=3)
    raw["model"].update(model)
    train_classifier(load_config(write_config(tmp_path / "c.yaml", raw)), log=lambda *_: None)
    return tmp_path / "run"


@pytest.mark.parametrize("arch", ["qwen2", "gpt2", "gemma3"])
def test_decoder_families_export_to_transformers(tmp_path, model_root, spam_csv, arch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import tunelab

    run = _train(tmp_path, spam_csv, make_model_dir(model_root, arch))
    meta = json.loads((run / "model" / "tunelab.json").read_text())
    assert meta["hf_compatible"] is True
    ours = tunelab.load(run, device="cpu").logits(TEXTS)
    hf = AutoModelForSequenceClassification.from_pretrained(str(run / "model")).eval()
    tok = AutoTokenizer.from_pretrained(str(run / "model"))
    with torch.no_grad():
        for text, row in zip(TEXTS, ours):
            assert torch.allclose(hf(**tok(text, return_tensors="pt")).logits[0], row, atol=1e-4)


def test_choices_stock_transformers_cannot_represent_need_tunelab(tmp_path, model_root, spam_csv):
    import tunelab
    from tunelab.classify.export import load_exported

    run = _train(tmp_path, spam_csv, make_model_dir(model_root, "llama"), pooling="mean", causal_mask=False)
    meta = json.loads((run / "model" / "tunelab.json").read_text())
    assert meta["hf_compatible"] is False and meta["pooling"] == "mean" and meta["causal_mask"] is False
    model, tok, _ = load_exported(run / "model")
    again = tunelab.load(run, device="cpu").logits(TEXTS)
    assert torch.allclose(tunelab.load(run / "model", device="cpu").logits(TEXTS), again)
    assert not model.causal_mask


def test_lora_run_keeps_a_peft_adapter_and_a_merged_model(tmp_path, model_root, spam_csv):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    import tunelab

    base = make_model_dir(model_root, "llama")
    run = _train(tmp_path, spam_csv, base, trainable="lora", lora={"r": 4, "alpha": 8, "dropout": 0.0})
    assert (run / "model" / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForSequenceClassification.from_pretrained(str(run / "model")).eval()
    tok = AutoTokenizer.from_pretrained(str(run / "model"))
    # The adapter applied by PEFT on the base backbone + the saved head reproduces the merged model.
    backbone = PeftModel.from_pretrained(AutoModel.from_pretrained(str(base)), str(run / "model" / "adapter")).eval()
    head = load_file(str(run / "model" / "adapter" / "head.safetensors"))["weight"]
    ours = tunelab.load(run, device="cpu").logits(TEXTS)
    with torch.no_grad():
        for text, row in zip(TEXTS, ours):
            enc = tok(text, return_tensors="pt")
            via_peft = backbone(**enc).last_hidden_state[0, -1] @ head.T
            assert torch.allclose(via_peft, row, atol=1e-4)
            assert torch.allclose(merged(**enc).logits[0], row, atol=1e-4)


def test_cli_train_predict_eval(tmp_path, model_root, spam_csv, capsys):
    cfg = write_config(tmp_path / "c.yaml", base_config(spam_csv, make_model_dir(model_root, "llama"), tmp_path / "run", max_steps=2))
    assert main(["train", str(cfg)]) == 0
    inp = tmp_path / "in.txt"
    inp.write_text("win a free prize\nsee you tomorrow\n")
    out = tmp_path / "pred.jsonl"
    capsys.readouterr()
    threads = torch.get_num_threads()
    try:
        assert main(["predict", str(tmp_path / "run"), "--input", str(inp), "--output", str(out), "--threads", "1"]) == 0
        assert "predicted 2 rows in" in capsys.readouterr().err and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["win a free prize", "see you tomorrow"]
    assert all(set(r["probs"]) == {"ham", "spam"} for r in rows)
    assert main(["eval", str(tmp_path / "run"), "--data", str(spam_csv), "--output", str(tmp_path / "scores.json")]) == 0
    assert "scored 240 rows in" in capsys.readouterr().out  # with the speed: rows/s, device, threads
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert sum(map(sum, scores["confusion_matrix"])) == 240
    assert main(["predict", str(tmp_path / "run"), "--input", str(inp), "--threads", "0"]) == 2
    assert "--threads 0: expected at least 1" in capsys.readouterr().err


def test_cli_bad_inputs_give_messages_not_tracebacks(tmp_path, model_root, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,a\n,b\n")
    cfg = write_config(tmp_path / "c.yaml", base_config(bad, make_model_dir(model_root, "llama"), tmp_path / "run"))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "bad.csv:3: empty text in column 'text'" in err and "Traceback" not in err
    assert main(["predict", str(tmp_path / "nowhere"), "--input", "-"]) == 2
    assert "run folder not found" in capsys.readouterr().err
    cfg2 = write_config(tmp_path / "c2.yaml", base_config(bad, "asset:no-such-model", tmp_path / "run2"))
    assert main(["train", str(cfg2)]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_accumulation_matches_a_full_batch(tmp_path, model_root, spam_csv, monkeypatch):
    """batch 8 in one step == 4 micro-batches of 2 == 8 unpadded sequences of 1 (padding: none).

    Plain SGD with lr 1 makes the weight change equal to the step's gradient, so the test compares
    gradients (Adam's first step would hide their scale)."""
    from safetensors.torch import load_file

    from tunelab.train import loop

    monkeypatch.setattr(loop, "make_optimizer", lambda model, lr, wd: torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0))

    folder = make_model_dir(model_root, "llama")
    weights = []
    for i, (train, data) in enumerate([({"batch_size": 8}, {}), ({"batch_size": 2, "grad_accum": 4}, {}), ({"batch_size": 8}, {"padding": "none"})]):
        raw = base_config(spam_csv, folder, tmp_path / f"r{i}", max_steps=1, warmup=0, max_grad_norm=None, **train)
        raw["data"].update(data, group_by_length=False)
        cfg = load_config(write_config(tmp_path / f"c{i}.yaml", raw))
        train_classifier(cfg, log=lambda *_: None)
        weights.append(load_file(str(tmp_path / f"r{i}" / "checkpoints" / "step-0000001" / "trainable.safetensors")))
    for other in weights[1:]:
        for k in weights[0]:
            assert torch.allclose(weights[0][k], other[k], atol=1e-5), k
