"""`tunelab validate`: run configs, sweep files and synth configs, each by its own schema."""

from pathlib import Path

import pytest
import yaml

from tunelab.cli import main
from tunelab.commands.validate import detect_kind
from tunelab.errors import TunelabError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml"))
BASE = ROOT / "configs" / "sweeps" / "base" / "spam-smollm2.yaml"
SYNTH = ROOT / "configs" / "synth" / "docqa-en.yaml"


def _kind_of(path: Path) -> str:
    parts = path.relative_to(ROOT / "configs").parts
    if parts[0] == "synth":
        return "synth"
    return "sweep" if parts[0] == "sweeps" and parts[1] != "base" else "run"


def test_shipped_files_cover_every_kind():
    assert {_kind_of(p) for p in SHIPPED} == {"run", "sweep", "synth"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_validates(path, capsys):
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    kind = _kind_of(path)
    if kind == "run":
        assert out.rstrip().endswith(f"# {path}: valid") and "data:" in out  # today's output: the resolved config
    elif kind == "sweep":
        assert f"{path}: sweep file: " in out and "every run config valid" in out
    else:
        assert f"{path}: synth config: lang " in out and out.rstrip().endswith("valid")
    assert main(["validate", "--kind", kind, str(path)]) == 0


def test_sweep_summary_counts_cells_and_runs(capsys):
    path = ROOT / "configs" / "sweeps" / "seven-questions-quick.yaml"
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sweep file: 7 cells in 3 groups, 7 runs" in out
    assert "  trainable--spam--head" in out


def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return p


SWEEP = {"base": str(BASE), "output_dir": "runs/sweeps/t", "seeds": [1],
         "variants": {"head": {"model.trainable": "head"}, "lora": {"model.trainable": "lora"}}}


def _fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_small_sweep_validates_with_overrides(tmp_path, capsys):
    p = _write(tmp_path, "s.yaml", SWEEP)
    assert main(["validate", str(p), "train.epochs=1"]) == 0
    assert "sweep file: 2 cells in 1 group, 2 runs" in capsys.readouterr().out
    _fails(["validate", str(p), "train.epoch=1"], capsys, "command-line override 'train.epoch=1'")


def test_bad_sweep_files_name_the_key(tmp_path, capsys):
    p = _write(tmp_path, "s.yaml", {**SWEEP, "seedz": [1, 2]})
    _fails(["validate", str(p)], capsys, "s.yaml:", "unknown sweep key 'seedz'; did you mean 'seeds'?")
    p = _write(tmp_path, "s.yaml", {**SWEEP, "variants": {"head": {"model.trainabel": "head"}}})
    _fails(["validate", str(p)], capsys, "model.trainabel")
    p = _write(tmp_path, "s.yaml", {**SWEEP, "base": "missing.yaml"})
    _fails(["validate", str(p)], capsys, "missing.yaml")


def test_bad_synth_configs_name_the_key(tmp_path, capsys):
    raw = yaml.safe_load(SYNTH.read_text(encoding="utf-8"))
    raw["teacher"]["modle"] = raw["teacher"].pop("model")
    p = _write(tmp_path, "synth.yaml", raw)
    _fails(["validate", str(p)], capsys, "invalid synth config", "unknown key 'teacher.modle'; did you mean 'teacher.model'?")
    good = _write(tmp_path, "good.yaml", yaml.safe_load(SYNTH.read_text(encoding="utf-8")))
    _fails(["validate", str(good), "chunking.overlap=900"], capsys, "chunking.overlap")
    raw = yaml.safe_load(SYNTH.read_text(encoding="utf-8"))
    raw["questions"]["prompt"] = "{{ contxt }}"
    _fails(["validate", str(_write(tmp_path, "synth.yaml", raw))], capsys, "contxt")


def test_bad_run_config_names_the_key(tmp_path, capsys):
    p = _write(tmp_path, "c.yaml", "data: {train: x.csv}\nmodel: {name: asset:minilm-l6}\ntrain: {epoch: 2}\n")
    _fails(["validate", str(p)], capsys, "unknown key 'train.epoch'; did you mean 'train.epochs'?")


def test_explicit_kind_checks_against_that_schema(tmp_path, capsys):
    run_config = ROOT / "configs" / "spam-mpnet.yaml"
    _fails(["validate", "--kind", "sweep", str(run_config)], capsys, "'base' is required", "unknown sweep key 'data'")
    _fails(["validate", "--kind", "synth", str(run_config)], capsys, "invalid synth config", "'lang' is required")
    _fails(["validate", "--kind", "run", str(SYNTH)], capsys, "'data' is required")


def test_kind_detection_from_keys(tmp_path, capsys):
    assert detect_kind({"data": {}, "model": {}}) == "run"
    assert detect_kind({"base": "b.yaml", "groups": {}}) == "sweep"
    assert detect_kind({"base": "b.yaml", "output_dir": "x", "grdi": {}}) == "sweep"  # a sweep with a typo stays a sweep
    assert detect_kind({"lang": "ko", "questions": {}, "answers": {}}) == "synth"
    assert detect_kind({"base": "b.yaml", "data": {}, "model": {}}) == "run"  # more run keys: 'base' is then unknown
    with pytest.raises(TunelabError, match=r"x.yaml: cannot tell the kind of config .*\(output_dir\).*--kind"):
        detect_kind({"output_dir": "runs/x"}, "x.yaml")
    _fails(["validate", str(_write(tmp_path, "e.yaml", ""))], capsys, "cannot tell the kind", "the file is empty")
    _fails(["validate", str(tmp_path / "nope.yaml")], capsys, "config file not found")
    _fails(["validate", str(_write(tmp_path, "y.yaml", "base: [1,\n"))], capsys, "y.yaml:2: not valid YAML")


def test_a_decoder_asked_for_the_pooler_head_fails_validation(tmp_path, capsys, tiny_llama):
    """A model on this machine has its config.json read: `pooling: pooler` on a decoder fails here,
    as train would, before any data or weights are loaded; an encoder with it passes."""
    bad = _write(tmp_path, "c.yaml", {"data": {"train": "x.csv"}, "model": {"name": str(tiny_llama), "pooling": "pooler"}})
    _fails(["validate", str(bad)], capsys, "model.pooling = pooler is for encoders", "llama is a decoder, use model.pooling: last")
    encoder = tmp_path / "enc"
    encoder.mkdir()
    (encoder / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    good = _write(tmp_path, "d.yaml", {"data": {"train": "x.csv"}, "model": {"name": str(encoder), "pooling": "pooler"}})
    assert main(["validate", str(good)]) == 0
    assert "valid" in capsys.readouterr().out
