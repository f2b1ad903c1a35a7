"""How far a judge agrees with people (or with another judge), with bootstrap 95 % intervals.

    stats = agreement(judge_scores, human_scores, scale=(1, 5))
    stats["kappa"]        # {"value": 0.71, "low": 0.52, "high": 0.85}
    stats["n"]            # pairs where both gave a score (unparseable and ungraded rows left out)

Pearson and Spearman (linear and rank correlation), Kendall's tau-b (rank agreement, robust to
ties), Cohen's kappa with quadratic weights (agreement beyond chance, a miss by two costing four
times a miss by one: the usual choice for ordinal scales) and the exact-agreement rate. The
intervals are percentile bootstrap over rows (`n_boot` resamples, seeded); a statistic that is
undefined on a resample (all scores equal) leaves that resample out, and is None when undefined
on the data itself.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

METRICS = ("pearson", "spearman", "kendall", "kappa", "exact")


def _stats(x: np.ndarray, y: np.ndarray, labels: list[int]) -> dict[str, float]:
    from scipy.stats import kendalltau, pearsonr, spearmanr
    from sklearn.metrics import cohen_kappa_score

    out = {"exact": float(np.mean(x == y))}
    constant = np.all(x == x[0]) or np.all(y == y[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: reported as undefined, not warned about per resample
        out["pearson"] = math.nan if constant else float(pearsonr(x, y)[0])
        out["spearman"] = math.nan if constant else float(spearmanr(x, y)[0])
        out["kendall"] = math.nan if constant else float(kendalltau(x, y)[0])
        out["kappa"] = float(cohen_kappa_score(x, y, labels=labels, weights="quadratic"))
    return out


def point_stats(a: list[int], b: list[int], scale: tuple[int, int]) -> dict[str, float | None]:
    """The five statistics on paired scores (no intervals).

    >>> point_stats([1, 2, 3], [1, 2, 3], (1, 3))["kappa"]
    1.0
    """
    x, y = np.asarray(a), np.asarray(b)
    s = _stats(x, y, list(range(scale[0], scale[1] + 1)))
    return {k: None if math.isnan(v) else v for k, v in s.items()}


def agreement(judge: list[int | None], human: list[int | None], scale: tuple[int, int], n_boot: int = 1000, seed: int = 0) -> dict:
    """Statistics over the rows both scored, each as {value, low, high}; see the module docstring."""
    pairs = [(a, b) for a, b in zip(judge, human) if a is not None and b is not None]
    out: dict = {"n": len(pairs), "n_boot": n_boot}
    if len(pairs) < 2:
        return {**out, **{m: {"value": None, "low": None, "high": None} for m in METRICS}}
    x, y = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    labels = list(range(scale[0], scale[1] + 1))
    point = _stats(x, y, labels)
    rng = np.random.default_rng(seed)
    boot = {m: [] for m in METRICS}
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        for m, v in _stats(x[idx], y[idx], labels).items():
            if not math.isnan(v):
                boot[m].append(v)
    for m in METRICS:
        value = None if math.isnan(point[m]) else round(point[m], 4)
        lo, hi = (np.percentile(boot[m], [2.5, 97.5]) if boot[m] and value is not None else (None, None))
        out[m] = {"value": value, "low": None if lo is None else round(float(lo), 4), "high": None if hi is None else round(float(hi), 4)}
    return out


def confusion(judge: list[int | None], human: list[int | None], scale: tuple[int, int]) -> list[list[int]]:
    """counts[h][j]: rows people scored h and the judge j (offsets from the lowest score).

    >>> confusion([1, 2, 2, None], [1, 1, 2, 2], (1, 2))
    [[1, 1], [0, 1]]
    """
    n = scale[1] - scale[0] + 1
    counts = [[0] * n for _ in range(n)]
    for a, b in zip(judge, human):
        if a is not None and b is not None:
            counts[b - scale[0]][a - scale[0]] += 1
    return counts


def self_consistency(runs: list[list[int | None]], scale: tuple[int, int]) -> dict:
    """Agreement of repeated sampled runs of one judge: the mean over pairs of runs of the exact
    agreement and the quadratic kappa, and the share of rows given the same score every time.

    >>> self_consistency([[1, 2, 3], [1, 2, 3]], (1, 3))["identical"]
    1.0
    """
    pair_stats = []
    for i, r1 in enumerate(runs):
        for r2 in runs[i + 1:]:
            both = [(a, b) for a, b in zip(r1, r2) if a is not None and b is not None]
            if len(both) >= 2:
                pair_stats.append(point_stats([a for a, _ in both], [b for _, b in both], scale))
    rows = [col for col in zip(*runs) if None not in col]

    def mean(key: str) -> float | None:
        values = [s[key] for s in pair_stats if s[key] is not None]
        return round(float(np.mean(values)), 4) if values else None

    return {"runs": len(runs), "rows": len(rows), "exact": mean("exact"), "kappa": mean("kappa"),
            "identical": round(sum(len(set(c)) == 1 for c in rows) / len(rows), 4) if rows else None}
