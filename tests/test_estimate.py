"""`tunelab estimate`: parameter counts on the meta device equal the real model's; the memory
formula's weights, gradients and optimizer states equal the bytes of a real AdamW step, and its
activations are within 25 % of what autograd keeps (measured with saved-tensor hooks);
a run that cannot fit warns with levers; bad configs give one clear line; --measure predicts the
steps and validations of the real run; `train` opens with the same summary."""

import json
import tempfile
from pathlib import Path

import pytest
import torch
from tests.helpers import base_config, make_model_dir, one_thread, write_config

from tunelab.classify.run import build_classifier, train_classifier
from tunelab.cli import main
from tunelab.config import load_config
from tunelab.estimate import block_bytes, cfg_tokens, estimate_memory, footprint, format_estimate, measure_time, model_shape
from tunelab.model.lora import count_parameters
from tunelab.sft.run import build_sft_model
from tunelab.tasks import meta_model
from tunelab.train.optim import make_optimizer

CPU = torch.device("cpu")
FACTOR = 1.25  # the formula's activations against autograd's saved tensors, either way (measured: 0.81 to 1.17)


def config(tmp_path, data, model_dir, name="run", model=None, **train):
    raw = base_config(data, model_dir, tmp_path / name, **train)
    raw["model"].update(model or {})
    return load_config(write_config(tmp_path / f"{name}.yaml", raw))


def sft_config(tmp_path, model_dir, trainable):
    raw = {"task": "sft", "output_dir": str(tmp_path / "sft"), "data": {"train": str(tmp_path / "qa.jsonl"), "max_length": 64},
           "model": {"name": str(model_dir), "trainable": trainable}}
    return load_config(write_config(tmp_path / "sft.yaml", raw))


@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize("trainable", ["head", "last_blocks", "all", "lora"])
def test_counts_on_the_meta_device_equal_the_real_classifier(tmp_path, model_root, arch, trainable):
    folder = make_model_dir(model_root, arch)
    cfg = config(tmp_path, "train.csv", folder, model={"trainable": trainable, "last_blocks": 1})
    meta, costs = meta_model(cfg, folder)
    real, _, _ = build_classifier(cfg.model, 2, folder, cfg.train.seed)
    assert next(meta.backbone.parameters()).is_meta
    assert count_parameters(meta) == count_parameters(real)
    assert model_shape(meta) == model_shape(real)
    assert costs == {"checkpointing": None, "logit_rows": None}


@pytest.mark.parametrize("trainable", ["lora", "all"])
def test_counts_on_the_meta_device_equal_the_real_causal_lm(tmp_path, tiny_llama, trainable):
    cfg = sft_config(tmp_path, tiny_llama, trainable)
    meta, costs = meta_model(cfg, tiny_llama)
    real, info = build_sft_model(cfg.model, tiny_llama, cfg.train.seed)
    assert count_parameters(meta) == count_parameters(real) == (info["trainable_params"], info["total_params"])
    assert costs["checkpointing"] is False and costs["logit_rows"] > 0


@pytest.mark.parametrize("trainable", ["all", "last_blocks", "lora"])
def test_weights_gradients_and_optimizer_states_are_the_bytes_of_a_real_step(tmp_path, tiny_llama, trainable):
    cfg = config(tmp_path, "train.csv", tiny_llama, model={"trainable": trainable, "last_blocks": 1})
    model, _, _ = build_classifier(cfg.model, 2, tiny_llama, cfg.train.seed)
    memory = footprint(model_shape(model), cfg_tokens(cfg), cfg.data.max_length, "fp32")
    optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    ids = torch.randint(3, 50, (2, 8))
    with one_thread():
        model(ids, torch.ones_like(ids)).sum().backward()
        optimizer.step()
    nbytes = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)  # noqa: E731
    assert memory.weights == nbytes(model.parameters())
    assert memory.gradients == nbytes(p.grad for p in model.parameters() if p.grad is not None)
    states = [v for state in optimizer.state.values() for k, v in state.items() if k in ("exp_avg", "exp_avg_sq")]
    assert memory.optimizer == nbytes(states)


def saved_bytes(model, ids, mask) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of one forward."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), one_thread():
        model(ids, mask)
    return sum(seen.values())


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2", "bert"])
@pytest.mark.parametrize("trainable", ["all", "last_blocks", "lora"])
def test_the_activation_formula_is_within_a_factor_of_what_autograd_keeps(tmp_path, model_root, arch, trainable):
    folder = make_model_dir(model_root, arch)
    cfg = config(tmp_path, "train.csv", folder, model={"trainable": trainable, "last_blocks": 1})
    model, _, _ = build_classifier(cfg.model, 2, folder, cfg.train.seed)
    model.train()
    batch, length = 4, 64
    ids = torch.randint(3, 250, (batch, length))
    mask = torch.ones_like(ids)
    mask[0, 40:] = 0  # padding, so the attention mask is a real one
    shape = model_shape(model)
    predicted = shape.stored_blocks * block_bytes(shape, batch * length, "fp32", length)
    measured = saved_bytes(model, ids, mask)
    assert shape.stored_blocks == (1 if trainable == "last_blocks" else shape.blocks)
    assert predicted / FACTOR <= measured <= predicted * FACTOR, (measured / predicted)


