"""Exact and near-duplicate detection, vectorised with numpy so a million rows take minutes.

    groups = near_duplicates(texts, threshold=0.7).groups   # (N,) cluster id = first row index

Exact duplicates: identical after `dedup_key` (NFKC, case folded, whitespace collapsed).

Near duplicates: Jaccard similarity of character shingles, estimated with MinHash and found with
LSH banding, then every candidate pair is verified on its signatures (the share of equal slots),
and verified pairs are joined into clusters (connected components).
- Shingles are `shingle_size` consecutive characters of the text case folded, with punctuation
  and spaces removed (so spacing variants, common in Korean, still match) and Hangul syllables
  decomposed into jamo: a syllable carries about as much as two or three Latin letters, and in
  jamo one 5-character shingle spans about two syllables, the same reach as in English.
- MinHash is one-permutation hashing with densification (Shrivastava & Li 2014; Shrivastava
  2017): every shingle is hashed once and goes to one of `num_perm` bins, keeping the minimum per
  bin; empty bins borrow from the next filled bin to the right. Equal-slot share estimates the
  Jaccard similarity like classic MinHash, at 1/num_perm of the hashing cost.
- Bands and rows per band are chosen for the threshold by minimising the weighted area of false
  positives and false negatives under the LSH curve (false negatives weighted more: a missed
  pair cannot be recovered, a false candidate is discarded by verification).
- A bucket with many members yields a star (first member with each) plus a chain (neighbours),
  not all pairs, so a thousand copies cost a thousand pairs, not half a million.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

_NON_WORD = re.compile(r"[\W_]+")
_U64 = np.uint64
_MASK32 = _U64(0xFFFFFFFF)


def dedup_key(text: str) -> str:
    """The key for exact duplicates: NFKC, case folded, whitespace collapsed.

    >>> dedup_key("  Hello\\u00a0 WORLD ") == dedup_key("hello world")
    True
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def shingle_text(text: str) -> str:
    """The string that shingles are cut from: NFKC, case folded, NFD (Hangul -> jamo), letters
    and digits only.

    >>> len(shingle_text("한국어, OK!"))  # 3 syllables -> 8 jamo, plus 'ok'
    10
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return _NON_WORD.sub("", unicodedata.normalize("NFD", text))


def exact_groups(texts: Sequence[str]) -> np.ndarray:
    """(N,) int64: for each row, the index of the first row with the same `dedup_key`.

    >>> exact_groups(["a b", "c", "A  B"]).tolist()
    [0, 1, 0]
    """
    first: dict[str, int] = {}
    out = np.empty(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        out[i] = first.setdefault(dedup_key(t), i)
    return out


# --- MinHash -------------------------------------------------------------------------------------


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a good 64-bit hash of a 64-bit value (vectorised, wraps mod 2**64)."""
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _signatures_chunk(keys: list[str], num_perm: int, k: int, seed: int) -> np.ndarray:
    n = len(keys)
    sig = np.zeros((n, num_perm), dtype=np.uint32)
    lens = np.fromiter((len(s) for s in keys), dtype=np.int64, count=n)
    has_text = lens > 0
    if not has_text.any():
        return sig
    # rows shorter than k become one shingle: pad them to k with NUL
    padded = [s + "\0" * (k - len(s)) if 0 < len(s) < k else s for s in keys]
    lens = np.maximum(lens, np.where(has_text, k, 0))
    cp = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    total = cp.size
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=starts[1:])

    # polynomial hash of every k-gram, including ones that cross row boundaries (dropped below)
    m = total - k + 1
    h = np.zeros(m, dtype=np.uint64)
    for j in range(k):
        h = h * _U64(1_000_003) + cp[j : j + m]
    row = np.repeat(np.arange(n, dtype=np.int64), lens)[:m]  # (M,) row of each k-gram start
    valid = (starts[row + 1] - np.arange(m)) >= k
    h, row = h[valid], row[valid]
    h = _mix64(h ^ _U64(seed * 0x632BE59BD9B4E019 & 0xFFFFFFFFFFFFFFFF))

    # one-permutation hashing: bin from the low bits, value from the high 32 bits
    bins = (h % _U64(num_perm)).astype(np.int64)
    vals = (h >> _U64(32)).astype(np.uint32)
    flat = row * num_perm + bins
    best = np.full(n * num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
    np.minimum.at(best, flat, vals)
    filled = np.zeros(n * num_perm, dtype=bool)
    filled[flat] = True
    best = best.reshape(n, num_perm)
    filled = filled.reshape(n, num_perm)

    # densification: an empty bin takes the next filled bin to its right (circular), offset by the
    # distance so borrowed values differ from the bin they came from
    pos = np.arange(2 * num_perm, dtype=np.int32)
    idx = np.where(np.concatenate([filled, filled], axis=1), pos, 2 * num_perm)
    nxt = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1][:, :num_perm]  # (n, P)
    nxt = np.minimum(nxt, 2 * num_perm - 1)
    dist = (nxt - pos[:num_perm]).astype(np.uint32)
    src = nxt % num_perm
    sig = np.take_along_axis(best, src, axis=1) + dist * np.uint32(0x9E3779B1)
    sig[~has_text] = 0
    return sig


