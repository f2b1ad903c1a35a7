"""Packed SFT micro-batches and the chunked LM-head loss: the same numbers as padded batches.

Packing relies on stock transformers: with attention_mask=None and position_ids restarting per
example, masking_utils builds a block-causal mask. These tests check that mask itself, that one
example's tokens never reach another's logits, that packed loss and gradients equal padded ones
on four architectures (fp32, 1e-5), that a model that would mix examples is refused (padding
instead), and that the chunked head-only loss equals the loss from the model's own logits.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import transformers as tf
from tests.helpers import one_thread, tiny_config, tiny_model, tiny_tokenizer, write_config

from tunelab.sft.collate import collate, count_targets, pack, target_index
from tunelab.sft.objective import _loss_from_logits, _model_inputs, head_is_plain, packed_attention, packing_isolates, sft_loss
from tunelab.sft.tokenize import IGNORE

ARCHS = ["llama", "qwen2", "gemma3", "gpt2"]
VOCAB = 300


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def examples(lengths=(9, 4, 13, 1, 6), seed=0) -> list[dict]:
    """Random ids; the first half of each example a prompt (-100), the rest targets."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE] * (n // 2) + ids[n // 2:]})
    return out


def tiny_lm(arch: str, seed: int = 0, **overrides):
    """A random-init 2-layer causal LM of `arch` in eval mode (no dropout: GPT-2 has some)."""
    config = tiny_config(arch, VOCAB)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(config).eval()


def grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


# --- the packed batch ---------------------------------------------------------------------------


def test_pack_restarts_positions_and_never_trains_across_a_boundary():
    exs = examples()
    b = pack(exs)
    n = sum(len(e["input_ids"]) for e in exs)
    assert b["input_ids"].shape == b["position_ids"].shape == b["labels"].shape == (1, n)
    assert "attention_mask" not in b  # transformers only reads boundaries from position_ids without a mask
    start = 0
    for e in exs:
        k = len(e["input_ids"])
        assert b["input_ids"][0, start:start + k].tolist() == e["input_ids"]
        assert b["position_ids"][0, start:start + k].tolist() == list(range(k))
        assert b["labels"][0, start] == IGNORE  # the last token of the previous example predicts nothing here
        assert b["labels"][0, start + 1:start + k].tolist() == e["labels"][1:]
        start += k
    padded = collate(exs, pad_id=0)
    assert int(b["num_target_tokens"]) == int(padded["num_target_tokens"]) == len(b["target_index"])
    # an example whose first token is a label target: that label is dropped, as the padded batch never trains position 0
    first = pack([{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7, 8], "labels": [7, 8]}])
    assert first["labels"].tolist() == [[IGNORE, 6, IGNORE, 8]] and int(count_targets(first["labels"])) == 2


def test_target_index_points_at_the_positions_that_predict_a_target():
    labels = torch.tensor([[IGNORE, 5, IGNORE, 7], [IGNORE, IGNORE, 9, IGNORE]])
    index = target_index(labels)
    assert index.tolist() == [0, 2, 5]
    assert labels.reshape(-1)[index + 1].tolist() == [5, 7, 9]


def test_transformers_builds_a_block_causal_mask_from_packed_position_ids():
    """What packing stands on, read in the installed transformers: no mask + restarting positions
    -> each token sees only the earlier tokens of its own example (sdpa's dense boolean mask)."""
    from transformers.masking_utils import create_causal_mask, find_packed_sequence_indices

    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1]])
    assert find_packed_sequence_indices(positions).tolist() == [[0, 0, 0, 1, 1, 2, 3, 3]]
    config = tiny_config("llama", VOCAB)
    config._attn_implementation = "sdpa"
    mask = create_causal_mask(config=config, inputs_embeds=torch.zeros(1, 8, 32), attention_mask=None,
                              past_key_values=None, position_ids=positions)
    seq = [0, 0, 0, 1, 1, 2, 3, 3]
    expected = torch.tensor([[seq[q] == seq[k] and k <= q for k in range(8)] for q in range(8)])
    assert mask.shape == (1, 1, 8, 8) and torch.equal(mask[0, 0], expected)


