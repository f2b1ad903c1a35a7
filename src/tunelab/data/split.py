"""Stratified train/validation/test splits and k folds that keep duplicate groups on one side.

    tunelab data split data/clean.jsonl --out data/splits --validation 0.1 --test 0.2 --seed 123

`groups` gives every row a cluster id (from `dedup.near_duplicates`); all rows of a cluster go to
the same split, so a near copy of a test row never sits in train. Groups of two or more rows are
placed first, largest first, each into the split that needs its labels most; single rows then fill
every split up to its exact per-label target, so the label mix of each split stays as close to the
whole as the groups allow. The same seed gives the same split.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunelab.errors import TunelabError

SPLITS = ("train", "validation", "test")


def _label_codes(labels: Sequence[Any] | None, n: int) -> tuple[np.ndarray, list[str]]:
    if labels is None:
        return np.zeros(n, dtype=np.int64), ["*"]
    keys = [v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False) for v in labels]
    names, codes = np.unique(np.array(keys, dtype=object).astype(str), return_inverse=True)
    return codes.astype(np.int64), [str(x) for x in names]


def _largest_remainder(quota: np.ndarray, total: int, deficit: np.ndarray) -> np.ndarray:
    """Integer counts summing to `total`, close to `quota`; ties go to the part furthest below its
    overall target (`deficit`), so rounding does not always favour the first part."""
    base = np.floor(quota + 1e-9).astype(np.int64)
    short = total - int(base.sum())
    if short > 0:
        remainder = np.round(quota - base, 9)
        order = np.lexsort((-deficit, -remainder))
        base[order[:short]] += 1
    return base


def assign_groups(labels: Sequence[Any] | None, groups: np.ndarray, fractions: Sequence[float], seed: int = 0) -> np.ndarray:
    """(N,) int: the part (index into `fractions`) of each row; rows sharing a group share a part.

    >>> assign_groups(["a"] * 6 + ["b"] * 4, np.array([0, 0, 2, 3, 4, 5, 6, 7, 8, 9]), [0.5, 0.5]).tolist()
    [0, 0, 1, 1, 0, 1, 0, 1, 0, 1]
    """
    groups = np.asarray(groups, dtype=np.int64)
    n = len(groups)
    frac = np.asarray(fractions, dtype=np.float64)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    codes, _ = _label_codes(labels, n)
    n_labels = int(codes.max()) + 1
    total = np.bincount(codes, minlength=n_labels)
    target = frac[:, None] * total[None, :]  # (S, L) rows of each label each part should get
    current = np.zeros_like(target)
    part = np.full(n, -1, dtype=np.int64)
    rng = np.random.default_rng(seed)
    usable = frac > 0

    # groups with several rows: largest first (random order among equal sizes)
    _, first_idx, inverse, sizes = np.unique(groups, return_index=True, return_inverse=True, return_counts=True)
    multi = np.flatnonzero(sizes > 1)
    if len(multi):
        multi = multi[rng.permutation(len(multi))]
        multi = multi[np.argsort(-sizes[multi], kind="stable")]
        order = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)])
        for g in multi:
            members = order[starts[g] : starts[g + 1]]
            counts = np.bincount(codes[members], minlength=n_labels).astype(np.float64)  # (L,)
            need = (target - current) / np.maximum(target, 1.0)  # (S, L) relative need
            score = need @ counts
            score[~usable] = -np.inf
            s = int(np.argmax(score))
            part[members] = s
            current[s] += counts

    # single rows: exact per-label fill of what each part still needs
    singles = np.flatnonzero(part < 0)
    singles = singles[rng.permutation(len(singles))]
    for label in range(n_labels):
        rows = singles[codes[singles] == label]
        if not len(rows):
            continue
        need = np.maximum(target[:, label] - current[:, label], 0.0)
        quota = need * (len(rows) / need.sum()) if need.sum() > 0 else frac * len(rows) / frac.sum()
        deficit = frac * n - current.sum(axis=1)
        take = _largest_remainder(quota, len(rows), deficit)
        bounds = np.concatenate([[0], np.cumsum(take)])
        for s in range(len(frac)):
            part[rows[bounds[s] : bounds[s + 1]]] = s
            current[s, label] += take[s]
    return part


def train_validation_test(labels: Sequence[Any] | None, groups: np.ndarray, validation: float = 0.1,
                          test: float = 0.2, seed: int = 0) -> np.ndarray:  # fmt: skip
    """(N,) array of 'train' / 'validation' / 'test'."""
    for name, v in (("validation", validation), ("test", test)):
        if not 0 <= v < 1:
            raise TunelabError(f"--{name}: expected a fraction in [0, 1), got {v}")
    if validation + test >= 1:
        raise TunelabError(f"--validation {validation} + --test {test} leave nothing to train on")
    part = assign_groups(labels, groups, [1 - validation - test, validation, test], seed)
    return np.array(SPLITS, dtype=object)[part]


def k_folds(labels: Sequence[Any] | None, groups: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(N,) fold id in 0..k-1, stratified, groups kept inside one fold."""
    if k < 2:
        raise TunelabError(f"--folds: expected at least 2, got {k}")
    return assign_groups(labels, groups, [1.0 / k] * k, seed)


