"""Sweep files: expansion (grid, variants, datasets, groups), checks with lines and suggestions,
shared runs, aggregation maths, and every shipped sweep file expands and validates."""

from pathlib import Path

import pytest
import yaml

from tunelab.config import load_config
from tunelab.errors import TunelabError
from tunelab.sweep.aggregate import aggregate, mean_std, t_interval
from tunelab.sweep.spec import flatten, load_sweep

ROOT = Path(__file__).resolve().parents[1]
BASE = {"data": {"train": "x.csv"}, "model": {"name": "asset:minilm-l6"}, "train": {"seed": 1}}


def _sweep(tmp_path, text: str, base: dict = BASE) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_grid_expands_to_every_combination_in_file_order(tmp_path):
    path = _sweep(tmp_path, "base: base.yaml\noutput_dir: out\nseeds: [1, 2]\ngrid:\n  model.pooling: [last, mean]\n  train.lr: [1e-4, 3e-4, 1e-3]\n")
    spec, cells, runs = load_sweep(path)
    assert [c.slug for c in cells] == [f"pooling-{p}_lr-{lr}" for p in ("last", "mean") for lr in ("0.0001", "0.0003", "0.001")]
    assert cells[1].overrides == {"model.pooling": "last", "train.lr": 3e-4}  # '3e-4' read as a number
    assert len(runs) == 12
    r = runs[3]
    assert (r.config["model"]["pooling"], r.config["train"]["lr"], r.config["train"]["seed"]) == ("last", 3e-4, 2)
    assert r.config["data"]["split"]["seed"] == 123  # the split stays fixed across seeds
    assert r.folder == Path("out/runs/pooling-last_lr-0.0003/seed-2")
    assert r.config["output_dir"] == str(r.folder)


def test_groups_variants_datasets_and_override_order(tmp_path):
    path = _sweep(tmp_path, """
base: base.yaml
output_dir: out
seeds: [1, 2, 3]
overrides: {train.epochs: 2, train.lr: 1.0e-4}
datasets:
  spam: {data.train: spam.csv}
  tweets: {data.train: tweets.csv, data.max_rows: 300}
groups:
  trainable:
    question: Should all layers be trained?
    overrides: {train.lr: 2.0e-4}
    variants:
      head: {model.trainable: head, train.lr: 1.0e-3}
      lora-r8: {model: {trainable: lora, lora: {r: 8}}}
  pooling:
    datasets: [spam]
    seeds: [7]
    grid: {model.pooling: [first, mean, last]}
    exclude: ["*-last"]
""")
    spec, cells, runs = load_sweep(path, ["train.max_steps=5"])
    assert [c.slug for c in cells] == ["trainable--spam--head", "trainable--spam--lora-r8", "trainable--tweets--head", "trainable--tweets--lora-r8",
                                       "pooling--spam--pooling-first", "pooling--spam--pooling-mean"]
    assert len(runs) == 4 * 3 + 2 * 1
    by = {(r.cell.slug, r.seed): r.config for r in runs}
    head = by[("trainable--tweets--head", 2)]
    assert head["train"]["lr"] == 1e-3  # variant beats group beats top
    assert head["train"]["epochs"] == 2 and head["train"]["max_steps"] == 5  # top + command line
    assert (head["data"]["train"], head["data"]["max_rows"]) == ("tweets.csv", 300)
    lora = by[("trainable--spam--lora-r8", 1)]
    assert (lora["model"]["trainable"], lora["model"]["lora"]["r"], lora["train"]["lr"]) == ("lora", 8, 2e-4)
    assert by[("pooling--spam--pooling-mean", 7)]["train"]["lr"] == 1e-4
    assert cells[0].question == "Should all layers be trained?"


def test_identical_configs_share_one_run(tmp_path):
    path = _sweep(tmp_path, """
base: base.yaml
output_dir: out
groups:
  a: {variants: {last: {model.pooling: last}, mean: {model.pooling: mean}}}
  b: {variants: {default: {}}}
""")
    _, _, runs = load_sweep(path)
    a_last, a_mean, b_default = runs
    assert b_default.alias_of is a_last and b_default.home.folder == a_last.folder
    assert a_mean.alias_of is None and a_mean.hash != a_last.hash


