"""Compiled transformer blocks (`train.compile`) train the same numbers as eager ones.

CI has no GPU and inductor's generated code is what a GPU runs, so these tests compile with the
"aot_eager" backend: dynamo captures each block and AOTAutograd traces its forward and backward
exactly as for inductor, then runs the traced graphs. What is checked is what tunelab adds
around torch.compile: which modules are compiled, that dynamic shapes serve batches of new
lengths without a recompile per length, that the loss and gradients equal the eager model's
(fp32, tiny random models) for padded and packed classification and SFT batches, and that the
`eager` context really runs the plain code (validation does not compile anything).
"""

from __future__ import annotations

import copy

import pytest
import torch
from tests.helpers import make_model_dir, one_thread
from tests.test_sft_packing import examples, tiny_lm

from tunelab.classify.collate import ClassificationCollator, PackingCollator
from tunelab.classify.model import TextClassifier
from tunelab.classify.objective import ClassificationObjective
from tunelab.model.backbone import load_backbone, transformer_blocks
from tunelab.sft.collate import collate, pack
from tunelab.sft.objective import sft_loss
from tunelab.train.compiling import compile_blocks, eager, uncompile_blocks

TOL = 1e-6


@pytest.fixture(autouse=True)
def _one_thread_fresh_dynamo():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    with one_thread():
        yield
    torch._dynamo.reset()


def _loss_and_grads(model, loss_of) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_of(model)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _assert_same(reference, compiled, loss_of):
    loss_a, grads_a = _loss_and_grads(reference, loss_of)
    loss_b, grads_b = _loss_and_grads(compiled, loss_of)
    assert torch.allclose(loss_a, loss_b, rtol=TOL, atol=TOL), (loss_a, loss_b)
    assert len(grads_a) == len(grads_b) > 2
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, rtol=1e-5, atol=TOL), (a - b).abs().max()


def _frames() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _items(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(3, 250, (n,), generator=g).tolist(), i % 3) for i, n in enumerate(lengths)]


@pytest.mark.parametrize("causal", [True, False])
def test_compiled_classifier_trains_like_the_eager_one(model_root, causal):
    backbone = load_backbone(make_model_dir(model_root, "llama"))
    torch.manual_seed(1)
    reference = TextClassifier(backbone, 3, pooling="last", causal_mask=causal).eval()
    model = copy.deepcopy(reference)
    assert compile_blocks(model, backend="aot_eager") == len(transformer_blocks(model)) == 2
    objective = ClassificationObjective()
    padded, packed = ClassificationCollator(0), PackingCollator(0)
    for lengths in [(5, 9, 3), (12, 4, 7, 20), (6, 2)]:  # new shapes every batch
        for collator in (padded, packed):
            batch = collator(_items(lengths))
            _assert_same(reference, model, lambda m, b=batch: objective(m, b))
    assert _frames() <= 4, "dynamic shapes: a new batch length must not compile the blocks again"


@pytest.mark.parametrize("batch_of", [collate, pack], ids=["padded", "packed"])
def test_compiled_blocks_give_the_sft_loss_and_gradients_of_eager_ones(batch_of):
    reference = tiny_lm("qwen2")
    model = copy.deepcopy(reference)
    compile_blocks(model, backend="aot_eager")
    for seed, lengths in enumerate([(9, 4, 13), (6, 17), (3, 8, 5, 11)]):
        batch = batch_of(examples(lengths, seed=seed), 0) if batch_of is collate else batch_of(examples(lengths, seed=seed))
        _assert_same(reference, model, lambda m, b=batch: sft_loss(m, b)[0])


def test_eager_context_runs_the_plain_code_and_uncompile_restores_the_module():
    model = tiny_lm("llama")
    compile_blocks(model, backend="aot_eager")
    ids = torch.randint(3, 300, (2, 7))
    with eager(True), torch.no_grad():
        model(input_ids=ids)
    assert _frames() == 0, "inside eager() nothing is compiled"
    model(input_ids=ids).logits.sum().backward()
    assert _frames() > 0
    uncompile_blocks(model)
    assert all(block._compiled_call_impl is None for block in transformer_blocks(model))
