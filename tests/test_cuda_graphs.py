"""CUDA graphs for SFT micro-batches (`tunelab.train.cuda_graphs`), checked on a CPU.

A CPU has no CUDA graphs, so two things are checked here and the capture itself on the GPU
(bench/gpu_check_sft_fastpath.py): (1) the fixed-shape packed rows a graph needs give the same
loss and gradients as plain packed rows, on four architectures; (2) the loop's graph bookkeeping
(inputs copied into the graph's own tensors, the step's loss scale as a device scalar, gradients
added in place across micro-batches and steps, one graph per shape, a failed capture falling back)
gives the eager run's result, with a stand-in backend whose `record` runs nothing (as a capture)
and whose `replay` recomputes from the recorded inputs into the recorded output (as a graph).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from tests.helpers import one_thread, tiny_model, tiny_tokenizer
from tests.test_sft_packing import ARCHS, _run, examples, grads, killed_then_resumed, model_and_data, tiny_lm  # noqa: F401 (a fixture)

from tunelab.config import TrainConfig
from tunelab.sft.collate import TARGET_STEPS_PER_OCTAVE, pack
from tunelab.sft.objective import SftObjective, sft_loss
from tunelab.train import cuda_graphs
from tunelab.train.batch import bucket
from tunelab.train.loop import fit, plan_steps
from tunelab.train.runtime import make_accelerator


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.mark.parametrize("attention", ["sdpa", "tunelab_varlen"])
@pytest.mark.parametrize("arch", ARCHS)
def test_fixed_shape_rows_give_the_loss_and_gradients_of_plain_packed_rows(arch, attention):
    from tunelab.model import varlen

    model = tiny_lm(arch)
    if attention == varlen.NAME:
        model.set_attn_implementation(varlen.register())
    exs = examples()
    plain, fixed = pack(exs), pack(exs, fixed_shapes=True)
    n = plain["input_ids"].shape[1]
    assert fixed["input_ids"].shape[1] == bucket(n + 2) and len(fixed["target_index"]) == bucket(len(plain["target_index"]), TARGET_STEPS_PER_OCTAVE)
    assert fixed["max_length"] == fixed["input_ids"].shape[1] and int(fixed["num_target_tokens"]) == int(plain["num_target_tokens"])
    loss_plain, _ = sft_loss(model, plain)
    loss_plain.backward()
    g_plain = grads(model)
    model.zero_grad()
    loss_fixed, n_fixed = sft_loss(model, fixed)
    loss_fixed.backward()
    assert int(n_fixed) == int(plain["num_target_tokens"])
    torch.testing.assert_close(loss_fixed, loss_plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(model), g_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_padding_tail_is_not_seen_by_the_examples():
    """Changing the tail's tokens leaves every real position's logits as they were."""
    model = tiny_lm("llama")
    row = pack(examples(), fixed_shapes=True)
    n = int(row["cu_seq_lens"][-2])
    other = {**row, "input_ids": row["input_ids"].clone()}
    other["input_ids"][0, n:] = 7
    from tunelab.sft.objective import _model_inputs

    with torch.no_grad():
        a, b = (model(**_model_inputs(r)).logits[0, :n] for r in (row, other))
    torch.testing.assert_close(a, b)


class _RecordedCall:
    """As a CUDA graph: `replay` runs the recorded call again, writing into the recorded output."""

    def __init__(self, fn, out):
        self.fn, self.out = fn, out

    def replay(self):
        self.out.copy_(self.fn())


class StandInBackend:
    """torch.cuda's graph semantics on a CPU: `record` runs nothing that stays (gradients are put
    back as they were: a capture executes no kernel), `replay` recomputes from the recorded inputs."""

    calls = {"record": 0, "replay": 0}
    fail = False

    def __init__(self, device):
        pass

    def stream(self):
        return contextlib.nullcontext()

    def new_pool(self):
        StandInBackend.calls["pools"] = StandInBackend.calls.get("pools", 0) + 1

    def record(self, fn):
        if StandInBackend.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        StandInBackend.calls["record"] += 1
        params = [p for p in _model_of_test.parameters()]
        kept = [None if p.grad is None else p.grad.clone() for p in params]
        out = fn().clone()
        for p, g in zip(params, kept):
            if g is None:
                p.grad = None
            else:
                p.grad.copy_(g)
        call = _RecordedCall(fn, out)
        real_replay = call.replay

        def counted():
            StandInBackend.calls["replay"] += 1
            real_replay()
        call.replay = counted
        return call, out


_model_of_test = None


@pytest.fixture
def stand_in(monkeypatch):
    """Graphs on a CPU: the stand-in backend, told which model's gradients a capture must leave alone."""
    real_init = cuda_graphs.MicroStepGraphs.__init__

    def init(self, model, *args, **kwargs):
        global _model_of_test
        _model_of_test = model
        real_init(self, model, *args, **kwargs)

    monkeypatch.setattr(cuda_graphs.MicroStepGraphs, "__init__", init)
    monkeypatch.setattr(cuda_graphs, "_CudaBackend", StandInBackend)
    StandInBackend.calls.update(record=0, replay=0)
    return StandInBackend


