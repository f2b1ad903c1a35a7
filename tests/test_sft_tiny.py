"""Tiny offline assets for the SFT tests: a byte-level BPE tokenizer and a 2-layer Llama.

The other test_sft_* files import `tiny_tokenizer` and `tiny_model` from here. The tokenizer
mimics SmolLM2: ChatML chat template with a default system prompt, pad == eos == <|im_end|>.
"""

from __future__ import annotations

import contextlib
import functools

import torch

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


@functools.lru_cache(maxsize=None)
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


def test_tiny_tokenizer_is_like_smollm2():
    tok = tiny_tokenizer()
    assert tok.pad_token_id == tok.eos_token_id == 2
    assert tok.decode(tok("보험금 청구", add_special_tokens=False)["input_ids"]) == "보험금 청구"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "named SmolLM" in text  # the default system prompt, as in SmolLM2
    assert tiny_tokenizer(bos=True)("a")["input_ids"][0] == 0
