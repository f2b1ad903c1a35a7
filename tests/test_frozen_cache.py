"""The frozen-prefix cache (train.cache_frozen): the same metrics as without it, used only where it
is exact, a spilled cache on disk, and resume after kill -9 with the cache on."""

import json
import subprocess
import sys

import pytest
import torch
from tests.helpers import base_config, kill_after_first_checkpoint, make_model_dir, write_config

from tunelab.classify.run import train_classifier
from tunelab.config import load_config

DROPOUT_KEYS = ("attn_pdrop", "resid_pdrop", "embd_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "summary_first_dropout")


def _without_dropout(folder):
    """The tiny model with every dropout of its config at 0 (GPT-2 and BERT ship with 0.1)."""
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({k: (0.0 if k in DROPOUT_KEYS else v) for k, v in cfg.items()}))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("frozen-models")
    return {arch: _without_dropout(make_model_dir(root, arch)) for arch in ("llama", "qwen2", "gemma3", "gpt2", "bert")}


def _train(tmp_path, data, model_dir, name, model=None, **train):
    raw = base_config(data, model_dir, tmp_path / name, **{"max_steps": 8, "eval_every": 4, "num_threads": 1, **train})
    raw["model"].update(model or {})
    lines = []
    summary = train_classifier(load_config(write_config(tmp_path / f"{name}.yaml", raw)), log=lambda *a: lines.append(" ".join(map(str, a))))
    return summary, "\n".join(lines)


def _same_scores(got: dict, want: dict) -> None:
    for split in ("train", "validation", "test"):
        assert got[split]["accuracy"] == want[split]["accuracy"], split
        assert got[split]["loss"] == pytest.approx(want[split]["loss"], rel=1e-5, abs=1e-7), split


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2", "bert"])
@pytest.mark.parametrize("trainable", ["head", "last_blocks"])
def test_cached_run_scores_as_the_uncached_one(tmp_path, spam_csv, models, arch, trainable):
    model = {"trainable": trainable, "last_blocks": 1, "pooling": "mean"}
    cached, log = _train(tmp_path, spam_csv, models[arch], "on", model=model, lr=1e-2)
    plain, _ = _train(tmp_path, spam_csv, models[arch], "off", model=model, lr=1e-2, cache_frozen=False)
    assert cached["frozen_cache"] is not None and plain["frozen_cache"] is None
    assert cached["frozen_cache"]["from_block"] == (2 if trainable == "head" else 1)
    assert "frozen-prefix cache: states at the input of block" in log
    _same_scores(cached, plain)
    assert not (tmp_path / "on" / "frozen_states.bin").exists()  # nothing left in the finished run


@pytest.mark.parametrize("model, why", [
    ({"trainable": "all"}, "every block trains"),
    ({"trainable": "lora"}, "every block trains"),
])
def test_cache_is_not_used_where_nothing_is_frozen(tmp_path, spam_csv, models, model, why):
    summary, log = _train(tmp_path, spam_csv, models["llama"], "run", model=model)
    assert summary["frozen_cache"] is None
    assert f"frozen-prefix cache: not used (trainable {model['trainable']}: {why}" in log


def test_cache_is_not_used_with_dropout_in_the_frozen_part(tmp_path, spam_csv, model_root):
    """GPT-2 as released has dropout 0.1 in every block: its frozen states differ at every pass."""
    summary, log = _train(tmp_path, spam_csv, make_model_dir(model_root, "gpt2"), "run", model={"trainable": "head"})
    assert summary["frozen_cache"] is None
    assert "frozen-prefix cache: not used (dropout is active in the frozen blocks" in log


def test_a_spilled_cache_gives_the_states_kept_in_ram(tmp_path, models):
    from tunelab.classify.frozen_cache import build_cache
    from tunelab.classify.run import build_classifier
    from tunelab.config import ModelConfig

    model, tok, _ = build_classifier(ModelConfig(name=str(models["llama"]), trainable="head"), 2, models["llama"], 0)
    seqs = [tok(t)["input_ids"] for t in ("free prize now", "see you at lunch", "win cash", "free prize now")]
    quiet = lambda *a: None  # noqa: E731
    ram = build_cache(model, seqs, tok.pad_token_id, 2, torch.device("cpu"), _no_autocast, tmp_path, log=quiet)
    disk = build_cache(model, seqs, tok.pad_token_id, 2, torch.device("cpu"), _no_autocast, tmp_path, budget=0, log=quiet)
    assert ram.path is None and disk.path == tmp_path / "frozen_states.bin" and disk.path.is_file()
    assert len(disk.index) == 3  # a repeated text is stored once
    width = max(map(len, seqs))
    assert torch.equal(ram.states(seqs, width), disk.states(seqs, width))
    assert disk.close()["memory_mapped"] is True and not (tmp_path / "frozen_states.bin").exists()


class _no_autocast:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_kill_9_then_resume_with_the_cache_matches_uninterrupted(tmp_path, spam_csv, models):
    raw = lambda name: {**base_config(spam_csv, models["llama"], tmp_path / name, save_every=2, num_threads=1),  # noqa: E731
                        "model": {"name": str(models["llama"]), "trainable": "last_blocks", "last_blocks": 1}}
    full = train_classifier(load_config(write_config(tmp_path / "full.yaml", raw("full"))), log=lambda *_: None)
    assert full["frozen_cache"] is not None
    path = write_config(tmp_path / "killed.yaml", raw("killed"))
    cmd = [sys.executable, "-m", "tunelab.cli", "train", str(path)]
    kill_after_first_checkpoint(cmd, tmp_path / "killed")
    assert subprocess.run(cmd + ["--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    resumed = json.loads((tmp_path / "killed" / "summary.json").read_text())
    _same_scores(resumed, full)


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_pooler_head_on_cached_states_gives_the_uncached_logits(tmp_path, model_root, arch):
    """pooling pooler sits after the backbone: the cache feeds its first token's state as usual."""
    from tunelab.classify.frozen_cache import build_cache
    from tunelab.classify.run import build_classifier
    from tunelab.config import ModelConfig

    folder = make_model_dir(model_root, arch)
    model, tok, _ = build_classifier(ModelConfig(name=str(folder), trainable="last_blocks", last_blocks=1, pooling="pooler"), 3, folder, 0)
    model.eval()
    seqs = [tok(t)["input_ids"] for t in ("free prize now", "see you at lunch tomorrow my love", "win cash")]
    cache = build_cache(model, seqs, tok.pad_token_id, 2, torch.device("cpu"), _no_autocast, tmp_path, log=lambda *a: None)
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    with torch.no_grad():
        plain, cached = model(ids, mask), model(ids, mask, frozen_states=cache.states(seqs, width))
    assert torch.allclose(plain, cached, atol=1e-5), (plain - cached).abs().max()
    cache.close()