def _sft_data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = []
    for k in range(n):
        length = int(torch.randint(4, 30, (1,), generator=g))
        ids = torch.randint(5, 300, (length,), generator=g).tolist()
        data.append({"input_ids": ids, "labels": [-100] * (length // 3) + ids[length // 3:]})
    return data


def _fit(tmp_path, monkeypatch, graphs: bool, steps=8, max_tokens=None):
    """A tiny SFT run; returns the model, the loop's result, the log and each step's gradients
    (no clipping, so that a wrong loss scale shows in them; AdamW's update would hide it)."""
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=0)
    data = _sft_data()
    cfg = TrainConfig(max_steps=steps, batch_size=4, lr=1e-3, warmup=0, device="cpu", max_tokens_per_micro_batch=max_tokens,
                      eval_every=10**6, max_grad_norm=None)
    accelerator, _ = make_accelerator(cfg)
    plan = plan_steps(len(data), cfg, lengths=[len(e["input_ids"]) for e in data])
    lines, step_grads, real_step = [], [], torch.optim.AdamW.step

    def recording_step(self, *a, **k):
        step_grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    collate = (lambda items: pack(items, fixed_shapes=True)) if graphs else pack
    result = fit(model, data, collate, SftObjective(), None, cfg, plan, tmp_path, accelerator, log=lines.append, cuda_graphs=graphs)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    return model, result, lines, step_grads


def _assert_same_run(a, b):
    model_a, result_a, _, grads_a = a
    model_b, result_b, _, grads_b = b
    assert [r["train_loss"] for r in result_a.history] == pytest.approx([r["train_loss"] for r in result_b.history], rel=1e-5)
    assert len(grads_a) == len(grads_b) == result_a.steps
    for step_a, step_b in zip(grads_a, grads_b):
        for x, y in zip(step_a, step_b):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    for x, y in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_tokens", [None, 40])
def test_a_run_through_graphs_ends_with_the_eager_runs_weights(tmp_path, monkeypatch, stand_in, max_tokens):
    """Eight steps (with a token budget: several micro-batches a step, of different shapes): the
    replayed micro-steps give the eager run's step gradients, losses and final weights."""
    eager = _fit(tmp_path / "eager", monkeypatch, graphs=False, max_tokens=max_tokens)
    graphed = _fit(tmp_path / "graphs", monkeypatch, graphs=True, max_tokens=max_tokens)
    _assert_same_run(graphed, eager)
    lines = graphed[2]
    assert StandInBackend.calls["record"] >= 1 and StandInBackend.calls["replay"] >= 1
    summary = [x for x in lines if x.startswith("train.cuda_graphs on:")]
    assert summary and f"{StandInBackend.calls['record']} shapes captured (" in summary[0]
    assert f"recordings), {StandInBackend.calls['replay']} micro-batches replayed" in summary[0]


def test_a_failed_capture_turns_graphs_off_and_the_result_stays(tmp_path, monkeypatch, stand_in):
    monkeypatch.setattr(StandInBackend, "fail", True)
    eager = _fit(tmp_path / "eager", monkeypatch, graphs=False, steps=4)
    graphed = _fit(tmp_path / "graphs", monkeypatch, graphs=True, steps=4)
    assert any("train.cuda_graphs -> off for the rest of the run: the capture failed (RuntimeError: operation not permitted" in x for x in graphed[2])
    _assert_same_run(graphed, eager)


def test_replaced_gradients_make_the_graphs_capture_again(monkeypatch):
    """A graph adds into the gradient tensors it was captured with; if one is replaced (set to
    None and made anew), replaying would write into freed memory, so the graphs are dropped."""
    model = torch.nn.Linear(3, 1)
    lines = []

    def step(batch, scale):
        loss = ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).sum()
        (loss * scale).backward()
        return loss.detach()

    global _model_of_test
    _model_of_test = model
    g = cuda_graphs.MicroStepGraphs(model, step, torch.device("cpu"), lines.append, backend=StandInBackend(None))
    batch = {"x": torch.randn(4, 3), "y": torch.randn(4)}
    g(batch, 0.25)
    g(batch, 0.25)
    assert g.captures == 1 and g.replays == 1
    model.zero_grad(set_to_none=True)
    pools = StandInBackend.calls.get("pools", 0)
    g(batch, 0.25)  # the warm-up runs eagerly and makes new gradient tensors
    g(batch, 0.25)
    assert any("captured again" in x for x in lines) and g.captures == 2
    assert StandInBackend.calls["pools"] == pools + 1  # the dropped graphs' pool is not captured into again


def test_a_gradient_made_by_a_failed_capture_is_taken_back():
    """A capture runs nothing: a gradient tensor it created holds no gradient, so when the capture
    fails, the parameters that had none before get none back (not uninitialised memory)."""
    model = torch.nn.Linear(3, 1)
    unused = torch.nn.Parameter(torch.zeros(2))

    class Breaking(StandInBackend):
        def record(self, fn):
            unused.grad = torch.full((2,), float("nan"))  # as AccumulateGrad would, inside the graph's pool
            raise RuntimeError("operation not permitted when stream is capturing")

    holder = torch.nn.ModuleDict({"m": model})
    holder.register_parameter("unused", unused)

    def step(batch, scale):
        loss = ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).sum()
        (loss * scale).backward()
        return loss.detach()

    lines = []
    g = cuda_graphs.MicroStepGraphs(holder, step, torch.device("cpu"), lines.append, backend=Breaking(None))
    g({"x": torch.randn(4, 3), "y": torch.randn(4)}, 0.25)
    assert unused.grad is None and model.weight.grad is not None and not g.active
    assert any("the capture failed (RuntimeError: operation not permitted" in x for x in lines)


