"""Pooling picks the right vector for right, left and packed layouts."""


import torch

from tunelab.classify.pooling import pool


def test_last_token_right_and_left_padding_agree():
    torch.manual_seed(0)
    h = torch.randn(2, 5, 4)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    # Same sequences left-padded: shift the hidden states accordingly.
    h_left = torch.stack([torch.cat([h[0, 3:], h[0, :3]]), h[1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert torch.equal(pool(h, right, "last"), pool(h_left, left, "last"))
    assert torch.equal(pool(h, right, "last")[0], h[0, 2])
    assert torch.equal(pool(h, right, "first"), pool(h_left, left, "first"))
    assert torch.allclose(pool(h, right, "mean"), pool(h_left, left, "mean"))


def test_packed_rows_pool_each_sequence():
    h = torch.arange(2 * 6 * 1, dtype=torch.float32).reshape(2, 6, 1)
    seg = torch.tensor([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
    assert pool(h, seg, "last").flatten().tolist() == [1.0, 4.0, 11.0]
    assert pool(h, seg, "first").flatten().tolist() == [0.0, 2.0, 6.0]
    assert pool(h, seg, "mean").flatten().tolist() == [0.5, 3.0, 8.5]


def test_mean_ignores_padding_values():
    h = torch.ones(1, 4, 2)
    h[0, 3] = 100.0  # a pad position with a large value
    assert pool(h, torch.tensor([[1, 1, 1, 0]]), "mean").tolist() == [[1.0, 1.0]]
