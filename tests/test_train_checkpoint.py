"""Checkpoints hold no pickle and resume exactly: the on-disk format (safetensors + JSON), a
planted pickle payload never runs, old-format (optim.pt) checkpoints are refused with advice,
damaged files are named, and a kill at any moment of a save leaves the previous checkpoint
usable and no partial folder (the temporaries are removed at the next start)."""

import json
import os
import pickle
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tunelab.config import TrainConfig
from tunelab.errors import TunelabError
from tunelab.train import checkpoint as ckpt
from tunelab.train.loop import fit, plan_steps
from tunelab.train.optim import make_optimizer, make_scheduler
from tunelab.train.runtime import make_accelerator

QUIET = {"log": lambda *a: None}


class MSE:
    def count(self, batch):
        return float(len(batch["x"]))

    def __call__(self, model, batch):
        return ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).sum()


def collate(items):
    return {"x": torch.stack([x for x, _ in items]), "y": torch.tensor([y for _, y in items])}


def run(out, steps=12, resume=False, **train):
    """A linear model trained by the real loop, checkpointing every 3 steps."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    data = [(torch.randn(3), float(i % 2)) for i in range(16)]
    cfg = TrainConfig(**{"max_steps": steps, "batch_size": 4, "lr": 1e-2, "warmup": 2, "device": "cpu", "save_every": 3, **train})
    accelerator, _ = make_accelerator(cfg)
    result = fit(model, data, collate, MSE(), None, cfg, plan_steps(len(data), cfg), out, accelerator, resume=resume, **QUIET)
    return model, result


def crash_at_step(monkeypatch, n):
    """AdamW.step raises on its n-th call (the run dies mid-way, after earlier checkpoints)."""
    real, calls = torch.optim.AdamW.step, {"n": 0}

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("killed")
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying)
    return lambda: monkeypatch.setattr(torch.optim.AdamW, "step", real)


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def pickle_bomb(marker):
    """Bytes whose unpickling creates `marker` (what a malicious optim.pt would do)."""

    class Bomb:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"optimizer": Bomb()})


@pytest.fixture
def full(tmp_path):
    return run(tmp_path / "full")


@pytest.fixture
def crashed(tmp_path, monkeypatch):
    """A run killed in step 8: its checkpoints are those of steps 3 and 6 (latest: 6)."""
    restore = crash_at_step(monkeypatch, 8)
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "crash")
    restore()
    return tmp_path / "crash"


def test_the_on_disk_format_is_safetensors_and_json(crashed):
    root = crashed / "checkpoints"
    folder = ckpt.latest_checkpoint(root)
    assert folder.name == "step-0000006" and (root / "latest").read_text() == "step-0000006\n"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-0000006"]  # step 3 pruned, no temporaries
    assert sorted(p.name for p in folder.iterdir()) == sorted(ckpt.FILES)
    optim = load_file(str(folder / "optimizer.safetensors"))
    # two param groups (weight decay or not): the weight matrix is param 0, the bias param 1
    assert set(optim) == {f"state.{i}.{k}" for i in (0, 1) for k in ("step", "exp_avg", "exp_avg_sq")}
    assert optim["state.0.exp_avg"].shape == (1, 3) and float(optim["state.1.step"]) == 6.0
    rng = load_file(str(folder / "rng.safetensors"))
    assert rng["torch"].dtype == torch.uint8
    resume = json.loads((folder / "resume.json").read_text())
    assert resume["format"] == ckpt.FORMAT
    assert resume["optimizer"]["state"] == {"$int_keys": {str(i): {k: {"$tensor": f"state.{i}.{k}"} for k in ("step", "exp_avg", "exp_avg_sq")} for i in (0, 1)}}
    assert resume["optimizer"]["param_groups"][0]["betas"] == {"$tuple": [0.9, 0.999]}
    assert resume["scheduler"]["last_epoch"] == 6
    assert len(resume["rng"]["numpy"]["key"]) == 624 and len(resume["rng"]["python"]["internal"]) == 625
    assert json.loads((folder / "state.json").read_text())["step"] == 6


def test_save_then_load_restores_every_state_exactly(tmp_path):
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 2)
    opt = make_optimizer(model, 1e-2, 0.1)
    sched = make_scheduler(opt, 20, 3, "cosine")
    for _ in range(4):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    random.seed(3)
    np.random.seed(4)
    np.random.standard_normal()  # numpy now holds a cached gaussian
    random.gauss(0, 1)
    folder = ckpt.save_checkpoint(tmp_path, 4, model, opt, sched, {"step": 4, "best_value": None})
    expected = (random.random(), np.random.standard_normal(), torch.rand(3))
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()

    torch.manual_seed(99)
    model2 = torch.nn.Linear(4, 2)
    opt2 = make_optimizer(model2, 1e-2, 0.1)
    sched2 = make_scheduler(opt2, 20, 3, "cosine")
    random.seed(0)
    np.random.seed(0)
    assert ckpt.load_checkpoint(folder, model2, opt2, sched2) == {"step": 4, "best_value": None}
    assert same_weights(model, model2)
    got = opt2.state_dict()
    assert got["param_groups"] == saved_opt["param_groups"]  # lr, betas (a tuple again), initial_lr, ...
    assert type(got["param_groups"][0]["betas"]) is tuple
    for i, state in saved_opt["state"].items():
        assert state.keys() == got["state"][i].keys()
        assert all(torch.equal(state[k], got["state"][i][k]) for k in state)
    assert sched2.state_dict() == saved_sched
    assert (random.random(), np.random.standard_normal()) == expected[:2] and torch.equal(torch.rand(3), expected[2])


def test_interrupted_then_resumed_equals_uninterrupted(full, crashed):
    model, result = run(crashed, resume=True)
    assert same_weights(model, full[0])  # bit for bit
    # (the logged train_loss of step 10 averages only the steps since the resume: the loop's own affair)
    assert [(r["step"], r["lr"]) for r in result.history] == [(r["step"], r["lr"]) for r in full[1].history]


def test_resume_never_unpickles_anything(crashed, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("pickle was used to load a checkpoint")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    _, result = run(crashed, resume=True)
    assert result.steps == 12


def test_a_planted_pickle_payload_never_runs(tmp_path, full, crashed):
    control = tmp_path / "control-marker"
    pickle.loads(pickle_bomb(control))  # the payload does what it says when unpickled
    assert control.exists()

    marker = tmp_path / "pwned"
    folder = crashed / "checkpoints" / "step-0000006"
    for name in ("optim.pt", "rng.pt", "model.bin", "state.pkl"):
        (folder / name).write_bytes(pickle_bomb(marker))
    model, _ = run(crashed, resume=True)
    assert not marker.exists()
    assert same_weights(model, full[0])  # resumed from the safetensors/JSON files, exactly


def test_an_old_format_checkpoint_is_refused_unopened(tmp_path, crashed):
    """A checkpoint from before (state.json + optim.pt, a pickle) is refused, naming the folder."""
    marker = tmp_path / "pwned"
    root = crashed / "checkpoints"
    old = root / "step-0000006"
    for name in ("optimizer.safetensors", "rng.safetensors", "resume.json"):
        (old / name).unlink()
    (old / "optim.pt").write_bytes(pickle_bomb(marker))
    with pytest.raises(TunelabError, match=r"step-0000006: a checkpoint in tunelab's old format \(optim.pt, a pickle file\).*"
                                           r"without --resume.*--force.*delete .*checkpoints"):
        run(crashed, resume=True)
    assert not marker.exists()
    with pytest.raises(TunelabError, match="old format"):  # load_checkpoint refuses it too
        model = torch.nn.Linear(3, 1)
        opt = make_optimizer(model, 1e-2, 0.0)
        ckpt.load_checkpoint(old, model, opt, make_scheduler(opt, 12, 2, "linear"))
    assert not marker.exists()


@pytest.mark.parametrize("name, damage", [
    ("optimizer.safetensors", "truncate"), ("trainable.safetensors", "truncate"), ("rng.safetensors", "empty"),
    ("resume.json", "truncate"), ("state.json", "garbage"), ("resume.json", "list"), ("optimizer.safetensors", "delete"),
])
def test_a_damaged_checkpoint_file_is_named(crashed, name, damage):
    folder = crashed / "checkpoints" / "step-0000006"
    path = folder / name
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"\xff\xfe not json")
    elif damage == "list":
        path.write_text("[1, 2]")
    if damage == "delete":
        path.unlink()  # an incomplete folder is not a checkpoint: nothing left to resume from, starts at 0
        _, result = run(crashed, resume=True)
        assert result.steps == 12
        return
    with pytest.raises(TunelabError, match=rf"{path}: damaged.*delete {folder}.*--force"):
        run(crashed, resume=True)


def test_a_tampered_resume_json_is_named(crashed):
    path = crashed / "checkpoints" / "step-0000006" / "resume.json"
    resume = json.loads(path.read_text())
    resume["optimizer"]["state"]["$int_keys"]["0"]["exp_avg"] = {"$tensor": "state.9.nothing"}
    path.write_text(json.dumps(resume))
    with pytest.raises(TunelabError, match=rf"{path}: damaged checkpoint file \(names a tensor 'state.9.nothing'"):
        run(crashed, resume=True)


def test_latest_checkpoint_skips_incomplete_folders_and_a_bad_pointer(crashed, capsys):
    root = crashed / "checkpoints"
    assert ckpt.latest_checkpoint(root).name == "step-0000006"
    partial = root / "step-0000009"
    partial.mkdir()
    (partial / "state.json").write_text('{"step": 9}')  # e.g. a copy cut short
    (root / "latest").write_text("step-0000009\n")
    assert ckpt.latest_checkpoint(root).name == "step-0000006"
    assert "ignored the incomplete checkpoint" in capsys.readouterr().out
    (root / "latest").write_text("../../etc\n")
    assert ckpt.latest_checkpoint(root).name == "step-0000006"
    assert ckpt.latest_checkpoint(crashed / "nothing-here") is None


def test_a_failure_inside_the_writer_keeps_the_previous_checkpoint(tmp_path, full, monkeypatch):
    """The writer raises while step 6's files are written: step 3 stays the checkpoint, no temp."""
    real = ckpt.save_file

    def failing(tensors, filename, *a, **k):
        if "step-0000006" in filename and filename.endswith("optimizer.safetensors"):
            with open(filename, "wb") as fh:
                fh.write(b"half")
            raise OSError("disk full")
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(ckpt, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path / "r")
    monkeypatch.setattr(ckpt, "save_file", real)
    root = tmp_path / "r" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-0000003"]
    model, _ = run(tmp_path / "r", resume=True)
    assert same_weights(model, full[0])