def test_where_graphs_run():
    ok = cuda_graphs.resolve_cuda_graphs
    assert ok("auto", "cuda", "sft", True, 1, False)[0]
    assert not ok("off", "cuda", "sft", True, 1, False)[0]
    assert ok("on", "cuda", "classification", True, 1, False)[0]  # asked for: classification graphs are not measured yet
    assert "set train.cuda_graphs: on" in ok("auto", "cuda", "classification", True, 1, False)[1]
    assert "2 processes" in ok("on", "cuda", "sft", True, 2, False)[1]
    assert "gradient_checkpointing" in ok("on", "cuda", "sft", True, 1, True)[1]
    assert "CUDA only" in ok("on", "cpu", "sft", True, 1, False)[1]


def test_the_recipe_with_graphs_resumes_after_a_kill_to_the_same_result(request, monkeypatch, stand_in):
    """`tunelab train` of an SFT config with graphs (forced on here: a CPU resolves them off),
    killed in step 5 after the checkpoint of step 4 and resumed, ends where the uninterrupted run
    ends; and it ends where the eager packed run ends."""
    root, model_dir, data = request.getfixturevalue("model_and_data")  # test_sft_packing's tiny model and rows
    monkeypatch.setattr(cuda_graphs, "resolve_cuda_graphs", lambda *a: (True, "train.cuda_graphs on (stand-in)"))
    kw = dict(data_opts={"packing": "on"}, save_every=2)
    full, lines = _run(root, model_dir, data, "graphs-full", **kw)
    assert full["cuda_graphs"] is True and any("micro-batches replayed" in x for x in lines) and stand_in.calls["replay"] > 0
    resumed = killed_then_resumed(root, model_dir, data, "graphs-crash", monkeypatch, **kw)
    assert resumed["steps"] == full["steps"] == 6
    assert resumed["validation"] == full["validation"] and resumed["train"] == full["train"]
    monkeypatch.setattr(cuda_graphs, "resolve_cuda_graphs", lambda *a: (False, "train.cuda_graphs off"))
    eager, _ = _run(root, model_dir, data, "graphs-eager", **kw)
    assert eager["cuda_graphs"] is False
    assert eager["validation"]["loss"] == pytest.approx(full["validation"]["loss"], rel=1e-5)


