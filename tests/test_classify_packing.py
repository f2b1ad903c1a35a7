"""Packed, padding-free classification batches give the padded batches' logits, loss and
gradients, and no example attends to another one in the same row (tiny random models, CPU, fp32)."""

import types

import pytest
import torch
from tests.helpers import base_config, make_model_dir, one_thread, write_config

from tunelab.classify.collate import ClassificationCollator, PackingCollator
from tunelab.classify.model import TextClassifier, apply_trainable
from tunelab.classify.objective import ClassificationObjective
from tunelab.classify.packing import block_mask, packing_plan, resolve_packing
from tunelab.config import LoraConfig
from tunelab.model.backbone import load_backbone
from tunelab.train.batch import bucket

DECODERS = ["llama", "qwen2", "gpt2", "gemma3"]
POOLINGS = ["last", "first", "mean"]
OTHER_ENCODERS = ["roberta", "xlm-roberta", "camembert", "electra", "albert", "distilbert", "mpnet"]
LENGTHS = (5, 20, 1, 27, 9)  # 20 and 27 exceed the tiny Gemma 3's sliding window (16)
TOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _other_encoder(family: str, attention: str = "sdpa"):
    """A tiny random-init encoder of a family that tests/helpers.py does not build (vocab 300)."""
    import transformers as tf

    small = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=130)
    config = {
        "roberta": lambda: tf.RobertaConfig(**small, pad_token_id=1),
        "xlm-roberta": lambda: tf.XLMRobertaConfig(**small, pad_token_id=1),
        "camembert": lambda: tf.CamembertConfig(**small, pad_token_id=1),
        "electra": lambda: tf.ElectraConfig(embedding_size=16, **small, pad_token_id=0),
        "albert": lambda: tf.AlbertConfig(embedding_size=16, **small, pad_token_id=0),
        "distilbert": lambda: tf.DistilBertConfig(vocab_size=300, dim=32, hidden_dim=64, n_layers=2, n_heads=4, max_position_embeddings=128, pad_token_id=0),
        "mpnet": lambda: tf.MPNetConfig(**small, pad_token_id=1),
    }[family]()
    torch.manual_seed(0)
    # MPNet has no sdpa attention: its scores always get the mask added (eager).
    return tf.AutoModel.from_config(config, attn_implementation="eager" if family == "mpnet" else attention)


def _classifier(model_root, arch: str, pooling: str = "mean", causal: bool = True, attention: str = "sdpa") -> TextClassifier:
    if arch in OTHER_ENCODERS:
        backbone = _other_encoder(arch, attention)
    else:
        backbone = load_backbone(make_model_dir(model_root, arch))
        if attention != "sdpa":
            backbone.set_attn_implementation(attention)
    torch.manual_seed(1)  # the head
    return TextClassifier(backbone, 3, pooling=pooling, causal_mask=causal).eval()  # eval: no dropout


def _items(seed: int = 0, lengths=LENGTHS) -> list[tuple[list[int], int]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(3, 250, (n,), generator=g).tolist(), i % 3) for i, n in enumerate(lengths)]


def _pad_id(model) -> int:
    return int(getattr(model.config, "pad_token_id", 0) or 0)


