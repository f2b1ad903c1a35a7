"""k-fold cross-validation of one config, for either task: an honest estimate on a small dataset.

    tunelab cv configs/spam-minilm.yaml --folds 5 [--seed 123] [train.epochs=2]

The usable rows of `data.train` (after `max_rows` and balancing, exactly as a run reads them; the
task's `cv_rows` in `tunelab.tasks` says how) are dealt into K folds by the one grouped splitter
(`tunelab.data.split.k_folds`, the folds `tunelab data split --folds` writes): stratified by class
(classification) or language (SFT rows that all carry `lang`), and rows sharing a group (SFT
`sft.split_by`) kept in one fold. Fold i is the test set of run i; the configured validation share
(`data.split.validation`) is carved the same way from the other K-1 folds for the best checkpoint
and early stopping, and the rest trains. Each fold's splits are written as JSONL under
`<cv>/folds/fold-i/`, so every fold is an ordinary run (`<cv>/runs/fold-i/`) executed by the sweep
runner: one process per fold, resumable, and a change of the config or of the data is detected
rather than mixed with old folds.

Reported (`cv_results.json`, `results.csv` and a printed table): per fold train/validation/test
scores (accuracy and macro-F1 for classification, loss for SFT), their mean and standard deviation
over folds, and for classification the pooled test scores (every example is tested exactly once,
so the summed confusion matrix is a full-data estimate). Folds share training data, so their
spread understates the uncertainty of the mean; no t-interval is claimed here.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunelab.config import RunConfig, validate_dict
from tunelab.data.split import assign_groups, k_folds
from tunelab.errors import TunelabError


@dataclass
class CvRows:
    """What a task hands to cross-validation: its usable rows and how to fold them."""

    records: list[dict]  # one JSON object per row, as the fold files hold them
    labels: list | None  # the stratum of each row (class, language) or None
    groups: list  # a key per row: rows with equal keys stay in one fold
    data: dict  # data-config fields of a fold run that reads these records back
    stratum: str = "class"  # what `labels` are, for messages


def make_folds(rows: CvRows, k: int, seed: int) -> list[list[int]]:
    """Row indices of k folds, stratified and grouped; each stratum needs at least k rows.

    >>> rows = CvRows([{}] * 9, ["a"] * 6 + ["b"] * 3, list(range(9)), {})
    >>> [sorted(rows.labels[i] for i in f) for f in make_folds(rows, 3, seed=0)]
    [['a', 'a', 'b'], ['a', 'a', 'b'], ['a', 'a', 'b']]
    """
    if k < 2:
        raise TunelabError(f"--folds must be at least 2 (got {k})")
    if rows.labels is not None:
        small = {label: n for label, n in sorted(Counter(rows.labels).items()) if n < k}
        if small:
            label, n = next(iter(small.items()))
            raise TunelabError(f"{rows.stratum} {label!r} has only {n} example(s); {k} folds need at least {k} per {rows.stratum} (use fewer --folds)")
    part = k_folds(rows.labels, group_codes(rows.groups), k, seed)
    return _parts(part, k, random.Random(seed))


def fold_splits(rows: CvRows, folds: list[list[int]], i: int, validation_share: float, seed: int) -> tuple[list[int], list[int], list[int]]:
    """(train, validation, test) row indices of fold i: test = fold i; validation carved from the rest."""
    rest = [j for n, f in enumerate(folds) if n != i for j in f]
    if validation_share <= 0:
        return rest, [], folds[i]
    labels = None if rows.labels is None else [rows.labels[j] for j in rest]
    part = assign_groups(labels, group_codes([rows.groups[j] for j in rest]), [1.0 - validation_share, validation_share], seed + i)
    train, validation = _parts(part, 2, random.Random(seed + i), rest)
    return train, validation, folds[i]


def group_codes(keys: list) -> np.ndarray:
    """An int per key, equal for equal keys (the splitter's group ids)."""
    index: dict = {}
    return np.array([index.setdefault(key, len(index)) for key in keys], dtype=np.int64)


def _parts(part: np.ndarray, n: int, rng: random.Random, ids: list[int] | None = None) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(n)]
    for pos, p in enumerate(part.tolist()):
        out[p].append(pos if ids is None else ids[pos])
    for f in out:
        rng.shuffle(f)
    return out


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def plan_folds(cfg: RunConfig, k: int, out: Path, seed: int, source: str = "") -> tuple[list, dict[Path, str]]:
    """The K fold runs (sweep Runs) and the text of every fold file (not yet written)."""
    from tunelab.sweep.spec import Cell, Run, config_hash
    from tunelab.tasks import cv_rows

    rows = cv_rows(cfg)
    folds = make_folds(rows, k, seed)
    runs, files = [], {}
    for i in range(k):
        train, validation, test = fold_splits(rows, folds, i, cfg.data.split.validation, seed)
        fold_dir = out / "folds" / f"fold-{i}"
        pick = lambda ids: jsonl([rows.records[j] for j in ids])  # noqa: E731
        texts = {fold_dir / "train.jsonl": pick(train), fold_dir / "test.jsonl": pick(test)}
        if validation:
            texts[fold_dir / "validation.jsonl"] = pick(validation)
        files.update(texts)
        raw = cfg.model_dump(mode="json")
        raw["data"].update({
            "train": str(fold_dir / "train.jsonl"), "test": str(fold_dir / "test.jsonl"),
            "validation": str(fold_dir / "validation.jsonl") if validation else None,
            "format": "jsonl", "header": None, "columns": None, "encoding": None, "quoting": None, "max_rows": None,
            **rows.data,
            "split": {**raw["data"]["split"], "validation": 0.0, "test": 0.0},
        })
        folder = out / "runs" / f"fold-{i}"
        raw["output_dir"] = str(folder)
        config = validate_dict(raw, source=f"for fold {i} ({source})").model_dump(mode="json")
        digest = hashlib.sha256("".join(texts[p] for p in sorted(texts)).encode()).hexdigest()[:16]
        fingerprint = {"fold_data": digest, "folds": k, "fold_seed": seed}
        cell = Cell(group="", dataset="", variant=f"fold-{i}", base=Path(source or "config"), overrides={}, seeds=[cfg.train.seed])
        runs.append(Run(cell, cfg.train.seed, folder, config, config_hash(config, fingerprint), fingerprint))
    return runs, files