def test_a_classification_run_through_graphs_equals_the_eager_packed_run(tmp_path, spam_csv, tiny_llama, monkeypatch, stand_in):
    """`train.cuda_graphs: on` for classification (forced on: a CPU resolves it off): fixed-shape
    packed rows, pooling told the number of examples, replayed micro-steps; the same metrics as
    the eager packed run."""
    from tests.helpers import base_config, write_config

    from tunelab.classify.run import train_classifier
    from tunelab.config import load_config

    summaries, logs = {}, {}
    for graphs in (True, False):
        monkeypatch.setattr(cuda_graphs, "resolve_cuda_graphs", lambda *a, on=graphs: (on, f"train.cuda_graphs {'on' if on else 'off'} (stand-in)"))
        cfg = base_config(spam_csv, tiny_llama, tmp_path / str(graphs), max_steps=8, eval_every=4, max_grad_norm=None)
        cfg["data"]["packing"] = "on"
        logs[graphs] = []
        summaries[graphs] = train_classifier(load_config(write_config(tmp_path / f"{graphs}.yaml", cfg)), log=logs[graphs].append)
    on, off = summaries[True], summaries[False]
    assert on["cuda_graphs"] is True and off["cuda_graphs"] is False and stand_in.calls["replay"] > 0
    assert any("micro-batches replayed" in x for x in logs[True])
    for split in ("validation", "test", "train"):
        assert on[split]["loss"] == pytest.approx(off[split]["loss"], rel=1e-4, abs=1e-5)
        assert on[split]["accuracy"] == off[split]["accuracy"]


class HostReads:
    """Within: every conversion of a tensor to a Python value (`item`, `tolist`, `bool`, `int`,
    `float`, `nonzero`, a boolean-mask index) is recorded with where it came from, and CUDA stream
    capture is reported as on (transformers skips its own checks then, as it does in a real
    capture). On a GPU each such read is a host sync, which a CUDA graph capture refuses. Reads
    from the varlen kernel's CPU reference (`varlen._per_example`) are left out: on a GPU the
    kernel runs instead."""

    NAMES = ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero")

    def __init__(self):
        self.reads, self.saved = [], {}

    def _record(self, what):
        import traceback

        stack = traceback.extract_stack()[:-2]
        if any(f.name == "_per_example" and f.filename.endswith("varlen.py") for f in stack):
            return
        here = next((f for f in reversed(stack) if "/site-packages/torch/" not in f.filename), stack[-1])
        self.reads.append(f"{what} at {here.filename.split('/')[-1]}:{here.lineno} ({here.name})")

    def __enter__(self):
        for name in self.NAMES:
            real = getattr(torch.Tensor, name)
            self.saved[name] = real

            def wrapped(t, *a, _real=real, _name=name, **k):
                self._record(_name)
                return _real(t, *a, **k)
            setattr(torch.Tensor, name, wrapped)
        real_getitem = self.saved["__getitem__"] = torch.Tensor.__getitem__

        def getitem(t, index):
            parts = index if isinstance(index, tuple) else (index,)
            if any(torch.is_tensor(p) and p.dtype == torch.bool for p in parts):
                self._record("boolean-mask index")
            return real_getitem(t, index)
        torch.Tensor.__getitem__ = getitem
        self.saved_capturing = torch.cuda.is_current_stream_capturing
        torch.cuda.is_current_stream_capturing = lambda: True
        return self

    def __exit__(self, *exc):
        for name, real in self.saved.items():
            setattr(torch.Tensor, name, real)
        torch.cuda.is_current_stream_capturing = self.saved_capturing


@pytest.mark.parametrize("arch", ARCHS)
def test_a_fixed_shape_sft_micro_step_reads_nothing_back(arch):
    """What a graph captures for SFT (forward, chunked head loss, backward on a fixed-shape packed
    row, varlen attention) converts no tensor to a Python value."""
    from tunelab.model import varlen
    from tunelab.sft.objective import head_is_plain

    model = tiny_lm(arch).train()
    model.set_attn_implementation(varlen.register())
    assert head_is_plain(model)  # decided once before training, as the recipe does
    batch = pack(examples(), fixed_shapes=True)
    with HostReads() as reads:
        (SftObjective()(model, batch) * 0.1).backward()
    assert reads.reads == []


@pytest.mark.parametrize("pooling", ["last", "first", "mean"])
@pytest.mark.parametrize("arch,causal", [("llama", True), ("qwen2", False), ("gemma3", True), ("gpt2", True), ("bert", True)])
def test_a_fixed_shape_classification_micro_step_reads_nothing_back(model_root, arch, causal, pooling):
    """The same for classification: packed varlen row, pooling told the number of examples,
    class-weighted loss (the weights' device copy made before, as the warm-up does)."""
    from tests.test_classify_packing import _as_varlen, _classifier, _items, _pad_id

    from tunelab.classify.collate import PackingCollator
    from tunelab.classify.objective import ClassificationObjective

    model = _as_varlen(_classifier(model_root, arch, pooling, causal)).train()
    batch = PackingCollator(_pad_id(model), fixed_shapes=True)(_items())
    objective = ClassificationObjective(torch.tensor([1.0, 2.0, 0.5]))
    objective(model, batch)  # the warm-up: first calls may set things up
    with HostReads() as reads:
        (objective(model, batch) * 0.1).backward()
    assert reads.reads == []
