"""Pooling: pick one vector per sequence from the backbone's hidden states.

Sequences are described by `segment_ids` (B, T): 0 marks padding and k >= 1 marks the k-th
sequence of that row. An ordinary padded batch has segment_ids == attention_mask (one sequence per
row, left or right padded); a packed, padding-free batch simply has 1, 1, 2, 2, 2, 3 ... in a row.
Every function returns one vector per sequence, in row-major order (row 0 seq 1, row 0 seq 2, ...),
so the head and the loss never need to know how the batch was laid out.
"""

from __future__ import annotations

import torch

POOLINGS = ("last", "first", "mean")


def _flat_segments(segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Give every (row, segment) pair a global index.

    Returns (index, valid, n): index (B*T,) of the sequence each token belongs to (0 for padding,
    masked out by `valid`), valid (B*T,) True on real tokens, n the number of sequences.
    """
    seg = segment_ids.long()  # (B, T)
    per_row = seg.amax(dim=1)  # (B,) sequences in each row
    offsets = torch.cumsum(per_row, 0) - per_row  # (B,) sequences before each row
    index = (seg - 1 + offsets[:, None]).reshape(-1)  # (B*T,)
    valid = (seg > 0).reshape(-1)
    n = int(per_row.sum())
    return torch.where(valid, index, torch.zeros_like(index)), valid, n


def _pick_position(hidden: torch.Tensor, segment_ids: torch.Tensor, reduce: str) -> torch.Tensor:
    """Hidden state at the last ("amax") or first ("amin") real position of each sequence."""
    B, T, H = hidden.shape
    index, valid, n = _flat_segments(segment_ids)
    positions = torch.arange(B * T, device=hidden.device)  # flat (row * T + t)
    fill = -1 if reduce == "amax" else B * T
    chosen = torch.full((n,), fill, dtype=torch.long, device=hidden.device)
    chosen = chosen.scatter_reduce(0, index[valid], positions[valid], reduce=reduce)  # (n,)
    return hidden.reshape(B * T, H)[chosen]  # (n, H)


def pool_last(hidden: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """The last real token of each sequence (right or left padding alike).

    >>> h = torch.arange(6.).reshape(1, 3, 2)            # one row, 3 tokens, H=2
    >>> pool_last(h, torch.tensor([[1, 1, 0]])).tolist() # right padding: token 1
    [[2.0, 3.0]]
    >>> pool_last(h, torch.tensor([[0, 1, 1]])).tolist() # left padding: token 2
    [[4.0, 5.0]]
    """
    return _pick_position(hidden, segment_ids, "amax")


def pool_first(hidden: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """The first real token of each sequence ([CLS] for BERT-style encoders).

    >>> h = torch.arange(6.).reshape(1, 3, 2)
    >>> pool_first(h, torch.tensor([[0, 1, 1]])).tolist()
    [[2.0, 3.0]]
    """
    return _pick_position(hidden, segment_ids, "amin")


def pool_mean(hidden: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens of each sequence.

    >>> h = torch.arange(6.).reshape(1, 3, 2)
    >>> pool_mean(h, torch.tensor([[1, 1, 2]])).tolist()  # packed: two sequences in one row
    [[1.0, 2.0], [4.0, 5.0]]
    """
    B, T, H = hidden.shape
    index, valid, n = _flat_segments(segment_ids)
    flat = hidden.reshape(B * T, H)[valid]  # (real tokens, H)
    sums = torch.zeros(n, H, dtype=hidden.dtype, device=hidden.device).index_add_(0, index[valid], flat)
    counts = torch.zeros(n, dtype=hidden.dtype, device=hidden.device).index_add_(0, index[valid], torch.ones_like(flat[:, 0]))
    return sums / counts[:, None]  # (n, H)


def pool(hidden: torch.Tensor, segment_ids: torch.Tensor, how: str) -> torch.Tensor:
    """Dispatch on the pooling name (`last`, `first`, `mean`); returns (num_sequences, H)."""
    if how == "last":
        return pool_last(hidden, segment_ids)
    if how == "first":
        return pool_first(hidden, segment_ids)
    if how == "mean":
        return pool_mean(hidden, segment_ids)
    raise ValueError(f"unknown pooling {how!r}; expected one of {POOLINGS}")