def test_changing_one_example_does_not_change_the_logits_of_another():
    model = tiny_lm("llama")
    exs = examples((6, 5, 7))
    before = model(**_model_inputs(pack(exs))).logits
    for changed in range(3):
        other = [dict(e) for e in exs]
        other[changed] = {**exs[changed], "input_ids": [(t * 7 + 1) % VOCAB for t in exs[changed]["input_ids"]]}
        after = model(**_model_inputs(pack(other))).logits
        start = 0
        for i, e in enumerate(exs):
            k = len(e["input_ids"])
            same = torch.allclose(after[0, start:start + k], before[0, start:start + k], atol=1e-6)
            assert same == (i != changed), (changed, i)
            start += k


# --- packed == padded ---------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["sdpa", "tunelab_varlen"])
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_loss_and_gradients_equal_padded(arch, attention):
    """With sdpa the packed mask comes from position_ids; with tunelab_varlen from the row's
    cu_seq_lens (on a CPU its reference path: stock sdpa per example, what the CUDA kernel computes)."""
    from tunelab.model import varlen

    model = tiny_lm(arch)
    if attention == varlen.NAME:
        model.set_attn_implementation(varlen.register())
    exs = examples()
    padded, packed = collate(exs, pad_id=0), pack(exs)
    loss_pad, n_pad = sft_loss(model, padded)
    (loss_pad / n_pad).backward()
    g_pad = grads(model)
    model.zero_grad()
    loss_pack, n_pack = sft_loss(model, packed)
    (loss_pack / n_pack).backward()
    assert int(n_pack) == int(n_pad) > 0
    torch.testing.assert_close(loss_pack, loss_pad, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(model), g_pad):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_keeps_packed_examples_apart(arch):
    """GPT-2 included: in transformers 5 its mask also comes from masking_utils and its learned
    position embeddings read position_ids, so it packs (no padding fallback needed)."""
    assert packing_isolates(tiny_lm(arch))


def test_a_model_that_would_mix_examples_trains_padded(monkeypatch):
    """Without the packed-sequence detection (as in a transformers that lacks it) the examples of a
    row see each other: the check says no and the recipe falls back to padding, with a log line."""
    import transformers.masking_utils as mu

    from tunelab.sft.run import use_packing

    model = tiny_lm("llama")
    assert packing_isolates(model)
    monkeypatch.setattr(mu, "find_packed_sequence_indices", lambda position_ids: None)
    assert not packing_isolates(model)
    lines = []
    packing, before = use_packing("on", model, torch.device("cpu"), log=lines.append)
    assert (packing, before) == (False, "sdpa") and "does not keep packed examples apart" in lines[-1]
    assert model.config._attn_implementation == "sdpa"


def test_packing_switch_and_attention_choice():
    from tunelab.sft.run import use_packing

    model, lines = tiny_lm("llama"), []
    assert use_packing("auto", model, torch.device("cpu"), log=lines.append) == (False, "sdpa")  # auto: off (measured slower)
    assert "off (cpu)" in lines[-1]
    assert use_packing("off", model, torch.device("cpu"), log=lines.append)[0] is False
    assert use_packing("on", model, torch.device("cpu"), log=lines.append) == (True, "sdpa")
    assert "attention sdpa" in lines[-1]
    assert packed_attention(model.config, "cpu") == ["sdpa"]
    assert packed_attention(model.config, "cuda") == ["flex_attention", "sdpa"]  # no CUDA here: no varlen kernel
    assert packed_attention(tiny_config("gpt2", VOCAB), "cuda") == ["sdpa"]  # attention dropout: flex and varlen refuse it


def test_varlen_attention_keeps_examples_apart_and_pads_like_sdpa():
    """The registered varlen implementation: packed rows isolate examples (probe), and a padded
    batch without boundaries (validation, generation) gives sdpa's logits."""
    from tunelab.model import varlen

    model = tiny_lm("qwen2")
    padded = collate(examples(), pad_id=0)
    want = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    model.set_attn_implementation(varlen.register())
    assert packing_isolates(model)
    got = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    keep = padded["attention_mask"].bool()
    torch.testing.assert_close(got[keep], want[keep], rtol=1e-5, atol=1e-5)


