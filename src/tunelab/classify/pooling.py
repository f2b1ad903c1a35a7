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


def _flat_segments(segment_ids: torch.Tensor, n: int | None = None) -> tuple[torch.Tensor, int]:
    """Give every (row, segment) pair a global index.

    Returns (index, n): index (B*T,) of the sequence each token belongs to, n for padding (one spare
    slot that the callers drop), and n the number of sequences. Passing `n` when the caller knows
    it (a packed row: its number of labels) avoids reading it back from the GPU, so that the
    pooling runs inside a CUDA graph (`tunelab.train.cuda_graphs`).
    """
    seg = segment_ids.long()  # (B, T)
    per_row = seg.amax(dim=1)  # (B,) sequences in each row
    offsets = torch.cumsum(per_row, 0) - per_row  # (B,) sequences before each row
    index = (seg - 1 + offsets[:, None]).reshape(-1)  # (B*T,)
    n = int(per_row.sum()) if n is None else n
    return torch.where(seg.reshape(-1) > 0, index, torch.full_like(index, n)), n


def _pick_position(hidden: torch.Tensor, segment_ids: torch.Tensor, reduce: str, n: int | None) -> torch.Tensor:
    """Hidden state at the last ("amax") or first ("amin") real position of each sequence."""
    B, T, H = hidden.shape
    index, n = _flat_segments(segment_ids, n)
    positions = torch.arange(B * T, device=hidden.device)  # flat (row * T + t)
    fill = -1 if reduce == "amax" else B * T
    chosen = torch.full((n + 1,), fill, dtype=torch.long, device=hidden.device)
    chosen = chosen.scatter_reduce(0, index, positions, reduce=reduce)[:n]  # (n,): padding went to the spare slot n
    return hidden.reshape(B * T, H)[chosen]  # (n, H)


def pool_last(hidden: torch.Tensor, segment_ids: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """The last real token of each sequence (right or left padding alike).

    >>> h = torch.arange(6.).reshape(1, 3, 2)            # one row, 3 tokens, H=2
    >>> pool_last(h, torch.tensor([[1, 1, 0]])).tolist() # right padding: token 1
    [[2.0, 3.0]]
    >>> pool_last(h, torch.tensor([[0, 1, 1]])).tolist() # left padding: token 2
    [[4.0, 5.0]]
    """
    return _pick_position(hidden, segment_ids, "amax", n)


def pool_first(hidden: torch.Tensor, segment_ids: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """The first real token of each sequence ([CLS] for BERT-style encoders).

    >>> h = torch.arange(6.).reshape(1, 3, 2)
    >>> pool_first(h, torch.tensor([[0, 1, 1]])).tolist()
    [[2.0, 3.0]]
    """
    return _pick_position(hidden, segment_ids, "amin", n)


def pool_mean(hidden: torch.Tensor, segment_ids: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Mean over the real tokens of each sequence.

    >>> h = torch.arange(6.).reshape(1, 3, 2)
    >>> pool_mean(h, torch.tensor([[1, 1, 2]])).tolist()  # packed: two sequences in one row
    [[1.0, 2.0], [4.0, 5.0]]
    """
    B, T, H = hidden.shape
    index, n = _flat_segments(segment_ids, n)
    flat = hidden.reshape(B * T, H)
    sums = torch.zeros(n + 1, H, dtype=hidden.dtype, device=hidden.device).index_add_(0, index, flat)[:n]
    counts = torch.zeros(n + 1, dtype=hidden.dtype, device=hidden.device).index_add_(0, index, torch.ones_like(flat[:, 0]))[:n]
    return sums / counts[:, None]  # (n, H)


def pool(hidden: torch.Tensor, segment_ids: torch.Tensor, how: str, n: int | None = None) -> torch.Tensor:
    """Dispatch on the pooling name (`last`, `first`, `mean`); returns (num_sequences, H).
    `n`, the number of sequences, when the caller knows it (see `_flat_segments`)."""
    if how == "last":
        return pool_last(hidden, segment_ids, n)
    if how == "first":
        return pool_first(hidden, segment_ids, n)
    if how == "mean":
        return pool_mean(hidden, segment_ids, n)
    raise ValueError(f"unknown pooling {how!r}; expected one of {POOLINGS}")