def leaked_groups(part: np.ndarray, groups: np.ndarray) -> int:
    """How many groups have rows in more than one part (0 means no leakage).

    >>> leaked_groups(np.array([0, 0, 1]), np.array([5, 5, 7])), leaked_groups(np.array([0, 1]), np.array([5, 5]))
    (0, 1)
    """
    part_codes = np.unique(np.asarray(part).astype(str), return_inverse=True)[1]
    pairs = np.unique(np.stack([np.asarray(groups, dtype=np.int64), part_codes.astype(np.int64)], 1), axis=0)
    _, counts = np.unique(pairs[:, 0], return_counts=True)
    return int((counts > 1).sum())


def label_table(labels: Sequence[Any] | None, part: np.ndarray) -> dict[str, dict[str, int]]:
    """{part: {label: rows}} for the split summary."""
    codes, names = _label_codes(labels, len(part))
    out: dict[str, dict[str, int]] = {}
    present = set(part.tolist())
    for p in [x for x in SPLITS if x in present] + sorted(present - set(SPLITS)):
        sel = codes[part == p]
        out[str(p)] = {names[c]: int(v) for c, v in enumerate(np.bincount(sel, minlength=len(names))) if v}
    return out


def write_splits(rows: list[dict], texts: list[str], labels: list | None, out, *, validation: float | None = None,
                 test: float = 0.2, folds: int | None = None, seed: int = 0, near_dup_threshold: float | None = None,
                 source: str = "", label_column: str | None = None, log=print) -> tuple[dict, list]:
    """`tunelab data split`: rows grouped by exact (or near, with a threshold) duplicate text,
    split into train/validation/test (or a test part and k folds of the rest) with no group on two
    sides, written as JSONL under `out` with `split.json`. Returns (summary, written paths)."""
    from pathlib import Path

    from tunelab.data import dedup
    from tunelab.data.clean import public_row
    from tunelab.data.io_atomic import write_json_atomic, write_jsonl_atomic

    if folds and validation is not None:
        raise TunelabError("--folds and --validation exclude each other: each fold is the validation part once")
    groups = dedup.near_duplicates(texts, threshold=near_dup_threshold).groups if near_dup_threshold else dedup.exact_groups(texts)
    out = Path(out)
    summary: dict = {"input": source, "rows": len(rows), "seed": seed, "label_column": label_column, "near_dup_threshold": near_dup_threshold,
                     "groups_with_several_rows": int((np.bincount(groups) > 1).sum())}
    write = lambda path, idx: write_jsonl_atomic(path, (public_row(rows[i]) for i in idx))  # noqa: E731
    written = []
    if folds:
        part = train_validation_test(labels, groups, validation=0.0, test=test, seed=seed)
        rest = np.flatnonzero(part != "test")
        fold = k_folds([labels[i] for i in rest] if labels else None, groups[rest], folds, seed=seed)
        if test:
            written.append(write(out / "test.jsonl", np.flatnonzero(part == "test")))
        for k in range(folds):
            written.append(write(out / f"fold-{k}" / "train.jsonl", rest[fold != k]))
            written.append(write(out / f"fold-{k}" / "validation.jsonl", rest[fold == k]))
        names = np.array(part, dtype=object)
        names[rest] = np.array([f"fold-{f}" for f in fold], dtype=object)
    else:
        validation = 0.1 if validation is None else validation
        names = train_validation_test(labels, groups, validation=validation, test=test, seed=seed)
        for name, frac in (("train", 1.0), ("validation", validation), ("test", test)):
            if frac > 0:
                written.append(write(out / f"{name}.jsonl", np.flatnonzero(names == name)))
            elif (out / f"{name}.jsonl").exists():
                log(f"note: {out / f'{name}.jsonl'} is from an earlier run (this one has no {name} part)")
    leaks = leaked_groups(names, groups)
    assert leaks == 0, f"{leaks} duplicate groups straddle two parts"
    summary["parts"] = label_table(labels, names)
    summary["leaked_groups"] = leaks
    written.append(write_json_atomic(out / "split.json", summary))
    return summary, written