def test_a_kill_between_write_and_rename_leaves_a_temporary_that_resume_removes(tmp_path, full, monkeypatch, capsys):
    """As if killed after step 6's folder was written, before it was renamed into place (the
    rename never happens and nothing cleans up)."""
    import tunelab.data.io_atomic as io_atomic

    real = io_atomic.replace_dir

    def killed(tmp, final, **k):
        if str(final).endswith("step-0000006"):
            raise SystemExit("killed")
        return real(tmp, final, **k)

    monkeypatch.setattr(io_atomic, "replace_dir", killed)
    with pytest.raises(SystemExit):
        run(tmp_path / "r")
    monkeypatch.setattr(io_atomic, "replace_dir", real)
    root = tmp_path / "r" / "checkpoints"
    stale = root / f".tmp-step-0000006-{os.getpid()}"
    assert stale.is_dir() and (root / "latest").read_text() == "step-0000003\n"
    capsys.readouterr()
    model, _ = run(tmp_path / "r", resume=True)
    assert f"removed stale temporary folder {stale} left by an interrupted write" in capsys.readouterr().out
    assert not stale.exists()
    assert same_weights(model, full[0])


def test_a_real_kill_9_in_the_middle_of_a_save(tmp_path):
    """A process SIGKILLs itself while writing step 6's optimizer file: the folder on disk holds
    step 3 whole, `latest` names it, and the half-written temporary is removed when resuming."""
    root = tmp_path / "checkpoints"
    script = textwrap.dedent(f"""
        import os, signal, torch
        from tunelab.train import checkpoint as ckpt
        from tunelab.train.optim import make_optimizer, make_scheduler
        from pathlib import Path
        model = torch.nn.Linear(3, 1)
        opt = make_optimizer(model, 1e-2, 0.0)
        sched = make_scheduler(opt, 12, 2, "linear")
        def train():
            model(torch.randn(4, 3)).sum().backward(); opt.step(); sched.step(); opt.zero_grad()
        train()
        ckpt.save_checkpoint(Path({str(root)!r}), 3, model, opt, sched, {{"step": 3}})
        real = ckpt.save_file
        def dying(tensors, filename, *a, **k):
            if filename.endswith("optimizer.safetensors"):
                with open(filename, "wb") as fh:
                    fh.write(b"half a file")
                os.kill(os.getpid(), signal.SIGKILL)
            return real(tensors, filename, *a, **k)
        ckpt.save_file = dying
        train()
        ckpt.save_checkpoint(Path({str(root)!r}), 6, model, opt, sched, {{"step": 6}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    (stale,) = [p for p in root.iterdir() if p.name.startswith(".tmp-step-0000006-")]
    assert (stale / "optimizer.safetensors").read_bytes() == b"half a file"
    assert sorted(p.name for p in root.iterdir()) == sorted(["latest", "step-0000003", stale.name])
    folder = ckpt.latest_checkpoint(root)
    assert folder.name == "step-0000003"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-0000003"]
    model = torch.nn.Linear(3, 1)
    opt = make_optimizer(model, 1e-2, 0.0)
    assert ckpt.load_checkpoint(folder, model, opt, make_scheduler(opt, 12, 2, "linear"))["step"] == 3


def test_a_kill_between_the_two_renames_of_best_puts_the_old_best_back(tmp_path, capsys):
    """replace_dir moved best/ aside and died before the new one went in: the old best is
    restored (it matches the checkpoint the run resumes from), the new temporary removed."""
    root = tmp_path / "checkpoints"
    model = torch.nn.Linear(3, 1)
    ckpt.save_best(root, model, {"step": 3, "loss": 1.0})
    dead = 999_999_999  # no such process
    os.replace(root / "best", root / f".trash-best-{dead}")
    (root / f".tmp-best-{dead}").mkdir()
    (root / f".tmp-best-{dead}" / "info.json").write_text('{"step": 6}')
    assert ckpt.latest_checkpoint(root) is None
    out = capsys.readouterr().out
    assert f"restored {root / 'best'} from .trash-best-{dead}, left by an interrupted replace" in out
    assert f"removed stale temporary folder {root / f'.tmp-best-{dead}'}" in out
    assert sorted(p.name for p in root.iterdir()) == ["best"]
    assert ckpt.load_best(root, torch.nn.Linear(3, 1)) == {"step": 3, "loss": 1.0}


def test_a_damaged_best_is_named(tmp_path):
    root = tmp_path / "checkpoints"
    ckpt.save_best(root, torch.nn.Linear(3, 1), {"step": 3})
    (root / "best" / "trainable.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(TunelabError, match=r"best/trainable.safetensors: damaged.*--force"):
        ckpt.load_best(root, torch.nn.Linear(3, 1))


def test_resuming_a_run_removes_the_temporaries_of_killed_writes(tmp_path, capsys):
    """prepare_run_dir on --resume: stale .tmp-/.trash- folders of checkpoints, best and model
    are removed (one line each); everything else in the run folder is kept."""
    from tests.helpers import base_config, write_config

    from tunelab.config import load_config
    from tunelab.train.runtime import prepare_run_dir

    cfg = load_config(write_config(tmp_path / "c.yaml", base_config(tmp_path / "d.csv", tmp_path / "m", tmp_path / "run")))
    run_dir = prepare_run_dir(cfg, resume=False, force=False)
    dead = 999_999_999
    stale = [run_dir / f".tmp-model-{dead}", run_dir / f".tmp-adapter-{dead}", run_dir / "checkpoints" / f".tmp-step-0000006-{dead}",
             run_dir / "checkpoints" / f".tmp-best-{dead}", run_dir / "checkpoints" / f".gone-step-0000003-{dead}"]
    keep = [run_dir / "checkpoints" / "step-0000003", run_dir / "checkpoints" / "best", run_dir / "model", run_dir / "my-notes", run_dir / ".tmp-mine"]
    for p in stale + keep:
        (p / "sub").mkdir(parents=True)
        (p / "sub" / "f").write_text("x")
    (run_dir / f".trash-model-{dead}").mkdir()  # model/ exists, so this old copy is garbage too
    stale.append(run_dir / f".trash-model-{dead}")
    capsys.readouterr()
    with pytest.raises(TunelabError, match="unfinished run"):  # not resuming: nothing is touched
        prepare_run_dir(cfg, resume=False, force=False)
    assert all(p.exists() for p in stale)
    prepare_run_dir(cfg, resume=True, force=False)
    out = capsys.readouterr().out.splitlines()
    assert sorted(out) == sorted(f"removed stale temporary folder {p} left by an interrupted write" for p in stale)
    assert not any(p.exists() for p in stale)
    assert all((p / "sub" / "f").is_file() for p in keep)


def test_a_run_that_stopped_before_training_starts_again_without_force(tmp_path):
    """Bad input found after the run folder was made (here: a decoder asked for the encoder-only
    pooler head) leaves only config.yaml; fixing the config and running again needs no --force,
    while a folder with anything more is still refused."""
    import csv

    from tests.helpers import base_config, make_model_dir, synthetic_rows, write_config

    from tunelab.classify.run import train_classifier
    from tunelab.config import load_config

    data = tmp_path / "d.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(synthetic_rows(40))
    raw = base_config(data, make_model_dir(tmp_path, "llama"), tmp_path / "run", max_steps=1)
    raw["model"]["pooling"] = "pooler"
    with pytest.raises(TunelabError, match="pooler is for encoders"):
        train_classifier(load_config(write_config(tmp_path / "bad.yaml", raw)), log=lambda *_: None)
    assert {p.name for p in (tmp_path / "run").iterdir()} <= {"config.yaml", "data_report.json"}
    raw["model"]["pooling"] = "last"
    summary = train_classifier(load_config(write_config(tmp_path / "good.yaml", raw)), log=lambda *_: None)
    assert summary["steps"] == 1 and (tmp_path / "run" / "summary.json").is_file()
    (tmp_path / "run" / "summary.json").unlink()
    with pytest.raises(TunelabError, match="unfinished run"):  # checkpoints and metrics: a real unfinished run
        train_classifier(load_config(write_config(tmp_path / "good.yaml", raw)), log=lambda *_: None)