# --- the chunked LM-head loss -------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("packed", [False, True])
def test_chunked_head_loss_equals_the_loss_of_the_models_logits(arch, packed):
    """Chunks of 1, 3 and all rows (recomputed in backward when there are several) give the
    loss and gradients of the model's own logits over the target positions (the earlier sft_loss)."""
    model = tiny_lm(arch)
    assert head_is_plain(model)
    exs = examples()
    batch = pack(exs) if packed else collate(exs, pad_id=0)
    reference = _loss_from_logits(model, _model_inputs(batch), batch["labels"])
    reference.backward()
    g_ref = grads(model)
    for chunk in (1, 3, 4096):
        model.zero_grad()
        loss, _ = sft_loss(model, batch, chunk_size=chunk)
        loss.backward()
        torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)
        for a, b in zip(grads(model), g_ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_chunked_loss_applies_gemma_soft_capping():
    model = tiny_lm("gemma3", final_logit_softcapping=0.5)  # small cap: tanh changes the logits a lot
    batch = pack(examples())
    assert head_is_plain(model)
    torch.testing.assert_close(sft_loss(model, batch, chunk_size=4)[0], _loss_from_logits(model, _model_inputs(batch), batch["labels"]), rtol=1e-5, atol=1e-5)


def test_a_head_that_post_processes_logits_takes_the_plain_path():
    """Cohere scales its logits after the head: the short cut would be wrong, so it is not taken."""
    config = tf.CohereConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=128, logit_scale=0.25, pad_token_id=0)
    torch.manual_seed(0)
    model = tf.CohereForCausalLM(config).eval()
    assert not head_is_plain(model)
    batch = collate(examples(), pad_id=0)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    index = batch["target_index"]
    manual = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB)[index], batch["labels"].reshape(-1)[index + 1], reduction="sum")
    torch.testing.assert_close(sft_loss(model, batch)[0].detach(), manual, rtol=1e-5, atol=1e-5)


def test_chunked_loss_through_peft_lora():
    from tunelab.model.lora import inject_lora

    tok = tiny_tokenizer()
    model = inject_lora(tiny_model(tok), 4, 8, 0.0, ["q_proj", "v_proj"], task_type="CAUSAL_LM")
    exs = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples()]
    batch = pack(exs)
    assert head_is_plain(model)
    reference = _loss_from_logits(model, _model_inputs(batch), batch["labels"])
    loss, _ = sft_loss(model, batch, chunk_size=2)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)


def test_no_targets_in_a_packed_row_gives_zero_with_a_gradient():
    model = tiny_lm("llama")
    loss, n = sft_loss(model, pack([{"input_ids": [5, 6, 7], "labels": [IGNORE] * 3}, {"input_ids": [8], "labels": [8]}]))
    assert int(n) == 0 and loss.item() == 0.0
    loss.backward()


def test_the_loss_needs_no_target_search_on_the_device():
    """The batch carries its target positions (computed at collate time on the CPU), so the loss
    does not look for them with a nonzero() on the device (a host sync per micro-batch)."""
    model = tiny_lm("llama")
    batch = pack(examples())
    calls = []
    real = torch.Tensor.nonzero

    def counting(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    torch.Tensor.nonzero = counting
    try:
        sft_loss(model, batch)
    finally:
        torch.Tensor.nonzero = real
    assert calls == []


# --- the recipe ---------------------------------------------------------------------------------


def _rows(n=24, seed=0):
    rng = random.Random(seed)
    return [{"prompt": f"The refund period is {k} days. How long?", "completion": f" {k} days"}
            for k in (rng.randint(2, 90) for _ in range(n))]


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    tok = tiny_tokenizer()
    tiny_model(tok, seed=0).save_pretrained(str(root / "tiny"))
    tok.save_pretrained(str(root / "tiny"))
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()), encoding="utf-8")
    return root, root / "tiny", data


