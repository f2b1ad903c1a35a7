"""Batches and the SFT objective: padding, EOS kept with pad == eos, sums across micro-batches."""

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import one_thread, tiny_model, tiny_tokenizer

from tunelab.sft.collate import collate, count_targets
from tunelab.sft.formats import row_to_messages
from tunelab.sft.objective import sft_loss
from tunelab.sft.templates import build_template
from tunelab.sft.tokenize import IGNORE, tokenize_messages

ROWS = [
    {"prompt": "The capital of France is", "completion": " Paris."},
    {"instruction": "Answer.", "input": "2+2", "output": "4"},
    {"question": "보험금 청구 기한은?", "context": "사고일로부터 3년 이내", "answer": "3년 이내"},
    {"question": "How long?", "context": "The refund period is 30 days from delivery.", "answer": "30 days"},
]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def examples(tok, template="alpaca"):
    t = build_template(template, tok)
    return [tokenize_messages(row_to_messages(r), t, tok) for r in ROWS]


def test_right_padding_keeps_eos_target_when_pad_equals_eos():
    tok = tiny_tokenizer()
    exs = examples(tok)
    batch = collate(exs, pad_id=tok.pad_token_id)
    B, T = batch["input_ids"].shape
    assert (B, T) == (4, max(len(e["input_ids"]) for e in exs))
    for b, e in enumerate(exs):
        n = len(e["input_ids"])
        assert batch["input_ids"][b, :n].tolist() == e["input_ids"]
        assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (T - n)
        assert batch["labels"][b].tolist() == e["labels"] + [IGNORE] * (T - n)
        # the answer's EOS (same id as pad) is a target; the pads after it are not
        assert batch["labels"][b, n - 1] == tok.eos_token_id == tok.pad_token_id
    assert int(batch["num_target_tokens"]) == sum(sum(l != IGNORE for l in e["labels"][1:]) for e in exs)


def test_pad_to_multiple_and_target_count_after_shift():
    b = collate([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}], pad_id=0, multiple_of=8)
    assert b["input_ids"].shape == (1, 8) and b["attention_mask"].sum() == 3
    assert int(b["num_target_tokens"]) == 2  # position 0 is never a prediction target
    assert int(count_targets(torch.tensor([[IGNORE, IGNORE]]))) == 0


def test_sft_loss_is_the_summed_shifted_cross_entropy():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    batch = collate(examples(tok), pad_id=tok.pad_token_id)
    loss_sum, n = sft_loss(model, batch)
    assert int(n) == int(batch["num_target_tokens"])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    manual, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(1, logits.shape[1]):
            y = int(batch["labels"][b, t])
            if y != IGNORE:
                manual += F.cross_entropy(logits[b, t - 1][None], torch.tensor([y])).item()
                count += 1
    assert count == int(n)
    assert abs(loss_sum.item() - manual) < 1e-3
    # a random-init model: loss per target about ln(vocab)
    assert abs(loss_sum.item() / int(n) - torch.log(torch.tensor(len(tok))).item()) < 0.5


def test_loss_of_padded_rows_does_not_depend_on_padding():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    exs = examples(tok)
    alone = sum(sft_loss(model, collate([e], pad_id=tok.pad_token_id))[0].item() for e in exs)
    together = sft_loss(model, collate(exs, pad_id=tok.pad_token_id))[0].item()
    assert abs(alone - together) < 1e-3


def test_gradient_accumulation_normalises_by_all_targets():
    """Two micro-batches scaled by the group's target count give the full batch's gradient."""
    tok = tiny_tokenizer()
    exs = examples(tok)
    model = tiny_model(tok)
    full = collate(exs, pad_id=tok.pad_token_id)
    loss, n = sft_loss(model, full)
    (loss / n).backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    micro = [collate(exs[:1], pad_id=tok.pad_token_id), collate(exs[1:], pad_id=tok.pad_token_id)]
    total = sum(int(m["num_target_tokens"]) for m in micro)
    assert total == int(n)
    for m in micro:
        loss, _ = sft_loss(model, m)
        (loss / total).backward()
    for p, g in zip(model.parameters(), reference):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_no_targets_gives_zero_not_nan():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE] * 3}], pad_id=tok.pad_token_id)
    loss, n = sft_loss(model, batch)
    assert int(n) == 0 and loss.item() == 0.0
