"""Per-run rows and per-cell statistics: mean, sample standard deviation, 95 % t-interval.

A cell's seeds are few (typically 3), so the interval of the mean uses Student's t with n-1
degrees of freedom: mean +- t(0.975, n-1) * s / sqrt(n). With one seed there is no spread and no
interval (reported as empty, never as zero).

    >>> mean_std([0.9, 0.92, 0.94])
    (0.92, 0.02)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

SCORES = ("accuracy", "macro_f1", "loss")  # classification has all three; SFT has loss
SPLIT_METRICS = [f"{split}_{m}" for split in ("train", "validation", "test") for m in SCORES]
# SFT runs also score their generated test answers, overall and per language (test `by_lang`)
GENERATION_SCORES = ("exact_match", "token_f1", "refusal_precision", "refusal_recall")
GENERATION_METRICS = [f"test_{m}" for m in GENERATION_SCORES]
LANG_SCORES = ("token_f1", "refusal_precision", "refusal_recall")
RUN_SCALARS = ["trainable_params", "total_params", "train_seconds", "peak_memory_mb", "train_tokens_per_second", "steps", "best_step"]
CELL_KEYS = ["group", "dataset", "variant", "cell", "question"]


def run_row(run, summary: dict) -> dict:
    """One flat row per run: cell identity, seed, the split scores and the run's costs."""
    row = {"group": run.cell.group, "dataset": run.cell.dataset, "variant": run.cell.variant, "cell": run.cell.slug,
           "question": run.cell.question or "", "seed": run.seed, "task": summary.get("task", "classification")}
    for split in ("train", "validation", "test"):
        scores = summary.get(split) or {}
        for m in SCORES:
            row[f"{split}_{m}"] = scores.get(m)
    test = summary.get("test") or {}
    for m in GENERATION_SCORES:
        row[f"test_{m}"] = test.get(m)
    for lang, scores in sorted((test.get("by_lang") or {}).items()):
        for m in LANG_SCORES:
            row[f"test_{lang}_{m}"] = scores.get(m)
    for key in RUN_SCALARS:
        row[key] = summary.get(key)
    row["folder"] = str(run.home.folder)
    row["shared_with"] = run.alias_of.cell.slug if run.alias_of else ""
    return row


def collect(runs) -> list[dict]:
    """Rows of every finished run (a shared run appears under each cell that names it)."""
    rows = []
    for run in runs:
        path = Path(run.home.folder) / "summary.json"
        if path.is_file():
            rows.append(run_row(run, json.loads(path.read_text(encoding="utf-8"))))
    return rows


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n-1); std is None for a single value."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return round(mean, 10), None
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return round(mean, 10), round(math.sqrt(var), 10)


def t_interval(values: list[float], confidence: float = 0.95,
               bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float] | None:
    """Student-t confidence interval of the mean, clipped to `bounds` (an accuracy cannot leave
    [0, 1], however wide three seeds make the interval); None with fewer than two values.

    >>> lo, hi = t_interval([0.9, 0.92, 0.94])
    >>> round(lo, 4), round(hi, 4)     # 0.92 -+ 4.3027 * 0.02 / sqrt(3)
    (0.8703, 0.9697)
    >>> t_interval([0.5, 0.95, 0.97])[1]   # one collapsed seed: the upper end stops at 1
    1.0
    """
    vals = [float(v) for v in values if v is not None]
    if len(vals) < 2:
        return None
    from scipy.stats import t

    mean, std = mean_std(vals)
    half = float(t.ppf(0.5 + confidence / 2, len(vals) - 1)) * std / math.sqrt(len(vals))
    return max(bounds[0], mean - half), min(bounds[1], mean + half)


def lang_metrics(rows: list[dict]) -> list[str]:
    """The per-language test keys (`test_ko_token_f1`, ...) that any of `rows` has, sorted."""
    return sorted({k for r in rows for k in r if k.startswith("test_") and k.endswith(LANG_SCORES)
                   and k not in GENERATION_METRICS})


def aggregate(rows: list[dict]) -> list[dict]:
    """One entry per cell (in first-seen order) with mean/std of every metric and cost."""
    cells: dict[str, list[dict]] = {}
    for row in rows:
        cells.setdefault(row["cell"], []).append(row)
    per_lang = lang_metrics(rows)
    out = []
    for name, rs in cells.items():
        entry = {k: rs[0][k] for k in CELL_KEYS}
        entry["task"] = rs[0].get("task", "classification")
        entry["n"] = len(rs)
        entry["seeds"] = [r["seed"] for r in rs]
        for key in SPLIT_METRICS + GENERATION_METRICS + per_lang + RUN_SCALARS:
            mean, std = mean_std([r.get(key) for r in rs])
            entry[key] = {"mean": mean, "std": std}
        entry["test_accuracy_ci95"] = t_interval([r.get("test_accuracy") for r in rs])
        entry["shared_with"] = rs[0].get("shared_with", "")
        out.append(entry)
    return out
