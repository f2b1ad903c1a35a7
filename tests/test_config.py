"""Config checking: every shipped config validates; bad keys, types and values are named."""

from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.config import apply_overrides, load_config, parse_override, validate_dict
from tunelab.errors import TunelabError

ROOT = Path(__file__).resolve().parents[1]
# Run configs; sweep and synth files have their own schemas and their own tests.
SHIPPED = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not {"sweeps", "synth"} & set(p.parts))


def test_every_shipped_config_validates():
    assert len(SHIPPED) >= 3, SHIPPED
    for path in SHIPPED:
        cfg = load_config(path)
        assert cfg.model.name and cfg.data.train, path


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


MINIMAL = "data: {train: x.csv}\nmodel: {name: asset:minilm-l6}\n"


def test_unknown_key_suggests_the_closest(tmp_path):
    with pytest.raises(TunelabError) as err:
        load_config(_write(tmp_path, MINIMAL + "train: {learning_rate: 0.1, epochs: 2}\n"))
    assert "unknown key 'train.learning_rate'" in str(err.value)
    with pytest.raises(TunelabError, match=r"did you mean 'model.pooling'"):
        load_config(_write(tmp_path, MINIMAL.replace("asset:minilm-l6", "asset:minilm-l6, poolng: last")))


def test_vocabulary_and_type_errors_name_the_key(tmp_path):
    with pytest.raises(TunelabError, match=r"'model.pooling' = 'lats' is not one of .*did you mean 'last'"):
        load_config(_write(tmp_path, MINIMAL), ["model.pooling=lats"])
    with pytest.raises(TunelabError, match=r"'train.batch_size' = 'big'"):
        load_config(_write(tmp_path, MINIMAL), ["train.batch_size=big"])
    with pytest.raises(TunelabError, match=r"'data' is required"):
        load_config(_write(tmp_path, "model: {name: x}\n"))


def test_on_and_off_switches_read_as_words_though_yaml_reads_booleans(tmp_path):
    """YAML 1.1 reads a bare on/off as true/false; the auto/on/off switches take them as meant, in
    the file and in a command-line override, and still refuse other values by name."""
    cfg = load_config(_write(tmp_path, "data: {train: x.csv, packing: on}\nmodel: {name: asset:minilm-l6}\ntrain: {compile: off}\n"),
                      ["train.cuda_graphs=off"])
    assert (cfg.data.packing, cfg.train.compile, cfg.train.cuda_graphs) == ("on", "off", "off")
    with pytest.raises(TunelabError, match=r"'train.cuda_graphs' = 'yes please' is not one of"):
        load_config(_write(tmp_path, MINIMAL), ["train.cuda_graphs=yes please"])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    with pytest.raises(TunelabError, match=r"c.yaml:4: not valid YAML"):
        load_config(_write(tmp_path, MINIMAL + "train: {epochs: [1,\n"))


def test_overrides_are_typed():
    assert parse_override("train.lr=1e-4") == (["train", "lr"], 1e-4)
    assert apply_overrides({"train": {"lr": 1}}, ["train.lr=2", "model.lora.r=8"]) == {"train": {"lr": 2}, "model": {"lora": {"r": 8}}}
    with pytest.raises(TunelabError, match="must look like"):
        parse_override("train.lr")


def test_cli_prints_errors_without_traceback(tmp_path, capsys):
    cfg = _write(tmp_path, MINIMAL + "train: {epoch: 2}\n")
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.epoch'; did you mean 'train.epochs'?" in err
    assert "Traceback" not in err
    assert main(["validate", str(cfg), "train.epoch=null"]) == 2  # still there: overrides add, not remove
    assert main(["validate", str(_write(tmp_path, MINIMAL))]) == 0
    assert "pooling: last" in capsys.readouterr().out


def test_classification_lr_follows_the_trainable_policy_unless_given():
    """A head alone at the all-layers rate barely learns (the anchor's 72 % row): an unset
    train.lr takes the rate of the policy; a given one (file or override) is kept; sft keeps 5e-5."""
    def lr(model_extra: dict, train=None, task="classification"):
        data = {"task": task, "data": {"train": "x.csv"}, "model": {"name": "m", **model_extra}}
        if train is not None:
            data["train"] = train
        return validate_dict(data).train.lr

    assert lr({}) == 1e-4  # default policy: last_blocks
    assert [lr({"trainable": t}) for t in ("head", "last_blocks", "all", "lora")] == [1e-3, 1e-4, 5e-5, 5e-4]
    assert lr({"trainable": "head"}, {"lr": 2e-5}) == 2e-5
    assert lr({"trainable": "lora"}, {"epochs": 1}) == 5e-4
    assert lr({}, task="sft") == 5e-5
    applied = apply_overrides({"data": {"train": "x.csv"}, "model": {"name": "m", "trainable": "head"}}, ["train.lr=3e-4"])
    assert validate_dict(applied).train.lr == 3e-4
