"""Precision on a CPU: fp32 by default, bf16 when asked for and the CPU does it natively (about
2x faster there), a clear refusal otherwise; and the train score on a sample of the training rows."""

import pytest
from tests.helpers import base_config, write_config

import tunelab.train.runtime as run_module
from tunelab.classify.run import train_classifier
from tunelab.config import TrainConfig, load_config
from tunelab.errors import TunelabError
from tunelab.train.runtime import make_accelerator, sample_rows


def test_cpu_default_is_fp32():
    _, precision = make_accelerator(TrainConfig(device="cpu"))
    assert precision == "fp32"


def test_cpu_fp16_is_refused_with_the_alternatives():
    with pytest.raises(TunelabError, match="fp16 needs a GPU.*fp32 or bf16"):
        make_accelerator(TrainConfig(device="cpu", precision="fp16"))


def test_cpu_bf16_is_refused_where_it_would_be_emulated(monkeypatch):
    monkeypatch.setattr(run_module, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(TunelabError, match="train.precision=fp32"):
        make_accelerator(TrainConfig(device="cpu", precision="bf16"))


def test_cpu_bf16_autocasts_where_native(monkeypatch):
    monkeypatch.setattr(run_module, "cpu_has_native_bf16", lambda: True)
    accelerator, precision = make_accelerator(TrainConfig(device="cpu", precision="bf16"))
    assert precision == "bf16" and accelerator.mixed_precision == "bf16"


def test_sample_rows_is_seeded_and_keeps_order():
    rows = list(range(100))
    a, b = sample_rows(rows, 10, seed=3), sample_rows(rows, 10, seed=3)
    assert a == b == sorted(a) and len(set(a)) == 10
    assert sample_rows(rows, 10, seed=4) != a
    assert sample_rows(rows, None, seed=3) is rows and sample_rows(rows, 500, seed=3) is rows


def test_bf16_cpu_run_scores_a_sample_of_the_training_rows(tmp_path, spam_csv, tiny_llama, monkeypatch):
    monkeypatch.setattr(run_module, "cpu_has_native_bf16", lambda: True)
    raw = base_config(spam_csv, tiny_llama, tmp_path / "run", epochs=12, eval_every="epoch", seed=8, precision="bf16", device="cpu")
    raw["eval"] = {"train_rows": 50}
    summary = train_classifier(load_config(write_config(tmp_path / "c.yaml", raw)), log=lambda *_: None)
    assert summary["precision"] == "bf16"
    assert summary["train"]["rows_scored"] == 50
    assert summary["test"]["accuracy"] > 0.7  # above the majority class (0.67): it learns in bf16 too