def minhash_signatures(
    texts: Sequence[str],
    num_perm: int = 128,
    shingle_size: int = 5,
    seed: int = 1,
    chunk_rows: int = 20_000,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(N, num_perm) uint32 MinHash signatures of the character shingles of each text.
    Rows without letters or digits get an all-zero signature (never a candidate).

    >>> s = minhash_signatures(["배송은 보통 2~3일 걸립니다.", "배송은 보통 2~3일 정도 걸립니다", "buy now"])
    >>> s.shape, bool((s[0] == s[1]).mean() > 0.5), bool((s[0] == s[2]).mean() < 0.1)
    ((3, 128), True, True)
    """
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    for lo in range(0, len(texts), chunk_rows):
        keys = [shingle_text(t) for t in texts[lo : lo + chunk_rows]]
        out[lo : lo + len(keys)] = _signatures_chunk(keys, num_perm, shingle_size, seed)
        if progress:
            progress(len(keys))
    return out


# --- LSH -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.3) -> tuple[int, int]:
    """(bands, rows per band) with bands * rows <= num_perm minimising
    fp_weight * (area of false positives below threshold)
    + (1 - fp_weight) * (area of false negatives above it).

    >>> lsh_params(0.7, 128)
    (16, 8)
    """
    s = np.linspace(0.0, 1.0, 401)  # (S,) similarity grid
    combos = np.array([(b, r) for r in range(1, num_perm + 1) for b in range(1, num_perm // r + 1)])
    b, r = combos[:, :1].astype(np.float64), combos[:, 1:].astype(np.float64)  # (C, 1)
    p = 1.0 - (1.0 - s[None, :] ** r) ** b  # (C, S) probability that a pair becomes a candidate
    ds = s[1] - s[0]
    fp = (p * (s < threshold)).sum(axis=1) * ds
    fn = ((1.0 - p) * (s >= threshold)).sum(axis=1) * ds
    best = int(np.argmin(fp_weight * fp + (1 - fp_weight) * fn))
    return int(combos[best, 0]), int(combos[best, 1])


def _band_pairs(sig: np.ndarray, active: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Candidate pairs (M, 2) int64, i < j, from rows that share a whole band."""
    n = sig.shape[0]
    ids = np.flatnonzero(active)
    found = []
    for b in range(bands):
        block = sig[ids, b * rows : (b + 1) * rows].astype(np.uint64)  # (n_active, rows)
        h = np.full(len(ids), _U64(b), dtype=np.uint64)
        for c in range(rows):
            h = _mix64(h ^ block[:, c])
        order = np.argsort(h, kind="stable")
        hs, members = h[order], ids[order]
        same = hs[1:] == hs[:-1]  # member i+1 shares the bucket of member i
        if not same.any():
            continue
        # chain: neighbours in the bucket
        found.append(np.stack([members[:-1][same], members[1:][same]], axis=1))
        # star: each member with its bucket's first member
        new_bucket = np.concatenate([[True], ~same])
        first = members[np.maximum.accumulate(np.where(new_bucket, np.arange(len(hs)), 0))]
        star = first != members
        star[1:] &= ~(same & (first[1:] == members[:-1]))  # already a chain pair
        found.append(np.stack([first[star], members[star]], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(found)
    pairs.sort(axis=1)
    codes = np.unique(pairs[:, 0] * n + pairs[:, 1])
    return np.stack([codes // n, codes % n], axis=1)


def signature_similarity(sig: np.ndarray, pairs: np.ndarray, chunk: int = 200_000) -> np.ndarray:
    """(M,) estimated Jaccard similarity of each pair: the share of equal signature slots."""
    out = np.empty(len(pairs), dtype=np.float32)
    for lo in range(0, len(pairs), chunk):
        p = pairs[lo : lo + chunk]
        out[lo : lo + len(p)] = (sig[p[:, 0]] == sig[p[:, 1]]).mean(axis=1)
    return out


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """(N,) cluster id of each row = smallest row index in its connected component.

    >>> components(5, np.array([[1, 3], [3, 4]])).tolist()
    [0, 1, 2, 1, 1]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(pairs) == 0:
        return np.arange(n, dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n, dtype=np.int64))
    return first[labels]


@dataclass
class NearDuplicates:
    groups: np.ndarray  # (N,) int64 cluster id = first row index of the cluster
    pairs: np.ndarray  # (M, 2) int64 verified pairs, i < j
    similarity: np.ndarray  # (M,) float32 estimated Jaccard of each pair
    bands: int
    rows: int


def near_duplicates(
    texts: Sequence[str],
    threshold: float = 0.7,
    num_perm: int = 128,
    shingle_size: int = 5,
    seed: int = 1,
    signatures: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> NearDuplicates:
    """Clusters of rows whose estimated Jaccard similarity is at least `threshold` (pairs are
    joined transitively). Exact duplicates land in the same cluster too.

    >>> nd = near_duplicates(["환불은 언제 되나요?", "환불은 언제 되나요", "배송 조회", "Refund please"])
    >>> nd.groups.tolist()
    [0, 0, 2, 3]
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    sig = signatures if signatures is not None else minhash_signatures(
        texts, num_perm=num_perm, shingle_size=shingle_size, seed=seed, progress=progress
    )
    bands, rows = lsh_params(threshold, sig.shape[1])
    active = sig.any(axis=1)
    pairs = _band_pairs(sig, active, bands, rows)
    sim = signature_similarity(sig, pairs)
    keep = sim >= threshold - 1e-6
    pairs, sim = pairs[keep], sim[keep]
    return NearDuplicates(components(len(sig), pairs), pairs, sim, bands, rows)