@pytest.mark.parametrize(
    "text, expected",
    [
        ("base: base.yaml\noutput_dir: out\nsedes: [1]\n", r"sweep.yaml:3: unknown sweep key 'sedes'; did you mean 'seeds'"),
        ("base: base.yaml\noutput_dir: out\ngroups:\n  g:\n    variant: {}\n", r"sweep.yaml:5: unknown sweep key 'groups.g.variant'; did you mean 'groups.g.variants'"),
        ("base: base.yaml\noutput_dir: out\nvariants:\n  a: {model.poolng: mean}\n", r"sweep.yaml:4: variants.a: unknown config key 'model.poolng'; did you mean 'model.pooling'"),
        ("base: base.yaml\noutput_dir: out\ngrid:\n  train.lr.x: [1]\n", r"sweep.yaml:4: grid: 'train.lr' is a value, not a section"),
        ("base: nope.yaml\noutput_dir: out\n", r"sweep.yaml:1: base config not found"),
        ("base: base.yaml\noutput_dir: out\ndatasets: {spam: {}}\ngroups:\n  g: {datasets: [spma]}\n", r"unknown dataset 'spma'; did you mean 'spam'"),
        ("output_dir: out\n", r"'base' is required"),
        ("base: base.yaml\noutput_dir: out\ngroups:\n  g: {variants: {a: {}}, exclude: [b]}\n", r"sweep.yaml:4: exclude 'b' matches no cell of group 'g'"),
    ],
)
def test_sweep_file_errors_name_line_and_suggest(tmp_path, text, expected):
    with pytest.raises(TunelabError, match=expected):
        load_sweep(_sweep(tmp_path, text))


def test_every_cell_config_is_validated_before_running(tmp_path):
    path = _sweep(tmp_path, "base: base.yaml\noutput_dir: out\nvariants:\n  ok: {model.pooling: mean}\n  bad: {model.pooling: lats}\n")
    with pytest.raises(TunelabError) as err:
        load_sweep(path)
    msg = str(err.value)
    assert "cell 'bad'" in msg and "'model.pooling' = 'lats'" in msg and "did you mean 'last'" in msg and "model.pooling (line 5)" in msg
    assert not (tmp_path / "out").exists()


def test_flatten_nested_and_dotted():
    assert flatten({"model": {"lora": {"r": 8}}, "train.lr": "1e-4", "data.split": {"seed": 1}}) == {"model.lora.r": 8, "train.lr": 1e-4, "data.split.seed": 1}


def test_mean_std_and_t_interval_on_a_known_example():
    assert mean_std([0.9, 0.92, 0.94]) == (0.92, 0.02)
    lo, hi = t_interval([0.9, 0.92, 0.94])  # t(0.975, 2) = 4.302653
    assert lo == pytest.approx(0.92 - 4.302653 * 0.02 / 3 ** 0.5, abs=1e-6) and hi == pytest.approx(0.92 + 4.302653 * 0.02 / 3 ** 0.5, abs=1e-6)
    assert mean_std([0.5]) == (0.5, None) and t_interval([0.5]) is None
    lo, hi = t_interval([0.5, 0.95, 0.97])  # 0.807 -+ 0.66 would pass 100 %: clipped to the range of an accuracy
    assert hi == 1.0 and lo == pytest.approx(0.80667 - 4.302653 * 0.26576 / 3 ** 0.5, abs=1e-3)
    assert mean_std([]) == (None, None)
    rows = [
        {"group": "g", "dataset": "", "variant": "a", "cell": "g--a", "question": "", "seed": s, "test_accuracy": acc, "train_seconds": sec}
        for s, acc, sec in ((1, 0.8, 10.0), (2, 0.9, 14.0))
    ] + [{"group": "g", "dataset": "", "variant": "b", "cell": "g--b", "question": "", "seed": 1, "test_accuracy": 0.7, "train_seconds": 3.0}]
    a, b = aggregate(rows)
    assert (a["n"], a["seeds"]) == (2, [1, 2])
    assert a["test_accuracy"]["mean"] == pytest.approx(0.85) and a["test_accuracy"]["std"] == pytest.approx(0.0707106781)
    assert a["train_seconds"] == {"mean": 12.0, "std": pytest.approx(2.8284271247)}
    assert a["test_accuracy_ci95"][0] == pytest.approx(0.85 - 12.7062047 * 0.0707106781 / 2 ** 0.5, abs=1e-6)
    assert b["test_accuracy"] == {"mean": 0.7, "std": None} and b["test_accuracy_ci95"] is None


SHIPPED_SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
SHIPPED_BASES = sorted((ROOT / "configs" / "sweeps" / "base").glob("*.yaml"))


def test_every_shipped_sweep_expands_and_validates():
    assert len(SHIPPED_SWEEPS) >= 2 and len(SHIPPED_BASES) >= 1, (SHIPPED_SWEEPS, SHIPPED_BASES)
    for base in SHIPPED_BASES:
        load_config(base)
    for path in SHIPPED_SWEEPS:
        spec, cells, runs = load_sweep(path)
        assert cells and runs, path
        assert all(len(c.seeds) >= (3 if "quick" not in path.name else 1) for c in cells), path
