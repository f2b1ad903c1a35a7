"""The tiny offline SFT assets of tests/helpers.py behave like the real ones: a byte-level BPE
tokenizer that mimics SmolLM2 (ChatML chat template with a default system prompt, pad == eos ==
<|im_end|>) and a 2-layer Llama."""

from __future__ import annotations

from tests.helpers import tiny_tokenizer


def test_tiny_tokenizer_is_like_smollm2():
    tok = tiny_tokenizer()
    assert tok.pad_token_id == tok.eos_token_id == 2
    assert tok.decode(tok("보험금 청구", add_special_tokens=False)["input_ids"]) == "보험금 청구"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "named SmolLM" in text  # the default system prompt, as in SmolLM2
    assert tiny_tokenizer(bos=True)("a")["input_ids"][0] == 0
