"""k-fold cross-validation of one config: an honest estimate on a small dataset.

    tunelab cv configs/spam-minilm.yaml --folds 5 [--seed 123] [train.epochs=2]

The rows of `data.train` (after `max_rows` and balancing, exactly as a run reads them) are dealt
into K stratified folds with a seed. Fold i is the test set of run i; the configured validation
share (`data.split.validation`) is carved, stratified, from the other K-1 folds for the best
checkpoint and early stopping, and the rest trains. Each fold's three splits are written as JSONL
under `<cv>/folds/fold-i/`, so every fold is an ordinary run (`<cv>/runs/fold-i/`) executed by the
sweep runner: one process per fold, resumable, and a change of the config or of the data is
detected rather than mixed with old folds.

Reported (`cv_results.json`, `results.csv` and a printed table): per fold train/validation/test
accuracy and macro-F1, their mean and standard deviation over folds, and the pooled test scores
(every example is tested exactly once, so the summed confusion matrix is a full-data estimate).
Folds share training data, so their spread understates the uncertainty of the mean; no t-interval
is claimed here.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from tunelab.config import RunConfig, validate_dict
from tunelab.data.classification import Example, load_splits, stratified_split
from tunelab.errors import TunelabError


def make_folds(examples: list[Example], k: int, seed: int) -> list[list[Example]]:
    """Deal examples into k folds keeping class shares: per class, a seeded shuffle dealt round
    robin, each class starting where the previous one stopped (fold sizes differ by at most 1).

    >>> ex = [Example(str(i), "a" if i < 6 else "b", "") for i in range(9)]
    >>> [sorted(e.label for e in f) for f in make_folds(ex, 3, seed=0)]
    [['a', 'a', 'b'], ['a', 'a', 'b'], ['a', 'a', 'b']]
    """
    if k < 2:
        raise TunelabError(f"--folds must be at least 2 (got {k})")
    by_label: dict[str, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    small = {label: len(v) for label, v in by_label.items() if len(v) < k}
    if small:
        label, n = next(iter(small.items()))
        raise TunelabError(f"class {label!r} has only {n} example(s); {k} folds need at least {k} per class (use fewer --folds)")
    rng = random.Random(seed)
    folds: list[list[Example]] = [[] for _ in range(k)]
    start = 0
    for label in sorted(by_label):
        items = by_label[label][:]
        rng.shuffle(items)
        for j, e in enumerate(items):
            folds[(start + j) % k].append(e)
        start = (start + len(items)) % k
    for f in folds:
        rng.shuffle(f)
    return folds


def fold_splits(folds: list[list[Example]], i: int, validation_share: float, seed: int) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, validation, test) of fold i: test = fold i; validation carved from the rest."""
    rest = [e for j, f in enumerate(folds) if j != i for e in f]
    if validation_share > 0:
        train, validation = stratified_split(rest, [validation_share], seed + i)
    else:
        train, validation = rest, []
    return train, validation, folds[i]


def jsonl(examples: list[Example]) -> str:
    return "".join(json.dumps({"text": e.text, "label": e.label, "source": e.source}, ensure_ascii=False) + "\n" for e in examples)


def pooled_examples(cfg: RunConfig) -> list[Example]:
    """All usable rows of data.train, after max_rows and balancing, as a run would read them."""
    data = cfg.data.model_copy(update={"validation": None, "test": None, "split": cfg.data.split.model_copy(update={"validation": 0.0, "test": 0.0})})
    return load_splits(data).train


def plan_folds(cfg: RunConfig, k: int, out: Path, seed: int, source: str = "") -> tuple[list, dict[Path, str]]:
    """The K fold runs (sweep Runs) and the text of every fold file (not yet written)."""
    from tunelab.sweep.spec import Cell, Run, config_hash

    folds = make_folds(pooled_examples(cfg), k, seed)
    runs, files = [], {}
    for i in range(k):
        train, validation, test = fold_splits(folds, i, cfg.data.split.validation, seed)
        fold_dir = out / "folds" / f"fold-{i}"
        texts = {fold_dir / "train.jsonl": jsonl(train), fold_dir / "test.jsonl": jsonl(test)}
        if validation:
            texts[fold_dir / "validation.jsonl"] = jsonl(validation)
        files.update(texts)
        raw = cfg.model_dump(mode="json")
        raw["data"].update({
            "train": str(fold_dir / "train.jsonl"), "test": str(fold_dir / "test.jsonl"),
            "validation": str(fold_dir / "validation.jsonl") if validation else None,
            "format": "jsonl", "text_column": "text", "label_column": "label", "header": None, "columns": None,
            "encoding": None, "quoting": None, "max_rows": None,
            # Undersampling already happened on the pooled rows; class weights still apply per fold.
            "balance": "none" if cfg.data.balance == "undersample" else cfg.data.balance,
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
        cm = json.loads(path.read_text(encoding="utf-8"))["confusion_matrix"]
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
    from tunelab.sweep.aggregate import SPLIT_METRICS, collect, mean_std
    from tunelab.sweep.report import write_csv
    from tunelab.sweep.runner import check_changes, execute
    from tunelab.data.io_atomic import write_text_atomic

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
        "config": source, "folds": folds, "fold_seed": seed, "finished_folds": len(rows),
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
    head = f"{'fold':<6}{'train acc':>11}{'val acc':>10}{'test acc':>10}{'test F1':>10}{'train s':>9}"
    lines = [head]
    for r in result["per_fold"]:
        val = f"{100 * r['validation_accuracy']:.2f}" if r["validation_accuracy"] is not None else "–"
        lines.append(f"{r['fold']:<6}{100 * r['train_accuracy']:>11.2f}{val:>10}{100 * r['test_accuracy']:>10.2f}{100 * r['test_macro_f1']:>10.2f}{r['train_seconds']:>9.0f}")
    s = result["mean_std"]

    def ms(key):
        m, sd = s[key]["mean"], s[key]["std"]
        return "–" if m is None else f"{100 * m:.2f}" + (f" ± {100 * sd:.2f}" if sd is not None else "")

    lines.append(f"mean ± std over {result['finished_folds']} folds: test accuracy {ms('test_accuracy')} %, test macro-F1 {ms('test_macro_f1')} %")
    if result["pooled_test"]:
        p = result["pooled_test"]
        lines.append(f"pooled over all {p['examples']} examples: accuracy {100 * p['accuracy']:.2f} %, macro-F1 {100 * p['macro_f1']:.2f} %")
    return "\n".join(lines)