def test_a_head_only_run_keeps_almost_nothing(tmp_path, tiny_llama):
    cfg = config(tmp_path, "train.csv", tiny_llama, model={"trainable": "head"})
    model, _, _ = build_classifier(cfg.model, 2, tiny_llama, cfg.train.seed)
    shape = model_shape(model)
    ids = torch.randint(3, 250, (4, 64))
    assert shape.stored_blocks == 0
    assert saved_bytes(model, ids, torch.ones_like(ids)) < 0.1 * block_bytes(shape, 4 * 64, "fp32", 64)


def test_a_run_that_cannot_fit_warns_with_levers(tmp_path, tiny_llama):
    cfg = config(tmp_path, "train.csv", tiny_llama, batch_size=8)
    model, costs = meta_model(cfg, tiny_llama)
    roomy = estimate_memory(cfg, model, CPU, "fp32", available=2**40, **costs)
    assert roomy.fits and not any(line.startswith("warning") for line in format_estimate(roomy))
    tiny = estimate_memory(cfg, model, CPU, "fp32", available=2**20, **costs)
    lines = format_estimate(tiny)
    assert not tiny.fits
    assert lines[2].startswith("warning: this run needs about") and "1 MB (the memory given)" in lines[2]
    levers = "\n".join(lines[3:])
    assert "train.batch_size=1 train.grad_accum=8  (same 8 examples per step)" in levers and "data.max_length=16" in levers
    assert all(total < tiny.memory.total for _, total in tiny.levers)


def test_gradient_checkpointing_is_a_lever_only_where_the_recipe_has_it(tmp_path, tiny_llama):
    (tmp_path / "qa.jsonl").write_text("")
    cfg = sft_config(tmp_path, tiny_llama, "all")
    model, costs = meta_model(cfg, tiny_llama)
    sft = estimate_memory(cfg, model, CPU, "fp32", available=2**20, **costs)
    assert any(text.startswith("train.gradient_checkpointing=true") for text, _ in sft.levers)
    on = estimate_memory(cfg, model, CPU, "fp32", available=2**20, checkpointing=True, logit_rows=costs["logit_rows"])
    assert on.memory.activations < sft.memory.activations
    cls = config(tmp_path, "train.csv", tiny_llama)
    model, costs = meta_model(cls, tiny_llama)
    assert not any("checkpointing" in text for text, _ in estimate_memory(cls, model, CPU, "fp32", available=2**20, **costs).levers)


def test_the_command_prints_the_summary(tmp_path, tiny_llama, capsys):
    path = write_config(tmp_path / "c.yaml", base_config("train.csv", tiny_llama, tmp_path / "run"))
    assert main(["estimate", str(path), "train.batch_size=4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("estimate: 28.3K parameters, 28.3K trainable (all); micro-batch of up to 128 tokens, fp32 on cpu")
    assert out[1].startswith("memory: weights 110 KB + gradients 110 KB + optimizer 221 KB + activations") and "(CPU RAM)" in out[1]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("raw, message", [
    ({"data": {"train": "x.csv"}, "model": {"name": "m", "trainabel": "all"}}, "unknown key 'model.trainabel'; did you mean 'model.trainable'?"),
    ({"data": {"train": "x.csv"}, "model": {"name": "no/such/folder/"}}, "model folder no/such/folder does not exist"),
])
def test_a_bad_config_gives_one_clear_line(tmp_path, capsys, raw, message):
    path = write_config(tmp_path / "bad.yaml", raw)
    assert main(["estimate", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "internal error" not in err


def test_measure_predicts_the_steps_and_validations_of_the_real_run(tmp_path, spam_csv, tiny_llama):
    cfg = config(tmp_path, spam_csv, tiny_llama, epochs=2, eval_every=7)
    scratch = lambda: set(Path(tempfile.gettempdir()).glob("tunelab-estimate-*"))  # noqa: E731
    before = scratch()
    with one_thread():
        timing = measure_time(cfg, steps=3)
        said = []
        summary = train_classifier(cfg, log=said.append)
    assert timing.steps_measured == 3 and timing.step_seconds > 0 and timing.whole_seconds > timing.fixed_seconds
    assert timing.total_steps == summary["steps"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert timing.evaluations == sum(r.get("split") == "validation" for r in rows)
    assert scratch() == before  # the scratch run is gone
    # train opens with the same summary
    assert any(line.startswith("estimate: 28.3K parameters") for line in said) and any(line.startswith("memory: weights") for line in said)