def _pooled(folders: list[Path]) -> dict | None:
    """Test scores of all folds together from their confusion matrices (each example tested once)."""
    total = None
    for folder in folders:
        path = folder / "test_metrics.json"
        if not path.is_file():
            return None
        cm = json.loads(path.read_text(encoding="utf-8")).get("confusion_matrix")
        if cm is None:  # an SFT fold: token scores, nothing to pool
            return None
        total = cm if total is None else [[a + b for a, b in zip(r1, r2)] for r1, r2 in zip(total, cm)]
    if total is None:
        return None
    n = sum(map(sum, total))
    f1s = []
    for c in range(len(total)):
        tp = total[c][c]
        pred, true = sum(r[c] for r in total), sum(total[c])
        f1s.append(2 * tp / (pred + true) if pred + true else 0.0)
    return {"examples": n, "accuracy": sum(total[c][c] for c in range(len(total))) / n, "macro_f1": sum(f1s) / len(f1s), "confusion_matrix": total}


def cross_validate(cfg: RunConfig, folds: int, out_dir: str | Path | None = None, seed: int | None = None, *, parallel: int = 1,
                   threads: int | None = None, rerun_changed: bool = False, keep: str = "metrics", isolate: bool = True,
                   source: str = "", log=print) -> dict:
    """Run (or resume) every fold; write and return cv_results.json's content."""
    from tunelab.data.io_atomic import write_text_atomic
    from tunelab.sweep.aggregate import SPLIT_METRICS, collect, mean_std
    from tunelab.sweep.report import write_csv
    from tunelab.sweep.runner import check_changes, execute

    out = Path(out_dir or f"{cfg.output_dir}-cv{folds}")
    seed = cfg.data.split.seed if seed is None else seed
    if cfg.data.validation or cfg.data.test:
        log("note: cross-validation folds the rows of data.train only; the data.validation/data.test files are not used")
    runs, files = plan_folds(cfg, folds, out, seed, source)
    check_changes(runs, rerun_changed, what="cross-validation")  # before fold files are rewritten
    for path, text in files.items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, text)
    outcome = execute(runs, parallel=parallel, threads=threads, keep=keep, rerun_changed=rerun_changed, isolate=isolate, what="cv", log=log)

    rows = collect(runs)
    for row in rows:
        row["fold"] = int(row["variant"].split("-")[1])
    write_csv(rows, out / "results.csv")
    stats = {}
    for key in SPLIT_METRICS + ["train_seconds", "peak_memory_mb"]:
        mean, std = mean_std([r[key] for r in rows])
        stats[key] = {"mean": mean, "std": std}
    result = {
        "config": source, "task": cfg.task, "folds": folds, "fold_seed": seed, "finished_folds": len(rows),
        "validation_share_of_training_folds": cfg.data.split.validation,
        "per_fold": [{k: r[k] for k in ["fold", *SPLIT_METRICS, "train_seconds", "peak_memory_mb", "steps", "folder"]} for r in rows],
        "mean_std": stats,
        "pooled_test": _pooled([r.folder for r in runs]) if len(rows) == folds else None,
        "failed": [r.label for r, _ in outcome.failed],
    }
    write_text_atomic(out / "cv_results.json", json.dumps(result, indent=1))
    result["outcome"] = outcome
    result["out"] = out
    return result


