"""A shared corpus of malformed inputs and dangerous outputs, run through the real command line.

Every case must exit non-zero with one message that names the file, flag or key at fault, print
no traceback, and leave every input byte-identical (checksums before and after). The corpus is
also what docs/benchmarks.md's reliability table counts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from tests.helpers import base_config, make_model_dir, synthetic_rows, write_config

from tunelab.cli import main
from tunelab.data.outputs import check_output
from tunelab.errors import TunelabError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("malformed"))


def build_world(root: Path) -> Path:
    """A tiny trained classification run and the files the cases read (also used by
    bench/reliability.py, which counts the outcomes for docs/benchmarks.md)."""
    import csv

    model = make_model_dir(root, "llama")
    data = root / "messages.csv"
    with open(data, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(synthetic_rows(60))
    cfg = write_config(root / "c.yaml", base_config(data, model, root / "runs" / "good", max_steps=2, eval_every=2))
    assert main(["train", str(cfg)]) == 0
    (root / "empty.csv").write_text("")
    (root / "header-only.csv").write_text("text,label\n")
    (root / "texts.txt").write_text("win cash now\nsee you at dinner\n")
    (root / "empty.txt").write_text("")
    (root / "mixed-labels.jsonl").write_text('{"text": "a b", "label": 1}\n{"text": "c d", "label": "1"}\n' * 5)
    (root / "object-text.jsonl").write_text('{"text": {"a": 1}, "label": "x"}\n' * 5)
    (root / "a-file").write_text("not a folder\n")
    (root / "null-text.jsonl").write_text('{"text": "win cash"}\n{"text": null}\n')
    (root / "cp949.txt").write_bytes("보험금 청구\n".encode("cp949"))
    (root / "dup-columns.csv").write_text("text,label,text\nwin cash,spam,see you\n" * 3)
    (root / "not-tunelab").mkdir()
    (root / "not-tunelab" / "notes.txt").write_text("mine\n")
    # A run whose weights were cut short, and one whose tunelab.json is damaged.
    import shutil

    for name in ("truncated", "bad-meta"):
        shutil.copytree(root / "runs" / "good", root / "runs" / name)
    weights = root / "runs" / "truncated" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (root / "runs" / "bad-meta" / "model" / "tunelab.json").write_text("{not json")
    return root


def config_with(world, name, **changes) -> str:
    raw = base_config(world / "messages.csv", world / "tiny-llama", world / "runs" / name, max_steps=2)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        raw.setdefault(section, {})[key] = value
    return str(write_config(world / f"{name}.yaml", raw))


# (case id, argv builder taking the world folder, text the message must contain)
CASES = [
    ("train: missing config", lambda w: ["train", str(w / "nope.yaml")], "nope.yaml"),
    ("train: unknown key", lambda w: ["train", config_with(w, "k", train__learning_rate=1e-3)], "unknown key 'train.learning_rate'"),
    ("train: lr inf", lambda w: ["train", config_with(w, "inf"), "train.lr=.inf"], "train.lr"),
    ("train: lr nan", lambda w: ["train", config_with(w, "nan"), "--force", "train.lr=.nan"], "train.lr"),
    ("train: empty data file", lambda w: ["train", config_with(w, "e", data__train=str(w / "empty.csv"))], "empty.csv"),
    ("train: header-only data", lambda w: ["train", config_with(w, "h", data__train=str(w / "header-only.csv"))], "header-only.csv"),
    ("train: labels of mixed types", lambda w: ["train", config_with(w, "m", data__train=str(w / "mixed-labels.jsonl"))], "mixed-labels.jsonl:2"),
    ("train: a JSON object as text", lambda w: ["train", config_with(w, "o", data__train=str(w / "object-text.jsonl"))], "not a string"),
    ("train: a column named twice", lambda w: ["train", config_with(w, "d", data__train=str(w / "dup-columns.csv"))], "'text' more than once"),
    ("train: a LoRA target that matches nothing", lambda w: ["train", config_with(w, "lt", model__trainable="lora", model__lora={"target_modules": ["qkv_proj"]})], "matches no layer"),
    ("train: missing model", lambda w: ["train", config_with(w, "nm", model__name=str(w / "no-model"))], "no-model"),
    ("train: unknown encoding", lambda w: ["train", config_with(w, "enc", data__encoding="utf-99")], "utf-99"),
    ("train: output_dir is a file", lambda w: ["train", config_with(w, "of"), "output_dir=" + str(w / "a-file")], "is an existing file"),
    ("train: --force on a folder that is not a run", lambda w: ["train", config_with(w, "nr"), "--force", "output_dir=" + str(w / "not-tunelab")], "not a run folder"),
    ("train: --force on the parent of runs", lambda w: ["train", config_with(w, "pr"), "--force", "output_dir=" + str(w / "runs")], "runs"),
    ("train: output_dir holds the data", lambda w: ["train", config_with(w, "hd"), "--force", "output_dir=" + str(w)], "holds the input"),
    ("predict: a null text in a later row", lambda w: ["predict", str(w / "runs/good"), "--input", str(w / "null-text.jsonl")], "null-text.jsonl:2"),
    ("predict: a text file in cp949", lambda w: ["predict", str(w / "runs/good"), "--input", str(w / "cp949.txt")], "not UTF-8"),
    ("predict: output is the input", lambda w: ["predict", str(w / "runs/good"), "--input", str(w / "texts.txt"), "--output", str(w / "texts.txt")], "is the input"),
    ("predict: empty input", lambda w: ["predict", str(w / "runs/good"), "--input", str(w / "empty.txt"), "--output", str(w / "p.jsonl")], "no rows"),
    ("predict: batch size 0", lambda w: ["predict", str(w / "runs/good"), "--input", str(w / "texts.txt"), "--batch-size", "0"], "--batch-size"),
    ("predict: no run folder", lambda w: ["predict", str(w / "runs/none"), "--input", str(w / "texts.txt")], "runs/none"),
    ("predict: truncated weights", lambda w: ["predict", str(w / "runs/truncated"), "--input", str(w / "texts.txt")], "model.safetensors"),
    ("predict: damaged tunelab.json", lambda w: ["predict", str(w / "runs/bad-meta"), "--input", str(w / "texts.txt")], "tunelab.json"),
    ("eval: output is the data", lambda w: ["eval", str(w / "runs/good"), "--data", str(w / "messages.csv"), "--output", str(w / "messages.csv")], "is the input"),
    ("eval: header-only data", lambda w: ["eval", str(w / "runs/good"), "--data", str(w / "header-only.csv")], "header-only.csv"),
    ("eval: output replaces the run's summary", lambda w: ["eval", str(w / "runs/good"), "--data", str(w / "messages.csv"), "--output", str(w / "runs/good/summary.json")], "run folder"),
    ("export: out is the run", lambda w: ["export", str(w / "runs/good"), "--out", str(w / "runs/good"), "--force"], "overlaps the run folder"),
    ("export: out is the parent of runs", lambda w: ["export", str(w / "runs/good"), "--out", str(w / "runs"), "--force"], "overlaps the run folder"),
    ("export: out is someone else's folder", lambda w: ["export", str(w / "runs/good"), "--out", str(w / "not-tunelab"), "--force"], "not written by tunelab"),
    ("export: out is a file", lambda w: ["export", str(w / "runs/good"), "--out", str(w / "a-file")], "a-file"),
    ("data clean: output is the input", lambda w: ["data", "clean", str(w / "messages.csv"), "--output", str(w / "messages.csv")], "is the input"),
    ("data clean: report is the input", lambda w: ["data", "clean", str(w / "messages.csv"), "--output", str(w / "c.jsonl"), "--report", str(w / "messages.csv")], "is the input"),
    ("data clean: empty input", lambda w: ["data", "clean", str(w / "header-only.csv"), "--output", str(w / "c.jsonl")], "no rows"),
    ("data split: out holds the input", lambda w: ["data", "split", str(w / "messages.csv"), "--out", str(w)], "holds the input"),
    ("data split: empty input", lambda w: ["data", "split", str(w / "header-only.csv"), "--out", str(w / "splits")], "no rows"),
    ("data inspect: html is the input", lambda w: ["data", "inspect", str(w / "messages.csv"), "--html", str(w / "messages.csv")], "is the input"),
    ("data review: a port out of range", lambda w: ["data", "review", str(w / "mixed-labels.jsonl"), "--port", "70000"], "--port 70000"),
    ("validate: unknown key", lambda w: ["validate", config_with(w, "v", model__pooling_kind="last")], "model.pooling_kind"),
]


def checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_a_malformed_input_gets_a_clear_message_and_nothing_changes(world, capsys, case, argv, expected):
    args = argv(world)  # may write the case's own config file: taken before the checksums
    before = checksums(world)
    code = main(args)
    err = capsys.readouterr().err
    assert code != 0, f"{case}: exited 0"
    assert "Traceback" not in err and "internal error" not in err, err
    assert expected in err, err
    after = checksums(world)
    changed = [p for p in before if after.get(p) != before[p]]
    assert changed == [], f"{case}: changed {changed}"


def test_an_internal_error_is_one_line_with_the_traceback_saved(monkeypatch, tmp_path, capsys):
    """A bug (not the user's input) says so in one line, exits 1 and saves the traceback."""
    import tunelab.commands.validate as validate

    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    monkeypatch.setattr(validate, "run", lambda args: 1 / 0)
    assert main(["validate", "x.yaml"]) == 1
    err = capsys.readouterr().err
    assert "internal error (a bug in tunelab" in err and "ZeroDivisionError" in err and "Traceback" not in err
    saved = list((tmp_path / "crash-reports").iterdir())
    assert len(saved) == 1 and "ZeroDivisionError" in saved[0].read_text() and str(saved[0]) in err


def test_an_os_error_names_the_path(monkeypatch, capsys):
    import errno

    import tunelab.commands.validate as validate

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/runs/x/model.safetensors")

    monkeypatch.setattr(validate, "run", full)
    assert main(["validate", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert "/data/runs/x/model.safetensors: the disk is full" in err


def test_overrides_may_follow_a_flag(world, capsys):
    path = config_with(world, "after-flag")
    assert main(["validate", path, "train.max_steps=7"]) == 0
    assert "max_steps: 7" in capsys.readouterr().out
    assert main(["train", path, "--force", "train.max_steps=1", "output_dir=" + str(world / "runs" / "after-flag")]) == 0
    assert json.loads((world / "runs" / "after-flag" / "summary.json").read_text())["steps"] == 1


def test_a_full_disk_during_export_keeps_the_previous_export_and_leaves_no_partial_folder(world, monkeypatch, capsys):
    """ENOSPC in the middle of copying: one line saying the disk is full, the earlier export is
    untouched and no temporary folder is left beside it."""
    import errno
    import shutil

    out = world / "exported"
    assert main(["export", str(world / "runs/good"), "--out", str(out)]) == 0
    before = checksums(out)
    real_copy = shutil.copyfile
    calls = {"n": 0}

    def copy_until_full(src, dst, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_copy(src, dst, *a, **kw)

    monkeypatch.setattr(shutil, "copyfile", copy_until_full)
    assert main(["export", str(world / "runs/good"), "--out", str(out), "--force"]) == 2
    assert "the disk is full" in capsys.readouterr().err
    assert checksums(out) == before
    assert not [p.name for p in world.iterdir() if p.name.startswith((".tmp", ".trash", ".gone"))]

def test_outputs_next_to_a_project_config_and_own_files_in_a_run_are_allowed(tmp_path):
    (tmp_path / "config.yaml").write_text("mine: 1\n")
    (tmp_path / "out.jsonl").write_text("old\n")
    assert check_output(tmp_path / "out.jsonl") == tmp_path / "out.jsonl"  # a project folder is not a run
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("x\n")
    (run / "summary.json").write_text("{}")
    (run / "scores.json").write_text("{}")
    check_output(run / "scores.json")  # eval's own earlier output may be rewritten
    with pytest.raises(TunelabError, match="would replace what training wrote"):
        check_output(run / "summary.json")


def test_force_replaces_a_run_killed_right_after_it_started(tmp_path):
    """A run folder holding only the config.yaml its run wrote is still a run: --force replaces it."""
    from tunelab.config import load_config
    from tunelab.train.runtime import prepare_run_dir

    cfg = load_config(write_config(tmp_path / "c.yaml", base_config(tmp_path / "d.csv", tmp_path / "m", tmp_path / "run")))
    prepare_run_dir(cfg, resume=False, force=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml"]
    prepare_run_dir(cfg, resume=False, force=True)  # no "not a run folder" refusal
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.yaml").write_text("output_dir: elsewhere\n")
    other = load_config(write_config(tmp_path / "c2.yaml", base_config(tmp_path / "d.csv", tmp_path / "m", tmp_path / "mine")))
    with pytest.raises(TunelabError, match="not a run folder"):
        prepare_run_dir(other, resume=False, force=True)
    (tmp_path / "mine" / "config.yaml").write_text(f"output_dir: {tmp_path / 'mine'}\n")  # a person's file naming this folder
    with pytest.raises(TunelabError, match="unfinished run"):  # never replaced without --force
        prepare_run_dir(other, resume=False, force=False)
    assert (tmp_path / "mine" / "config.yaml").read_text() == f"output_dir: {tmp_path / 'mine'}\n"
