"""One `pad` for every task: lists of token ids -> a right-padded (B, T) tensor and its mask;
and `bucket`, the one rounding of a varying size onto a few fixed ones.

Right padding only: training and scoring find each row's last real token from the mask, and
generation pads on the left inside transformers' tokenizer, not here.
"""

from __future__ import annotations

import torch


def pad(seqs: list[list[int]], value: int, width: int | None = None, multiple_of: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to `width` (default: the longest, rounded up to `multiple_of` if given).

    Returns (ids, attention_mask), both (B, T) long; the mask comes from the lengths alone, never
    from comparing ids with `value` (pad often equals EOS, and a trained EOS must stay real).

    >>> ids, mask = pad([[5, 6, 7], [8]], 0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    >>> pad([[5, 6, 7], [8]], -100, multiple_of=4)[0].tolist()
    [[5, 6, 7, -100], [8, -100, -100, -100]]
    """
    if width is None:
        width = max(len(s) for s in seqs)
        if multiple_of:
            width = -(-width // multiple_of) * multiple_of
    ids = torch.full((len(seqs), width), value, dtype=torch.long)  # (B, T)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in seqs]).unsqueeze(1)  # (B, 1)
    mask = (torch.arange(width).unsqueeze(0) < lengths).long()  # (B, T)
    return ids, mask


def bucket(n: int, per_octave: int = 8, smallest: int = 64) -> int:
    """`n` rounded up onto a grid with `per_octave` steps between powers of two (at least
    `smallest`): sizes that vary every batch fall on a few shapes, each wasting at most
    1/per_octave of it. What CUDA graphs and compilers need, which record one program per shape.

    >>> [bucket(n) for n in (1, 64, 65, 1000, 1025, 4352)]
    [64, 64, 72, 1024, 1152, 4608]
    """
    if n <= smallest:
        return smallest
    step = max(1, (1 << (n - 1).bit_length() - 1) // per_octave)
    return -(-n // step) * step