def _run(root, model_dir, data, name, data_opts=None, resume=False, **train):
    from tunelab.config import load_config
    from tunelab.sft.run import train_sft

    cfg = {"task": "sft", "output_dir": str(root / name),
           "data": {"train": str(data), "max_length": 64, "split": {"validation": 0.2, "test": 0.0}, **(data_opts or {})},
           "model": {"name": str(model_dir), "trainable": "all"},
           "train": {"max_steps": 6, "batch_size": 4, "lr": 5e-3, "warmup": 0, "eval_every": 3, "seed": 3, "device": "cpu", **train},
           "sft": {"template": "alpaca", "generation": {"max_new_tokens": 2, "max_rows": 1}}}
    lines = []
    summary = train_sft(load_config(write_config(root / f"{name}.yaml", cfg)), resume=resume, log=lines.append)
    return summary, lines


def test_a_packed_run_trains_like_a_padded_one(model_and_data):
    """Six steps packed (with a token budget, gradient checkpointing and compile=on, which a CPU
    ignores) end at the padded run's losses: the fast path changes speed, not the result."""
    root, model_dir, data = model_and_data
    padded, lines_pad = _run(root, model_dir, data, "padded", data_opts={"packing": "auto"})
    assert padded["packing"] is False and any("data.packing auto -> off (cpu)" in x for x in lines_pad)
    assert any("compile" not in x for x in lines_pad) and not any("blocks compiled" in x for x in lines_pad)
    packed, lines = _run(root, model_dir, data, "packed", data_opts={"packing": "on"},
                         max_tokens_per_micro_batch=48, gradient_checkpointing=True, compile="on")
    assert packed["packing"] is True
    assert any("data.packing on -> on (cpu)" in x for x in lines)
    assert any("micro-batches of at most 48 tokens" in x for x in lines)
    assert any("train.compile on: off on cpu" in x for x in lines)
    assert any("gradient_checkpointing: on" in x for x in lines)
    assert packed["steps"] == padded["steps"] == 6
    assert packed["validation"]["loss"] == pytest.approx(padded["validation"]["loss"], rel=1e-5)
    assert packed["train"]["loss"] == pytest.approx(padded["train"]["loss"], rel=1e-5)


def test_packed_rows_say_that_a_padding_setting_does_not_apply(model_and_data):
    root, model_dir, data = model_and_data
    summary, lines = _run(root, model_dir, data, "packed-max-length", data_opts={"packing": "on", "padding": "max_length"})
    assert summary["packing"] is True
    assert "data.padding max_length does not apply: packed micro-batches have no padding" in lines


def killed_then_resumed(root, model_dir, data, name, monkeypatch, **kw) -> dict:
    """`_run` killed in step 5 (after the checkpoint of step 4, with save_every=2), then resumed;
    returns the resumed run's summary."""
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        _run(root, model_dir, data, name, **kw)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    resumed, _ = _run(root, model_dir, data, name, resume=True, **kw)
    return resumed


def test_a_packed_run_resumes_to_the_same_result(model_and_data, monkeypatch):
    root, model_dir, data = model_and_data
    kw = dict(data_opts={"packing": "on"}, max_tokens_per_micro_batch=40, save_every=2)
    full, _ = _run(root, model_dir, data, "packed-full", **kw)
    resumed = killed_then_resumed(root, model_dir, data, "packed-crash", monkeypatch, **kw)
    assert resumed["packing"] is True and resumed["steps"] == full["steps"] == 6
    assert resumed["validation"] == full["validation"] and resumed["train"] == full["train"]


def test_validation_runs_on_the_plain_model():
    """`plain_model`: the usual attention (and compiled blocks eager) inside, the packed setup after."""
    from tunelab.sft.run import plain_model

    model = tiny_lm("llama")
    model.set_attn_implementation("eager")  # stands for flex_attention, which a CPU does not run
    with plain_model(model, "sdpa", compiled=False) as m:
        assert m.config._attn_implementation == "sdpa"
    assert model.config._attn_implementation == "eager"
