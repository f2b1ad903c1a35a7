"""Several processes (tunelab.train.distributed): 2 gloo processes on the CPU, started by the
tests with torchrun (`python -m torch.distributed.run --standalone`) or torch.multiprocessing.

What is checked: a step's examples are dealt to processes as the same number of micro-batches,
each example once; a sharded evaluation gives exactly the scores of one process (uneven batch
counts included); whole runs under DDP and FSDP end with the metrics of one process, for
classification and for SFT (LoRA, a token budget); rank 0 alone logs and writes, metric rows
are not duplicated and the logged train loss is the global mean; a run killed with kill -9 of
one rank resumes on 2 processes (exactly the uninterrupted run) or on 1, and a 1-process
checkpoint resumes on 2 (FSDP).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.helpers import base_config, make_model_dir, one_thread, synthetic_rows, tiny_model, tiny_tokenizer, write_config

from tunelab.config import load_config
from tunelab.errors import TunelabError
from tunelab.train.distributed import check_launch, split_step

QUIET = dict(log=lambda *_: None)
LOSS = dict(rel=1e-4, abs=1e-6)  # DDP sums gradients in another order than one process: last bits differ


def _fsdp_on_cpu() -> str | None:
    """Why FSDP2 cannot run on CPU processes with this torch, or None when it can."""
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError as err:
        return f"torch {torch.__version__} has no FSDP2 fully_shard ({err})"
    if not torch.distributed.is_gloo_available():
        return f"torch {torch.__version__} was built without gloo"
    return None


needs_fsdp = pytest.mark.skipif(_fsdp_on_cpu() is not None, reason=_fsdp_on_cpu() or "")


def torchrun(config: Path, *extra: str, timeout: float = 150) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tunelab.cli", "train", str(config), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_scores(got: dict, want: dict, splits=("train", "validation", "test")) -> None:
    for split in splits:
        for key, value in want[split].items():
            if isinstance(value, float):
                assert got[split][key] == pytest.approx(value, **LOSS), (split, key)
            elif isinstance(value, (int, str)):
                assert got[split][key] == value, (split, key)


# --- the step split, pure -------------------------------------------------------------------


@pytest.mark.parametrize("world", [2, 3])
def test_every_process_gets_as_many_micro_batches_and_every_example_once(world):
    from types import SimpleNamespace as C

    from tunelab.train.loop import micro_batches, plan_steps

    rng = random.Random(0)
    for trial in range(200):
        n = rng.randint(1, 12)
        lengths = [rng.randint(1, 40) for _ in range(n)]
        budget = rng.choice([None, 30, 60])
        cfg = C(batch_size=n, grad_accum=1, max_steps=1, epochs=1, warmup=0, max_tokens_per_micro_batch=budget)
        plan = plan_steps(n, cfg, micro_batch=rng.choice([d for d in range(1, n + 1) if n % d == 0]), lengths=lengths)
        indices = rng.sample(range(n), n)
        parts = split_step(indices, micro_batches(indices, plan), world, lengths if budget else None)
        assert len({len(p) for p in parts}) == 1, parts  # the same count everywhere: no hang
        dealt = sorted(i for p in parts for m in p for i in m)
        assert dealt == list(range(n)), parts
        for p in parts:
            for m in p:
                assert not budget or len(m) <= 1 or sum(lengths[i] for i in m) <= budget
                assert budget or len(m) <= plan.micro_batch


def test_micro_batches_are_balanced_by_tokens():
    lengths = [40, 30, 20, 10]  # dealt in turn, processes would get 60 and 40 tokens
    parts = split_step(list(range(4)), [[0], [1], [2], [3]], 2, lengths)
    load = [sum(lengths[i] for m in p for i in m) for p in parts]
    assert load == [50, 50] and [len(p) for p in parts] == [2, 2]


def test_accelerate_cpu_launch_of_several_processes_is_refused():
    with pytest.raises(TunelabError, match=r"--cpu starts one process.*--multi_gpu --num_processes N.*torchrun"):
        check_launch({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    check_launch({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "h", "WORLD_SIZE": "2", "RANK": "0"})


def test_distributed_is_a_checked_config_key(tmp_path, spam_csv, tiny_llama):
    cfg = base_config(spam_csv, tiny_llama, tmp_path / "r")
    cfg["train"]["distributed"] = "fsdp2"
    with pytest.raises(TunelabError, match=r"'train.distributed' = 'fsdp2' is not one of .*did you mean 'fsdp'"):
        load_config(write_config(tmp_path / "c.yaml", cfg))


# --- sharded evaluation: exactly one process's scores ---------------------------------------


def _scores():
    """Classification and SFT scores of fixed tiny models on items that do not split evenly:
    9 texts and 7 answers in batches of 2 (5 and 4 batches for 2 processes)."""
    from transformers import LlamaConfig, LlamaModel

    from tunelab.classify.collate import ClassificationCollator
    from tunelab.classify.evaluate import evaluate_items
    from tunelab.classify.model import TextClassifier
    from tunelab.sft.evaluate import token_loss

    torch.manual_seed(0)
    backbone = LlamaModel(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0))
    clf = TextClassifier(backbone, 3)
    rng = random.Random(1)
    items = [([rng.randint(3, 63) for _ in range(rng.randint(2, 12))], rng.randint(0, 2)) for _ in range(9)]
    cls = evaluate_items(clf, items, ClassificationCollator(0), 2, torch.device("cpu"), ["a", "b", "c"])
    lm = tiny_model(tiny_tokenizer(), seed=0)
    examples = []
    for _ in range(7):
        ids = [rng.randint(3, 400) for _ in range(rng.randint(4, 16))]
        cut = rng.randint(1, len(ids) - 1)
        examples.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    sft = token_loss(lm, examples, pad_id=0, batch_size=2)
    return {"classification": cls, "sft": sft}


def _sharded_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        scores = _scores()
        Path(f"{out}.{rank}").write_text(json.dumps(scores))
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sharded_evaluation_gives_exactly_the_scores_of_one_process(tmp_path):
    import torch.multiprocessing as mp

    with one_thread():
        alone = json.loads(json.dumps(_scores()))
    mp.spawn(_sharded_worker, args=(_free_port(), str(tmp_path / "scores")), nprocs=2)
    for rank in (0, 1):  # every process gets the whole result
        assert json.loads((tmp_path / f"scores.{rank}").read_text()) == alone
    assert sum(map(sum, alone["classification"]["confusion_matrix"])) == 9  # every text once, none twice


# --- whole runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def spam(root):
    import csv

    path = root / "spam.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(synthetic_rows(150))
    return path


@pytest.fixture(scope="module")
def llama(root):
    return make_model_dir(root / "models", "llama")


def classify_config(root, spam, llama, name, *, model=None, **train) -> Path:
    cfg = base_config(spam, llama, root / name, **{"max_steps": 12, "eval_every": 4, "num_threads": 1, **train})
    cfg["model"].update(model or {})
    return write_config(root / f"{name}.yaml", cfg)


def in_process(config: Path, resume: bool = False) -> dict:
    from tunelab.tasks import recipe

    cfg = load_config(config)
    with one_thread():
        return recipe(cfg.task)(cfg, resume=resume, **QUIET)


@pytest.fixture(scope="module")
def classify_one(root, spam, llama):
    return in_process(classify_config(root, spam, llama, "c1"))


def test_classification_on_two_processes_matches_one_and_rank_0_alone_writes(root, spam, llama, classify_one):
    proc = torchrun(classify_config(root, spam, llama, "c2"))
    two = summary(root / "c2")
    assert two["processes"] == 2 and classify_one["processes"] == 1
    assert_same_scores(two, classify_one)
    assert two["test"]["accuracy"] == classify_one["test"]["accuracy"]
    # Rank 0 alone logs: each line once; metric rows once each, the train loss the global mean.
    assert proc.stdout.count("run folder:") == 1 and proc.stdout.count("plan:") == 1
    assert proc.stdout.count("step 4: val_loss") == 1
    got, want = rows(root / "c2"), rows(root / "c1")
    assert [(r["step"], r.get("split")) for r in got] == [(r["step"], r.get("split")) for r in want]
    for g, w in zip(got, want):
        assert g.get("train_loss", 0) == pytest.approx(w.get("train_loss", 0), **LOSS)
    for name in ("config.yaml", "data_report.json", "test_metrics.json", "model/model.safetensors", "checkpoints/best/info.json"):
        assert (root / "c2" / name).is_file(), name
    leftovers = [p.name for p in (root / "c2").rglob("*") if p.name.startswith((".tmp-", ".trash-"))]
    assert not leftovers


def sft_config(root, name, **train) -> Path:
    from tests.test_sft_run import docqa_rows, write_jsonl
    from tests.test_sft_run import sft_config as make

    folder = root / "tiny-chatml"
    if not folder.is_dir():
        tok = tiny_tokenizer()
        tiny_model(tok, seed=0).save_pretrained(str(folder))
        tok.save_pretrained(str(folder))
    data = write_jsonl(root / "docqa.jsonl", docqa_rows(40))
    # LoRA dropout 0: N processes draw other dropout masks than one, so only a run without dropout matches exactly.
    cfg = make(data, folder, root / name, model={"lora": {"r": 8, "dropout": 0.0}}, **{"max_steps": 6, "eval_every": 3, "num_threads": 1,
                                                                      "max_tokens_per_micro_batch": 150, **train})
    return write_config(root / f"{name}.yaml", cfg)


@pytest.fixture(scope="module")
def sft_one(root):
    return in_process(sft_config(root, "s1"))


def test_sft_lora_with_a_token_budget_on_two_processes_matches_one(root, sft_one):
    torchrun(sft_config(root, "s2"))
    two = summary(root / "s2")
    assert two["processes"] == 2
    assert_same_scores(two, sft_one, splits=("validation",))
    assert two["train"]["loss"] == pytest.approx(sft_one["train"]["loss"], **LOSS)
    assert two["test"]["loss"] == pytest.approx(sft_one["test"]["loss"], **LOSS)
    # Generation was sharded over the processes: the same answers, in the same order.
    assert (root / "s2" / "test_predictions.jsonl").read_text() == (root / "s1" / "test_predictions.jsonl").read_text()
    assert (root / "s2" / "adapter").is_dir()


@needs_fsdp
def test_sft_lora_under_fsdp_matches_one_process(root, sft_one):
    proc = torchrun(sft_config(root, "s2f", distributed="fsdp"))
    assert "-> fsdp: 2 processes" in proc.stdout
    two = summary(root / "s2f")
    assert_same_scores(two, sft_one, splits=("validation",))
    assert two["test"]["loss"] == pytest.approx(sft_one["test"]["loss"], **LOSS)
    # The export holds the full (gathered, merged) weights: they load and score like one process's.
    from safetensors.torch import load_file

    got, want = load_file(str(root / "s2f" / "model" / "model.safetensors")), load_file(str(root / "s1" / "model" / "model.safetensors"))
    assert got.keys() == want.keys()
    assert all(torch.allclose(got[k], want[k], atol=1e-5) for k in want)


# --- resume -----------------------------------------------------------------------------------


def kill_rank_1_after_a_checkpoint(config: Path, run: Path) -> None:
    """torchrun with 2 processes; once a checkpoint exists, SIGKILL rank 1 (torchrun then stops rank 0)."""
    import psutil

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tunelab.cli", "train", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (run / "checkpoints" / "latest").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
    assert workers, "no rank 1 process found"
    os.kill(workers[0].pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not (run / "summary.json").exists(), "finished before the kill; the test needs a slower run"


def test_kill_9_of_one_rank_then_resume_on_2_processes_is_the_uninterrupted_run(root, spam, llama):
    """LoRA with dropout: each process's own generator state is in the checkpoint, so 2 -> 2 is exact."""
    lora = {"trainable": "lora", "lora": {"r": 4, "dropout": 0.1}}
    torchrun(classify_config(root, spam, llama, "full2", model=lora, max_steps=60, eval_every=20, save_every=2, lr=5e-3))
    config = classify_config(root, spam, llama, "killed2", model=lora, max_steps=60, eval_every=20, save_every=2, lr=5e-3)
    kill_rank_1_after_a_checkpoint(config, root / "killed2")
    torchrun(config, "--resume")
    resumed, full = summary(root / "killed2"), summary(root / "full2")
    for split in ("train", "validation", "test"):
        assert resumed[split] == full[split]
    assert [r["step"] for r in rows(root / "killed2")] == [r["step"] for r in rows(root / "full2")]


@needs_fsdp
def test_fsdp_checkpoints_resume_on_one_process_and_one_process_checkpoints_on_two(root, spam, llama, classify_one, monkeypatch):
    """2 -> 1: an FSDP run killed with kill -9 of rank 1 resumes in one process. 1 -> 2: a run that
    crashed in one process resumes on 2 FSDP processes. Both end with the uninterrupted metrics."""
    config = classify_config(root, spam, llama, "f21", max_steps=12, save_every=2, distributed="fsdp")
    kill_rank_1_after_a_checkpoint(config, root / "f21")
    assert_same_scores(in_process(config, resume=True), classify_one)

    config = classify_config(root, spam, llama, "f12", max_steps=12, save_every=2, distributed="fsdp")
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # after the checkpoint of step 6
            raise KeyboardInterrupt("simulated kill")
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        in_process(config)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    proc = torchrun(config, "--resume")
    assert "resumed from step-0000006" in proc.stdout
    assert_same_scores(summary(root / "f12"), classify_one)
