"""A real (tiny) classification run, in process: run folder, metrics, resume, export parity."""

import csv
import json

import pytest
import torch
from tests.helpers import base_config, kill_after_first_checkpoint, read_json, write_config

from tunelab.classify.run import train_classifier
from tunelab.config import load_config


def _run(tmp_path, data, model_dir, name="run", **train):
    cfg_path = write_config(tmp_path / f"{name}.yaml", base_config(data, model_dir, tmp_path / name, **train))
    return load_config(cfg_path), cfg_path


def test_run_folder_and_metrics(tmp_path, spam_csv, tiny_llama):
    cfg, _ = _run(tmp_path, spam_csv, tiny_llama, epochs=12, eval_every="epoch", seed=8)
    summary = train_classifier(cfg, log=lambda *_: None)
    run = tmp_path / "run"
    for name in ("config.yaml", "data_report.json", "metrics.jsonl", "test_metrics.json", "test_report.txt", "summary.json", "model/model.safetensors", "model/config.json", "model/tunelab.json", "model/tokenizer.json"):
        assert (run / name).is_file(), name
    test = read_json(run / "test_metrics.json")
    assert set(test["per_class"]) == {"ham", "spam"}
    assert sum(map(sum, test["confusion_matrix"])) == 48  # 20 % of 240 rows
    # one line per test row; its probabilities give the reported accuracy and the stock model's argmax
    preds = [json.loads(l) for l in (run / "test_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(preds) == 48 and all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in preds)
    assert all(p["predicted"] == max(p["probabilities"], key=p["probabilities"].get) for p in preds)
    assert sum(p["correct"] for p in preds) / 48 == pytest.approx(test["accuracy"])
    assert all(p["correct"] == (p["label"] == p["predicted"]) and p["text"] for p in preds)
    with open(spam_csv, encoding="utf-8") as fh:
        source = {r["text"]: r["label"] for r in csv.DictReader(fh)}
    assert all(source[p["text"]] == p["label"] for p in preds)  # each line is its own row's
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("split") == "validation" for r in rows)
    # The tiny model learns the keyword rule well above chance.
    assert summary["train"]["accuracy"] >= 0.95
    assert summary["test"]["accuracy"] >= 0.8  # majority class: 0.67
    assert summary["hf_compatible"] is True


def test_resume_after_crash_gives_same_result(tmp_path, spam_csv, tiny_llama, monkeypatch):
    """Kill the run mid-way (an exception in the loop after a checkpoint), resume, compare."""
    cfg_full, _ = _run(tmp_path, spam_csv, tiny_llama, name="full", save_every=3)
    full = train_classifier(cfg_full, log=lambda *_: None)

    cfg, _ = _run(tmp_path, spam_csv, tiny_llama, name="crash", save_every=3)

    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 8:  # after the checkpoint of step 6, before step 9's
            raise KeyboardInterrupt("simulated kill")
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(cfg, log=lambda *_: None)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert not (tmp_path / "crash" / "summary.json").exists()
    resumed = train_classifier(cfg, resume=True, log=lambda *_: None)
    assert resumed["steps"] == full["steps"]
    assert resumed["test"] == full["test"]
    assert resumed["validation"] == full["validation"]
    assert resumed["train"] == full["train"]


def test_refuses_to_overwrite_runs(tmp_path, spam_csv, tiny_llama):
    from tunelab.errors import TunelabError

    cfg, _ = _run(tmp_path, spam_csv, tiny_llama, max_steps=2)
    train_classifier(cfg, log=lambda *_: None)
    with pytest.raises(TunelabError, match="already holds a finished run"):
        train_classifier(cfg, log=lambda *_: None)
    train_classifier(cfg, force=True, log=lambda *_: None)


def test_export_parity_with_transformers(tmp_path, spam_csv, tiny_llama):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import tunelab

    cfg, _ = _run(tmp_path, spam_csv, tiny_llama, max_steps=4)
    train_classifier(cfg, log=lambda *_: None)
    clf = tunelab.load(tmp_path / "run", device="cpu")
    texts = ["win cash now", "see you at dinner tonight my love", "ok"]
    ours = clf.logits(texts)
    hf = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "run" / "model")).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "model"))
    with torch.no_grad():
        for text, row in zip(texts, ours):
            enc = tok(text, return_tensors="pt")
            assert torch.allclose(hf(**enc).logits[0], row, atol=1e-5)
    pred = clf.predict(texts)
    assert pred[0]["label"] in ("ham", "spam") and abs(sum(pred[0]["probs"].values()) - 1) < 1e-4


def test_kill_9_then_resume_matches_uninterrupted(tmp_path, spam_csv, tiny_llama):
    """A real `tunelab train` process killed with SIGKILL right after a checkpoint, then resumed."""
    import subprocess
    import sys

    cfg_full, path_full = _run(tmp_path, spam_csv, tiny_llama, name="full", save_every=2, num_threads=1)
    full = train_classifier(cfg_full, log=lambda *_: None)
    _, path = _run(tmp_path, spam_csv, tiny_llama, name="killed", save_every=2, num_threads=1)
    cmd = [sys.executable, "-m", "tunelab.cli", "train", str(path)]
    kill_after_first_checkpoint(cmd, tmp_path / "killed")
    assert subprocess.run(cmd + ["--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    resumed = json.loads((tmp_path / "killed" / "summary.json").read_text())
    for split in ("train", "validation", "test"):
        assert resumed[split] == full[split]


def test_pinned_losses_of_a_tiny_run(tmp_path, spam_csv, tiny_llama):
    """Six steps of the tiny Llama on the synthetic spam rows give these losses, to the last digits:
    a refactor that changes data order, splitting, initialisation or the loss shows up here. (The
    values were printed by the code before and after the layout change of issue 13, identically.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg, _ = _run(tmp_path, spam_csv, tiny_llama, max_steps=6, eval_every=3)
        summary = train_classifier(cfg, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    got = (summary["train"]["loss"], summary["validation"]["loss"], summary["test"]["loss"])
    assert got == pytest.approx((0.6271390318870544, 0.650209367275238, 0.6341702342033386), rel=1e-5)


def test_a_token_budget_works_for_classification_with_the_same_losses(tmp_path, spam_csv, tiny_llama):
    """train.max_tokens_per_micro_batch cuts each step into micro-batches of at most that many
    tokens; the loss is normalised by the whole step, so the run ends where the uncut run does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain, _ = _run(tmp_path, spam_csv, tiny_llama, name="plain", max_steps=6, eval_every=3)
        cut, _ = _run(tmp_path, spam_csv, tiny_llama, name="cut", max_steps=6, eval_every=3, max_tokens_per_micro_batch=24)
        a, b = train_classifier(plain, log=lambda *_: None), train_classifier(cut, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    assert b["steps"] == a["steps"] == 6
    assert b["test"]["loss"] == pytest.approx(a["test"]["loss"], rel=1e-4)


def test_prediction_normalises_like_training(tmp_path, spam_csv, tiny_llama):
    """Training NFC-normalises texts, so prediction does too: NFD Korean gets the NFC logits."""
    import unicodedata

    import tunelab

    cfg, _ = _run(tmp_path, spam_csv, tiny_llama, max_steps=2, eval_every=2)
    train_classifier(cfg, log=lambda *_: None)
    clf = tunelab.load(tmp_path / "run", device="cpu")
    text = "보험금 청구 win cash"
    nfc, nfd = clf.logits([text]), clf.logits([unicodedata.normalize("NFD", text)])
    assert torch.equal(nfc, nfd)
