"""Generation: a tiny model overfit on three answers stops at EOS / stop strings, batched."""

import functools

import pytest
import torch
from tests.helpers import one_thread, tiny_model, tiny_tokenizer

from tunelab.sft.collate import collate
from tunelab.sft.formats import row_to_messages
from tunelab.sft.generate import generate, left_pad, stop_token_ids, trim_at_stop
from tunelab.sft.objective import sft_loss
from tunelab.sft.templates import build_template, load_template, save_template
from tunelab.sft.tokenize import encode, encode_prompt, tokenize_messages

ROWS = [
    {"question": "How long is the refund period?", "context": "The refund period is 30 days.", "answer": "30 days"},
    {"question": "보험금 청구 기한은?", "context": "보험금 청구는 사고일로부터 3년 이내에 해야 합니다.", "answer": "3년 이내"},
    # the model learns to run on past its answer into the next section's header: the stop
    # string "\n[Question]" must cut it
    {"question": "What is the capital of France?", "context": "The capital of France is Paris.",
     "answer": "Paris\n[Question]\nagain"},
]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@functools.cache
def overfit(name="docqa"):
    """Train the tiny model on ROWS until it repeats them (about 60 steps, a few seconds on a CPU)."""
    tok = tiny_tokenizer()
    template = build_template(name, tok)
    model = tiny_model(tok, seed=1)
    batch = collate([tokenize_messages(row_to_messages(r), template, tok) for r in ROWS], tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        loss, n = sft_loss(model, batch)
        if (loss / n).item() < 0.01:
            break
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    assert (loss / n).item() < 0.01
    return model, tok, template


def questions():
    return [{k: v for k, v in r.items() if k != "answer"} for r in ROWS]


def test_generation_stops_at_eos_and_stop_strings_batched():
    model, tok, template = overfit()
    out = generate(model, tok, template, questions(), max_new_tokens=40, batch_size=3)
    assert out == ["30 days", "3년 이내", "Paris"]


def test_stops_right_after_eos():
    model, tok, template = overfit()
    prompt = encode_prompt(row_to_messages(questions()[0], require_answer=False), template, tok)
    ids = torch.tensor([prompt])
    gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                         do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    new = gen[0, len(prompt):].tolist()
    assert new == encode(tok, "30 days") + [tok.eos_token_id]  # EOS learned although pad == eos


def test_batched_left_padding_equals_one_by_one():
    model, tok, template = overfit()
    one = [generate(model, tok, template, [q], max_new_tokens=20)[0] for q in questions()]
    assert generate(model, tok, template, questions(), max_new_tokens=20, batch_size=2) == one


def test_saved_template_is_reused(tmp_path):
    model, tok, template = overfit()
    again = load_template(save_template(template, tmp_path / "sft_template.json"))
    assert generate(model, tok, again, questions()[:1], max_new_tokens=20) == ["30 days"]


def test_sampling_runs_with_a_seed():
    model, tok, template = overfit()
    kw = dict(max_new_tokens=8, do_sample=True, temperature=0.7, top_p=0.9, seed=0)
    assert generate(model, tok, template, questions(), **kw) == generate(model, tok, template, questions(), **kw)


def test_chat_template_generation():
    model, tok, template = overfit("chat")
    assert generate(model, tok, template, questions()[:2], max_new_tokens=20) == ["30 days", "3년 이내"]


def test_stop_ids_include_end_of_turn_when_it_differs_from_eos():
    tok = tiny_tokenizer(eos="<|endoftext|>")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(build_template("chat", tok), tok) == [tok.eos_token_id, im_end]
    assert stop_token_ids(build_template("alpaca"), tok) == [tok.eos_token_id]


def test_small_helpers():
    ids, mask = left_pad([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert trim_at_stop("Paris\n[Question]\nx", ["\n[Question]", "\n[Context]"]) == "Paris"
    assert trim_at_stop("no stop", ["\n[Question]"]) == "no stop"


def test_cut_by_max_new_tokens_never_returns_half_a_korean_character():
    model, tok, template = overfit()
    q = questions()[1]
    n = len(encode(tok, "3년 이내"))
    assert n > len("3년 이내")  # some syllables span several byte-level tokens
    for k in range(1, n + 1):
        out = generate(model, tok, template, [q], max_new_tokens=k)[0]
        assert "\ufffd" not in out and "3년 이내".startswith(out)