def _logits_loss_grads(model, batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    objective = ClassificationObjective(torch.tensor([1.0, 2.0, 0.5]))
    loss = objective(model, batch)
    loss.backward()
    objective_logits = model(batch["input_ids"], batch.get("attention_mask"), segment_ids=batch.get("segment_ids"), position_ids=batch.get("position_ids"),
                             cu_seq_lens=batch.get("cu_seq_lens"), max_length=batch.get("max_length"), num_sequences=batch.get("num_sequences"))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return objective_logits.detach(), loss.detach(), grads


def _assert_packed_equals_padded(model, items, multiple_of=None, fixed_shapes=False):
    padded = ClassificationCollator(_pad_id(model))(items)
    packed = PackingCollator(_pad_id(model), multiple_of=multiple_of, fixed_shapes=fixed_shapes)(items)
    total = sum(len(ids) for ids, _ in items)
    width = bucket(total + 1) if fixed_shapes else total + (-total % (multiple_of or 1))
    assert packed["input_ids"].shape == (1, width)
    if fixed_shapes:  # the sizes a CUDA graph needs fixed, given on the CPU
        assert packed["num_sequences"] == len(items) and packed["max_length"] == width
    logits_a, loss_a, grads_a = _logits_loss_grads(model, padded)
    logits_b, loss_b, grads_b = _logits_loss_grads(model, packed)
    assert logits_b.shape == (len(items), 3)
    assert torch.allclose(logits_a, logits_b, atol=TOL, rtol=0), (logits_a - logits_b).abs().max()
    assert torch.allclose(loss_a, loss_b, atol=TOL, rtol=TOL), (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 2
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=TOL, rtol=TOL), (name, (grads_a[name] - grads_b[name]).abs().max())


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("arch", DECODERS)
def test_decoder_packed_equals_padded(model_root, arch, causal, pooling):
    model = _classifier(model_root, arch, pooling, causal)
    assert model.packing_plan.problem is None
    assert model.packing_plan.mode == ("positions" if causal else "mask")
    _assert_packed_equals_padded(model, _items())


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("arch", ["bert"] + OTHER_ENCODERS)
def test_encoder_packed_equals_padded(model_root, arch, pooling):
    model = _classifier(model_root, arch, pooling)
    assert model.packing_plan.mode == "mask"
    _assert_packed_equals_padded(model, _items())


@pytest.mark.parametrize("arch", ["bert", "roberta", "mpnet"])
def test_encoder_pooler_head_packed_equals_padded(model_root, arch):
    """pooling pooler: each example's first token through the dense + tanh layer, packed or not
    (its dense layer gets the same gradients too)."""
    model = _classifier(model_root, arch, "pooler")
    _assert_packed_equals_padded(model, _items())


@pytest.mark.parametrize("arch,causal", [("llama", True), ("llama", False), ("gemma3", True), ("gemma3", False), ("gpt2", False), ("bert", True), ("roberta", True)])
def test_eager_attention_packed_equals_padded(model_root, arch, causal):
    """eager attention adds the mask to its scores: the additive (0 / dtype min) format."""
    model = _classifier(model_root, arch, "mean", causal, attention="eager")
    assert model.packing_plan.attention == "eager"
    _assert_packed_equals_padded(model, _items())


@pytest.mark.parametrize("causal", [True, False])
def test_qwen2_with_sliding_window_layers(causal):
    """Qwen 2 with its sliding window on: one full and one sliding layer, window 8 < the examples."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=128, use_sliding_window=True, sliding_window=8, max_window_layers=1, pad_token_id=0)
    assert config.layer_types == ["full_attention", "sliding_attention"]
    model = TextClassifier(tf.AutoModel.from_config(config), 3, pooling="mean", causal_mask=causal).eval()
    assert model.packing_plan.sliding_window == (None if causal else 8)
    _assert_packed_equals_padded(model, _items())


@pytest.mark.parametrize("arch,causal", [("llama", True), ("gemma3", False), ("bert", True)])
def test_padded_tail_of_a_packed_row_changes_nothing(model_root, arch, causal):
    model = _classifier(model_root, arch, "mean", causal)
    _assert_packed_equals_padded(model, _items(), multiple_of=16)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("arch,causal", [(a, c) for a in DECODERS for c in (True, False)] + [("bert", True), ("roberta", True)])
def test_fixed_shape_rows_equal_padded(model_root, arch, causal, pooling):
    """The rows CUDA graphs replay (`fixed_shapes`: bucketed length, a padding tail, the number of
    examples given so that pooling reads nothing back) give the padded batch's logits, loss and
    gradients, on the varlen plan the GPU uses (its exact CPU reference) and the mask plans."""
    _assert_packed_equals_padded(_classifier(model_root, arch, pooling, causal), _items(), fixed_shapes=True)
    _assert_packed_equals_padded(_as_varlen(_classifier(model_root, arch, pooling, causal)), _items(), fixed_shapes=True)


def test_lora_packed_equals_padded(model_root):
    model = _classifier(model_root, "llama", "last", causal=False)
    apply_trainable(model, "lora", lora=LoraConfig(r=4))
    model.eval()  # LoRA's dropout too
    _assert_packed_equals_padded(model, _items())


@pytest.mark.parametrize("arch,causal", [(a, c) for a in DECODERS for c in (True, False)] + [("bert", True), ("mpnet", True), ("roberta", True)])
def test_examples_in_one_row_are_isolated(model_root, arch, causal):
    """Changing the middle example (its tokens, then also its length) changes neither the example
    before it (a bidirectional leak) nor the one after it (a causal leak)."""
    model = _classifier(model_root, arch, "mean", causal)
    collate = PackingCollator(_pad_id(model))
    base = _items(0, (6, 7, 8))
    other_tokens = [base[0], (_items(1, (7,))[0][0], 1), base[2]]
    other_length = [base[0], (_items(2, (19,))[0][0], 1), base[2]]
    with torch.no_grad():
        ref = model(**{k: v for k, v in collate(base).items() if k != "labels"})
        for changed in (other_tokens, other_length):
            out = model(**{k: v for k, v in collate(changed).items() if k != "labels"})
            assert torch.allclose(out[0], ref[0], atol=1e-6, rtol=0) and torch.allclose(out[2], ref[2], atol=1e-6, rtol=0)
            assert not torch.allclose(out[1], ref[1], atol=1e-3)


@pytest.mark.parametrize("arch,causal", [("llama", False), ("bert", True)])
def test_without_the_block_mask_bidirectional_models_leak(model_root, arch, causal):
    """Why the mask is built here: with packed position_ids and no mask, transformers' bidirectional
    mask lets every token see the whole row, so the isolation test above would fail."""
    model = _classifier(model_root, arch, "mean", causal)
    collate = PackingCollator(_pad_id(model))
    base = _items(0, (6, 7, 8))
    changed = [base[0], (_items(1, (7,))[0][0], 1), base[2]]
    with torch.no_grad():
        first = [model.backbone(input_ids=collate(x)["input_ids"], position_ids=collate(x)["position_ids"]).last_hidden_state[0, :6] for x in (base, changed)]
    assert not torch.allclose(first[0], first[1], atol=1e-3)


def test_gemma3_sliding_layers_need_their_own_mask(model_root):
    """One block-diagonal tensor for all layers would give Gemma 3's sliding layers full attention
    inside each example: longer examples (27 tokens, window 16) then differ from padded ones."""
    model = _classifier(model_root, "gemma3", "mean", causal=False)
    assert model.packing_plan.sliding_window == 16 and model.packing_plan.mask_dict
    items = _items()
    padded, packed = ClassificationCollator(0)(items), PackingCollator(0)(items)
    with torch.no_grad():
        good = model(padded["input_ids"], padded["attention_mask"])
        one_mask = block_mask(packed["segment_ids"], packed["position_ids"], "sdpa", torch.float32)
        hidden = model.backbone(input_ids=packed["input_ids"], attention_mask=one_mask, position_ids=packed["position_ids"], use_cache=False).last_hidden_state
        from tunelab.classify.pooling import pool

        wrong = model.head(pool(hidden, packed["segment_ids"], "mean"))
    assert not torch.allclose(good, wrong, atol=1e-4)


def test_packing_collator_layout():
    batch = PackingCollator(pad_id=0, multiple_of=4)([([5, 6, 7], 2), ([8], 0), ([9, 10], 1)])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1, 0, 1]]
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 2, 3, 3, 0, 0]]
    assert batch["labels"].tolist() == [2, 0, 1]
    assert "attention_mask" not in batch
    with pytest.raises(ValueError, match="no empty one"):
        PackingCollator()([([5], 0), ([], 1)])


def test_packed_call_needs_segments_and_positions(model_root):
    model = _classifier(model_root, "llama")
    with pytest.raises(ValueError, match="segment_ids and position_ids"):
        model(torch.tensor([[5, 6]]), None)


def test_unverified_families_fall_back_to_padding():
    """A family or attention implementation whose isolation was not verified is never packed."""
    import transformers as tf

    torch.manual_seed(0)
    deberta = tf.AutoModel.from_config(tf.DebertaV2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128))
    model = TextClassifier(deberta, 2, pooling="first")
    assert "deberta-v2" in model.packing_plan.problem
    lines = []
    assert resolve_packing("on", torch.device("cpu"), model.packing_plan, lines.append) is False
    assert lines and lines[-1].startswith("data.packing: falling back to padded micro-batches") and "deberta-v2" in lines[-1]
    with pytest.raises(ValueError, match="cannot run packed batches"):
        model(torch.tensor([[5, 6]]), None, segment_ids=torch.tensor([[1, 1]]), position_ids=torch.tensor([[0, 1]]))
    gemma = tf.AutoModel.from_config(tf.Gemma3TextConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                         num_key_value_heads=1, head_dim=8, use_bidirectional_attention=True))
    assert "use_bidirectional_attention" in packing_plan(gemma, causal=True).problem
    flash = types.SimpleNamespace(config=types.SimpleNamespace(model_type="llama", _attn_implementation="flash_attention_2"))
    assert "flash_attention_2" in packing_plan(flash, causal=True).problem


def test_resolve_packing_settings(model_root):
    from tunelab.train.fastpath import classification_auto

    plan = _classifier(model_root, "llama").packing_plan
    lines = []
    assert resolve_packing("auto", torch.device("cuda"), plan, lines.append) is False  # no auto choice given: off
    assert resolve_packing("auto", torch.device("cpu"), plan, lines.append, classification_auto("cpu", None, 5000, 600.0)) is False
    assert resolve_packing("on", torch.device("cpu"), plan, lines.append) is True
    assert resolve_packing("off", torch.device("cuda"), plan, lines.append) is False
    long_texts = classification_auto("cuda", None, 300, 600.0)
    assert resolve_packing("auto", torch.device("cuda"), plan, lines.append, long_texts) is True
    assert resolve_packing("off", torch.device("cuda"), plan, lines.append, long_texts) is False  # an explicit off wins
    assert lines[0] == "data.packing auto -> off: padded micro-batches" and lines[1] == "data.packing auto -> off: cpu: padded micro-batches"
    assert "block-causal" in lines[2] and lines[3] == "data.packing off: padded micro-batches"
    assert lines[4] == "data.packing auto -> on: " + long_texts.why and "block-causal" in lines[5]


def test_packed_run_matches_padded_run(tmp_path, spam_csv, tiny_llama):
    """data.packing on trains on CPU too and gives the padded run's results (same batches, same
    loss up to float rounding)."""
    from tunelab.classify.run import train_classifier
    from tunelab.config import load_config

    summaries, logs = {}, {}
    for packing in ("on", "off"):
        cfg = base_config(spam_csv, tiny_llama, tmp_path / packing, max_steps=6, eval_every=3)
        cfg["data"]["packing"] = packing
        logs[packing] = []
        summaries[packing] = train_classifier(load_config(write_config(tmp_path / f"{packing}.yaml", cfg)), log=logs[packing].append)
    on, off = summaries["on"], summaries["off"]
    assert on["packing"] is True and off["packing"] is False
    assert any(line.startswith("data.packing on: each micro-batch is one padding-free row") for line in logs["on"])
    assert on["steps"] == off["steps"] == 6
    for split in ("validation", "test", "train"):
        assert on[split]["loss"] == pytest.approx(off[split]["loss"], rel=1e-4, abs=1e-5)
        assert on[split]["accuracy"] == off[split]["accuracy"]


def _as_varlen(model) -> TextClassifier:
    """The CUDA varlen plan forced on a CPU model: the attention runs its exact per-example
    reference (`tunelab.model.varlen`), so these tests check the bookkeeping the kernel gets."""
    from tunelab.classify.packing import varlen_plan
    from tunelab.model import varlen

    plan = varlen_plan(model.packing_plan, model.config.model_type)
    assert plan is not None, model.config.model_type
    model.backbone.set_attn_implementation(varlen.register())
    model.packing_plan = plan
    return model


@pytest.mark.parametrize("arch,causal", [(a, c) for a in DECODERS for c in (True, False)] + [("bert", True)]
                         + [(e, True) for e in OTHER_ENCODERS if e != "mpnet"])
def test_varlen_packed_equals_padded(model_root, arch, causal):
    """Varlen attention (no mask, the collator's boundaries) gives the padded batch's logits, loss
    and gradients, the Gemma 3 sliding layers (window 16 < 20 and 27 tokens) included; the padded
    validation batches of the same model still go through sdpa with their mask."""
    model = _as_varlen(_classifier(model_root, arch, "mean", causal))
    _assert_packed_equals_padded(model, _items())
    _assert_packed_equals_padded(model, _items(), multiple_of=16)


@pytest.mark.parametrize("arch,causal", [("llama", True), ("gemma3", False), ("bert", True), ("gpt2", False)])
def test_varlen_examples_in_one_row_are_isolated(model_root, arch, causal):
    model = _as_varlen(_classifier(model_root, arch, "mean", causal))
    collate = PackingCollator(_pad_id(model))
    base = _items(0, (6, 7, 8))
    changed = [base[0], (_items(2, (19,))[0][0], 1), base[2]]
    with torch.no_grad():
        ref, out = (model(**{k: v for k, v in collate(x).items() if k != "labels"}) for x in (base, changed))
    assert torch.allclose(out[0], ref[0], atol=1e-6, rtol=0) and torch.allclose(out[2], ref[2], atol=1e-6, rtol=0)
    assert not torch.allclose(out[1], ref[1], atol=1e-3)


def test_varlen_is_cuda_only_and_restored_before_export(model_root):
    from tunelab.classify.packing import restore_attention, use_varlen

    model = _classifier(model_root, "llama", "last", True)
    assert use_varlen(model, torch.device("cpu"), print) is False and model.packing_plan.mode == "positions"
    _as_varlen(model).plan_before_varlen = _classifier(model_root, "llama", "last", True).packing_plan
    restore_attention(model)
    assert model.config._attn_implementation == "sdpa" and model.packing_plan.mode == "positions"
    assert _classifier(model_root, "mpnet", "mean").packing_plan.mode == "mask"  # no attention interface: keeps its mask


def test_varlen_keeps_the_plan_of_a_model_with_attention_dropout(model_root, monkeypatch):
    """The varlen kernel has no dropout: a packed GPT-2 (attn_pdrop 0.1 as released) would run one
    attention call per example. It keeps its plan and the log says why; without dropout it switches."""
    from tunelab.classify.packing import use_varlen
    from tunelab.model import varlen

    monkeypatch.setattr(varlen, "kernel_available", lambda device_type: True)  # as on CUDA
    lines = []
    model = _classifier(model_root, "gpt2", "last", True)
    model.config.attn_pdrop = 0.1
    before = model.packing_plan
    assert use_varlen(model, torch.device("cpu"), lines.append) is False
    assert model.packing_plan is before and "attention dropout 0.1" in lines[-1]
    model.config.attn_pdrop = 0.0
    assert use_varlen(model, torch.device("cpu"), lines.append) is True and model.packing_plan.mode == "varlen"
