"""`auto` for data.packing and train.compile (tunelab.train.fastpath): what a GPU user gets without
setting either, and that a CPU run, a cached run and an explicit setting are never overridden."""

import torch
from tests.helpers import base_config, make_model_dir, write_config

from tunelab.classify.model import TextClassifier
from tunelab.classify.packing import varlen_blocker
from tunelab.model.backbone import load_backbone
from tunelab.train.compiling import resolve_compile
from tunelab.train.fastpath import COMPILE_MIN_STEPS, PACK_MIN_MEAN_TOKENS, classification_auto


def test_auto_packs_long_texts_and_compiles_long_runs_on_cuda_only():
    long_run = classification_auto("cuda", None, COMPILE_MIN_STEPS, 40.0)
    assert (long_run.packing, long_run.compile) == (True, True)  # short texts too: packed + compiled measured 1.42x padded
    long_texts = classification_auto("cuda", None, COMPILE_MIN_STEPS - 1, PACK_MIN_MEAN_TOKENS)
    assert (long_texts.packing, long_texts.compile) == (True, False)
    short = classification_auto("cuda", None, COMPILE_MIN_STEPS - 1, PACK_MIN_MEAN_TOKENS - 1)
    assert (short.packing, short.compile) == (False, False) and "on average" in short.why
    lora = classification_auto("cuda", None, COMPILE_MIN_STEPS, 40.0, policy="lora")
    assert (lora.packing, lora.compile) == (True, False) and "compile measured for all only" in lora.why
    for choice in (classification_auto("cpu", None, 10 * COMPILE_MIN_STEPS, 900.0),
                   classification_auto("cuda", "the frozen-prefix cache applies", 10 * COMPILE_MIN_STEPS, 900.0)):
        assert (choice.packing, choice.compile) == (False, False)
    assert "frozen-prefix cache" in classification_auto("cuda", "the frozen-prefix cache applies", 5000, 900.0).why


def test_compile_auto_follows_the_choice_and_explicit_settings_win():
    on = classification_auto("cuda", None, 5000, 600.0)
    assert resolve_compile("auto", "cuda", on) == (True, "train.compile auto -> on: " + on.why)
    assert resolve_compile("auto", "cpu", on)[0] is False  # never on a CPU
    assert resolve_compile("off", "cuda", on)[0] is False
    assert resolve_compile("auto", "cuda", classification_auto("cuda", None, 300, 600.0))[0] is False
    assert resolve_compile("auto", "cuda")[0] is False and resolve_compile("on", "cuda")[0] is True


def test_varlen_blocker_names_what_stops_fast_packed_rows(tmp_path):
    llama = TextClassifier(load_backbone(make_model_dir(tmp_path, "llama")), 2, pooling="mean")
    assert varlen_blocker(llama, torch.device("cpu")) == "torch's varlen attention kernel is not available"
    import transformers as tf

    deberta = tf.AutoModel.from_config(tf.DebertaV2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                          num_attention_heads=4, max_position_embeddings=128))
    assert "deberta-v2" in varlen_blocker(TextClassifier(deberta, 2, pooling="first"), torch.device("cuda"))


def test_a_cpu_run_resolves_auto_off_and_says_so(tmp_path, spam_csv, tiny_llama):
    from tunelab.classify.run import train_classifier
    from tunelab.config import load_config

    cfg = load_config(write_config(tmp_path / "run.yaml", base_config(spam_csv, tiny_llama, tmp_path / "run", max_steps=2)))
    lines = []
    train_classifier(cfg, log=lines.append)
    assert "data.packing auto -> off: cpu: padded micro-batches" in lines
    assert not any(line.startswith("train.compile") for line in lines)  # auto on a CPU: nothing to say