def format_table(result: dict) -> str:
    """Per-fold rows and the mean ± std line, as printed by `tunelab cv`."""
    if result.get("task") == "sft":
        return _format_sft(result)
    head = f"{'fold':<6}{'train acc':>11}{'val acc':>10}{'test acc':>10}{'test F1':>10}{'train s':>9}"
    lines = [head]
    for r in result["per_fold"]:
        val = f"{100 * r['validation_accuracy']:.2f}" if r["validation_accuracy"] is not None else "–"
        lines.append(f"{r['fold']:<6}{100 * r['train_accuracy']:>11.2f}{val:>10}{100 * r['test_accuracy']:>10.2f}{100 * r['test_macro_f1']:>10.2f}{r['train_seconds']:>9.0f}")
    lines.append(f"mean ± std over {result['finished_folds']} folds: test accuracy {_mean_std(result, 'test_accuracy', 100)} %, "
                 f"test macro-F1 {_mean_std(result, 'test_macro_f1', 100)} %")
    if result["pooled_test"]:
        p = result["pooled_test"]
        lines.append(f"pooled over all {p['examples']} examples: accuracy {100 * p['accuracy']:.2f} %, macro-F1 {100 * p['macro_f1']:.2f} %")
    return "\n".join(lines)


def _format_sft(result: dict) -> str:
    num = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"{'fold':<6}{'train loss':>12}{'val loss':>10}{'test loss':>11}{'train s':>9}"]
    for r in result["per_fold"]:
        lines.append(f"{r['fold']:<6}{num(r['train_loss']):>12}{num(r['validation_loss']):>10}{num(r['test_loss']):>11}{r['train_seconds']:>9.0f}")
    lines.append(f"mean ± std over {result['finished_folds']} folds: test loss {_mean_std(result, 'test_loss', 1, '.4f')}")
    return "\n".join(lines)


def _mean_std(result: dict, key: str, scale: float, fmt: str = ".2f") -> str:
    m, sd = result["mean_std"][key]["mean"], result["mean_std"][key]["std"]
    return "–" if m is None else f"{scale * m:{fmt}}" + (f" ± {scale * sd:{fmt}}" if sd is not None else "")
