"""Sweeps on tiny models: end to end in worker processes (reports), resume after an interrupted
sweep (finished runs not re-run), changed cells detected, a crashed run not ending the sweep."""

import argparse
import json

import pytest
import torch
import yaml
from tests.helpers import base_config, read_json, write_config

from tunelab.errors import TunelabError
from tunelab.sweep import run_sweep

SILENT = dict(log=lambda *_: None)


def _setup(tmp_path, spam_csv, model_dir, sweep: str, **train) -> object:
    write_config(tmp_path / "base.yaml", base_config(spam_csv, model_dir, tmp_path / "unused", max_steps=4, eval_every=2, **train))
    path = tmp_path / "sweep.yaml"
    path.write_text(sweep.replace("OUT", str(tmp_path / "out")))
    return path


TWO_BY_TWO = """
base: base.yaml
output_dir: OUT
seeds: [1, 2]
groups:
  trainable:
    question: Which layers train?
    variants:
      head: {model.trainable: head}
      all: {model.trainable: all}
"""


def test_tiny_sweep_end_to_end_in_worker_processes(tmp_path, spam_csv, tiny_llama, capsys):
    from tunelab.commands import sweep as command

    path = _setup(tmp_path, spam_csv, tiny_llama, TWO_BY_TWO)
    parser = argparse.ArgumentParser()
    command.configure(parser)
    assert command.run(parser.parse_args([str(path), "--parallel", "2", "--threads", "1"])) == 0
    printed = capsys.readouterr().out
    assert "runs 4/4 done, cells 2/2, 0 left" in printed and "trainable--head" in printed

    out = tmp_path / "out"
    for name in ("results.csv", "results.md", "report.html", "sweep.json", "sweep.yaml", "plots/accuracy_vs_time.png", "plots/bars-trainable.png", "plots/curves-trainable.png"):
        assert (out / name).is_file(), name
    run = out / "runs" / "trainable--all" / "seed-2"
    cell = read_json(run / "cell.json")
    assert cell["overrides"] == {"model.trainable": "all"} and cell["seed"] == 2 and len(cell["hash"]) == 16
    assert (run / "summary.json").is_file() and (run / "train.log").is_file()
    assert not (run / "checkpoints").exists() and not (run / "model").exists()  # keep: metrics
    summaries = {s: read_json(out / "runs" / "trainable--all" / f"seed-{s}" / "summary.json") for s in (1, 2)}
    assert summaries[1]["pid"] != summaries[2]["pid"]  # one process per run
    lines = (out / "results.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("group,dataset,variant,cell,seed,train_accuracy")
    md = (out / "results.md").read_text()
    assert "## trainable: Which layers train?" in md and "| – | head | 2 |" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "<table>" in html
    # Reports only, nothing rerun.
    assert command.run(parser.parse_args([str(path), "--report-only"])) == 0
    assert read_json(run / "summary.json") == summaries[2]


def test_interrupted_sweep_resumes_without_rerunning_finished_runs(tmp_path, spam_csv, tiny_llama, monkeypatch):
    path = _setup(tmp_path, spam_csv, tiny_llama, TWO_BY_TWO, save_every=1)
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4 + 4 + 3:  # step 3 of the third run
            raise KeyboardInterrupt("simulated Ctrl-C")
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(path, isolate=False, **SILENT)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    runs = tmp_path / "out" / "runs"
    finished = [runs / "trainable--head" / "seed-1", runs / "trainable--head" / "seed-2"]
    partial = runs / "trainable--all" / "seed-1"
    assert all((f / "summary.json").is_file() for f in finished)
    assert not (partial / "summary.json").exists() and (partial / "checkpoints").is_dir()
    mtimes = [(f / "summary.json").stat().st_mtime_ns for f in finished]

    import tunelab.sweep.worker as worker

    started = []
    real_run_folder = worker.run_folder
    monkeypatch.setattr(worker, "run_folder", lambda folder, *a, **k: started.append(str(folder)) or real_run_folder(folder, *a, **k))
    result = run_sweep(path, isolate=False, **SILENT)
    assert started == [str(partial), str(runs / "trainable--all" / "seed-2")]
    assert [(f / "summary.json").stat().st_mtime_ns for f in finished] == mtimes
    assert len(result["outcome"].reused) == 2 and len(result["outcome"].ran) == 2
    steps = [json.loads(l)["step"] for l in (partial / "metrics.jsonl").read_text().splitlines() if "train_loss" in l]
    assert read_json(partial / "summary.json")["steps"] == 4 and steps == sorted(set(steps))
    assert [c["n"] for c in result["cells"]] == [2, 2]
    # A third invocation runs nothing.
    started.clear()
    assert run_sweep(path, isolate=False, **SILENT)["outcome"].ran == [] and started == []


def test_changed_cell_is_detected_not_mixed(tmp_path, spam_csv, tiny_llama):
    sweep = "base: base.yaml\noutput_dir: OUT\nseeds: [1]\nvariants:\n  a: {train.lr: 1.0e-3}\n  b: {train.lr: 2.0e-3}\n"
    path = _setup(tmp_path, spam_csv, tiny_llama, sweep)
    run_sweep(path, isolate=False, **SILENT)
    b_summary = tmp_path / "out" / "runs" / "b" / "seed-1" / "summary.json"
    before = b_summary.stat().st_mtime_ns
    path.write_text(path.read_text().replace("a: {train.lr: 1.0e-3}", "a: {train.lr: 5.0e-3}"))
    with pytest.raises(TunelabError) as err:
        run_sweep(path, isolate=False, **SILENT)
    msg = str(err.value)
    assert "a seed 1" in msg and "train.lr: 0.001 -> 0.005" in msg and "--rerun-changed" in msg and "b seed 1" not in msg
    # Adding a seed is not a change: only new runs.
    result = run_sweep(path, isolate=False, rerun_changed=True, **SILENT)
    assert [r.label for r in result["outcome"].ran] == ["a seed 1"]
    assert read_json(tmp_path / "out" / "runs" / "a" / "seed-1" / "cell.json")["config"]["train"]["lr"] == 5e-3
    assert b_summary.stat().st_mtime_ns == before
    path.write_text(path.read_text().replace("seeds: [1]", "seeds: [1, 2]"))
    result = run_sweep(path, isolate=False, **SILENT)
    assert sorted(r.label for r in result["outcome"].ran) == ["a seed 2", "b seed 2"]


def test_a_failing_run_does_not_end_the_sweep(tmp_path, spam_csv, tiny_llama):
    sweep = "base: base.yaml\noutput_dir: OUT\nseeds: [1]\nvariants:\n  broken: {data.train: missing.csv}\n  fine: {}\n"
    path = _setup(tmp_path, spam_csv, tiny_llama, sweep)
    result = run_sweep(path, isolate=False, **SILENT)
    (failed, msg), = result["outcome"].failed
    assert failed.label == "broken seed 1" and "missing.csv" in msg
    assert [r.label for r in result["outcome"].ran] == ["fine seed 1"]
    assert "1 run(s) failed" in (tmp_path / "out" / "results.md").read_text()


def test_a_run_still_trained_by_a_live_worker_is_not_started_twice(tmp_path, spam_csv, tiny_llama):
    """A sweep killed with -9 leaves its worker running; a new sweep must not train the same folder."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tunelab.sweep.runner import execute, write_cell_json
    from tunelab.sweep.spec import load_sweep

    path = _setup(tmp_path, spam_csv, tiny_llama, "base: base.yaml\noutput_dir: OUT\nseeds: [1]\n")
    _, _, runs = load_sweep(path)
    write_cell_json(runs[0])
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "tunelab.sweep.worker"])
    while b"worker" not in Path(f"/proc/{fake.pid}/cmdline").read_bytes():  # until the child has exec'd
        time.sleep(0.01)
    try:
        (runs[0].folder / "worker.pid").write_text(str(fake.pid))
        with pytest.raises(TunelabError, match=f"being trained by another process.*pid {fake.pid}"):
            execute(runs, isolate=False, **SILENT)
    finally:
        fake.kill()
        fake.wait()
    assert execute(runs, isolate=False, **SILENT).ran == runs  # the dead pid no longer blocks
    assert not (runs[0].folder / "worker.pid").exists()


def test_a_field_added_to_tunelab_is_not_a_changed_cell(tmp_path, spam_csv, tiny_llama):
    """An old cell.json lacks fields added to the schema since; at their default that is no change."""
    from tunelab.sweep.runner import status, write_cell_json
    from tunelab.sweep.spec import load_sweep

    path = _setup(tmp_path, spam_csv, tiny_llama, "base: base.yaml\noutput_dir: OUT\nseeds: [1]\n")
    _, _, (run,) = load_sweep(path)
    write_cell_json(run)
    meta = run.folder / "cell.json"
    stored = read_json(meta)
    del stored["config"]["model"]["head_dropout"]  # as if written before this field existed
    stored["config"]["train"]["some_removed_field"] = 3  # and with one tunelab no longer has
    stored["hash"] = "0" * 16
    meta.write_text(json.dumps(stored))
    assert status(run) == "partial"
    stored["config"]["train"]["lr"] = 1.0
    meta.write_text(json.dumps(stored))
    assert status(run) == "changed"


def test_sigterm_stops_the_sweep_and_its_workers(tmp_path, spam_csv, tiny_llama):
    """A sweep run in the background ignores Ctrl-C's SIGINT, so it is stopped with SIGTERM: its
    worker must stop too, not train on as an orphan."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = _setup(tmp_path, spam_csv, tiny_llama, "base: base.yaml\noutput_dir: OUT\nseeds: [1]\n")
    base = yaml.safe_load((tmp_path / "base.yaml").read_text())
    base["train"].update(max_steps=100000, eval_every=1000)  # long enough to be stopped mid-run
    write_config(tmp_path / "base.yaml", base)
    sweep = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "sweep", str(path), "--threads", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (pid_files := list((tmp_path / "out").rglob("worker.pid"))):
        time.sleep(0.1)
    assert pid_files, "the worker never started"
    worker = int(pid_files[0].read_text())
    sweep.send_signal(signal.SIGTERM)
    out, _ = sweep.communicate(timeout=60)
    assert sweep.returncode != 0 and "Run the same command again to resume" in out
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)  # gone, not orphaned


def test_eta_uses_each_cells_own_run_time_so_slow_cells_do_not_inflate_fast_ones():
    from types import SimpleNamespace

    from tunelab.sweep.runner import estimate_seconds_left

    def run(slug):
        return SimpleNamespace(cell=SimpleNamespace(slug=slug))

    finished = {"all-layers": [300.0, 320.0], "head": [60.0]}
    # Two more head runs at ~60 s and one all-layer run at ~310 s, two at a time.
    assert estimate_seconds_left([run("head"), run("head"), run("all-layers")], finished, 2) == pytest.approx((60 + 60 + 310) / 2)
    # A cell with no finished run yet is expected to take the median run (300 s), not the mean.
    assert estimate_seconds_left([run("lora")], finished, 1) == pytest.approx(300.0)
    assert estimate_seconds_left([], finished, 1) == 0.0
    assert estimate_seconds_left([run("head")], {}, 1) is None
