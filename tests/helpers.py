"""Helpers the tests share: tiny random-init models of real architectures saved as local Hugging
Face folders with tokenizers built offline, a small synthetic labelled data set, config writers.

Nothing here downloads anything; each model has 2 layers and a hidden size of 32, so a training
run takes seconds on a CPU. Fixtures built from these live in conftest.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
from pathlib import Path

import torch

WORDS = (
    "win free prize cash claim urgent call now txt offer winner bonus "
    "hi see you later lunch ok thanks home meeting tomorrow love dinner sorry tonight "
    "the a to and is it for of on in my your me we please reply"
).split()
SPAM_WORDS = set("win free prize cash claim urgent winner bonus offer".split())


def build_tokenizer(folder: Path):
    """A small byte-level BPE tokenizer trained on WORDS, with pad/eos/unk tokens: the kind of
    tokenizer real decoders ship, so every family's tokenizer class can read it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 50 + WORDS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.save_pretrained(str(folder))
    return fast


ENCODERS = ("bert", "mpnet", "roberta", "albert", "electra", "distilbert")


def tiny_config(arch: str, vocab_size: int):
    import transformers as tf

    common = dict(vocab_size=vocab_size, pad_token_id=0, eos_token_id=1)
    if arch == "llama":
        return tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, tie_word_embeddings=True, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **common)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=1, **common)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=128, sliding_window=16, **common)
    if arch == "bert":
        return tf.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128, **common)
    if arch == "mpnet":
        return tf.MPNetConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=130, **common)
    if arch == "roberta":
        return tf.RobertaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=130, **common)
    if arch == "albert":
        return tf.AlbertConfig(embedding_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128, **common)
    if arch == "electra":
        return tf.ElectraConfig(embedding_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128, **common)
    if arch == "distilbert":
        return tf.DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=4, max_position_embeddings=128, **common)
    raise ValueError(arch)


def make_model_dir(root: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A local HF folder with a tiny random-init causal LM (or encoder: one of ENCODERS) and its tokenizer."""
    import torch
    import transformers as tf

    folder = root / f"tiny-{arch}"
    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(folder)
    torch.manual_seed(seed)
    config = tiny_config(arch, len(tok))
    model = tf.AutoModel.from_config(config) if arch in ENCODERS else tf.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(folder))
    return folder


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Short messages; 'spam' when they contain a spam word. Balanced-ish, deterministic."""
    rng = random.Random(seed)
    ham_words = [w for w in WORDS if w not in SPAM_WORDS]
    rows = []
    for i in range(n):
        spam = i % 3 == 0
        words = rng.sample(ham_words, rng.randint(3, 8))
        if spam:
            words.insert(rng.randrange(len(words)), rng.choice(sorted(SPAM_WORDS)))
        rows.append({"text": " ".join(words), "label": "spam" if spam else "ham"})
    return rows


CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.",
    "### Instruction:\n### Input:\n### Response:\n",
    "The capital of France is Paris. The refund period is 30 days from delivery.",
    "Answer the [Question] using the [Context] below. The answer cannot be found.",
    "아래 [내용]을 참고해서 [질문]에 대해 답변해주세요. 답변을 찾을 수 없습니다.",
    "보험금 청구는 사고일로부터 3년 이내에 해야 합니다. 대출 금리는 연 4.5%입니다.",
    "system user assistant You are a helpful AI assistant named SmolLM",
]


@functools.cache
def tiny_tokenizer(bos: bool = False, eos: str = "<|im_end|>"):
    """A fast tokenizer trained here (vocab ~500). bos=True adds a Llama-style BOS prefix;
    eos="<|endoftext|>" makes the chat end-of-turn token differ from EOS (as in Gemma)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token=eos, pad_token=eos,
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    return fast


def tiny_model(tokenizer, seed: int = 0):
    """A random-init 2-layer Llama sized to the tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


@contextlib.contextmanager
def one_thread():
    """Run tiny-model work on one thread: on a busy 2-core machine, two threads per process
    fight over cores and tiny ops get ~50x slower (seen: 0.8 s vs 50 s for 60 steps)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_config(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def base_config(train_file: Path, model_dir: Path, out: Path, **train) -> dict:
    return {
        "output_dir": str(out),
        "data": {"train": str(train_file), "max_length": 32},
        "model": {"name": str(model_dir), "trainable": "all"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 3e-3, "warmup": 0.1, "eval_every": 5, "seed": 7, **train},
    }


def read_json(path: Path):
    return json.loads(Path(path).read_text())


GEMMA_CHAT = (
    "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@functools.cache
def tiny_sentencepiece_tokenizer():
    """A Gemma-style tokenizer trained here: BPE on "▁"-joined words with byte fallback (the 256
    <0xXX> tokens), <bos> added to every text, a <start_of_turn>/<end_of_turn> chat template, as
    transformers' GemmaTokenizer builds it; the kind SentencePiece models (Gemma, Llama 2) ship."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")  # pieces within words, as SentencePiece learns
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials + byte_tokens, show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer)
    spec = json.loads(tok.to_str())["model"]
    fast = GemmaTokenizer(vocab=spec["vocab"], merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]],
                          add_bos_token=True)
    fast.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    fast.chat_template = GEMMA_CHAT
    return fast


def kill_after_first_checkpoint(cmd: list[str], run_dir: Path, timeout: float = 300) -> None:
    """Start `cmd` (a `tunelab train`), SIGKILL it as soon as its first checkpoint exists, and check
    that it had not finished (the run must be slow enough for the kill to land mid-training)."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + timeout
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists(), "finished before the kill; the test needs a slower run"
