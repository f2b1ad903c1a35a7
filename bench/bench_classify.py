"""Classification benchmark on the offline assets, side by side with TF-IDF baselines, in one run.

    .venv/bin/python bench/bench_classify.py [--only spam-smollm2,spam-minilm,...] [--out bench/results]
                                             [--set train.precision=bf16 ...] [--seeds 1,2 --parallel 2]

Every row uses the anchor split protocol (stratified 70/10/20, seed 123; balanced SMS spam =
spam plus an equal random sample of ham), built by tunelab's own data code, so the baselines and
the fine-tuned models see exactly the same train and test rows. Each tunelab run is a separate
`tunelab train` process (so its peak memory is its own). `--seeds` trains each config once per
seed (written to `train.seed`; the split stays the one above), and `--parallel N` runs N of those
processes at once with the cores shared out, so a single 444-article test score is not the only
evidence. Prints a table of test accuracy, macro-F1, training wall time and peak memory, plus a
mean ± std row per config when there are several seeds, and writes it as JSON and Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RUNS = {  # name -> (config, dataset label), in the order they run
    "spam-smollm2": ("configs/spam-smollm2.yaml", "SMS spam, balanced"),
    "spam-minilm": ("configs/spam-minilm.yaml", "SMS spam, balanced"),
    "bbc-mpnet": ("configs/bbc-mpnet.yaml", "BBC News, 5 topics"),
    "spam-mpnet": ("configs/spam-mpnet.yaml", "SMS spam, balanced"),
}
BASELINE_DATA = {"SMS spam, balanced": "configs/spam-minilm.yaml", "BBC News, 5 topics": "configs/bbc-mpnet.yaml"}


def tfidf_baselines(config_path: str) -> list[dict]:
    """TF-IDF + logistic regression and TF-IDF word+char n-grams + linear SVM on the config's split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.svm import LinearSVC

    from tunelab.classify.data import load_splits
    from tunelab.config import load_config

    splits = load_splits(load_config(ROOT / config_path).data)
    train = splits.train + splits.validation  # classic models need no validation split
    x, y = [e.text for e in train], [e.label for e in train]
    xt, yt = [e.text for e in splits.test], [e.label for e in splits.test]
    models = {
        "TF-IDF + logistic regression": make_pipeline(TfidfVectorizer(sublinear_tf=True), LogisticRegression(max_iter=2000, C=10)),
        "TF-IDF word+char + linear SVM": make_pipeline(
            make_union(TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)), TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(2, 5))),
            LinearSVC(C=1.0),
        ),
    }
    rows = []
    for name, model in models.items():
        t0 = time.perf_counter()
        model.fit(x, y)
        pred = model.predict(xt)
        rows.append({"model": name, "train_n": len(x), "test_n": len(xt), "test_accuracy": accuracy_score(yt, pred), "test_macro_f1": f1_score(yt, pred, average="macro"), "train_seconds": time.perf_counter() - t0, "peak_memory_mb": None})
    return rows


def summary_row(run_dir: Path, overrides: list[str]) -> dict:
    """One table row from a finished run's summary.json; the seed comes from its resolved config."""
    s = json.loads((run_dir / "summary.json").read_text())
    seed = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["seed"]
    label = f"tunelab: {s['model']} ({s['trainable_params']:,} trainable{''.join(', ' + o for o in overrides)})"
    return {"model": label, "seed": seed, "train_n": None, "test_n": None, "test_accuracy": s["test"]["accuracy"], "test_macro_f1": s["test"]["macro_f1"], "train_seconds": s["train_seconds"], "peak_memory_mb": s["peak_memory_mb"], "validation_accuracy": s["validation"]["accuracy"] if s["validation"] else None, "steps": s["steps"]}


def tunelab_runs(jobs: list[tuple[str, str, list[str], str | None]], out: Path, parallel: int) -> dict[str, dict]:
    """Train each (name, config, overrides, seed) job, `parallel` processes at a time; rows by name.

    With several at once each process gets cpu_count // parallel torch threads, so they share the
    cores instead of fighting over them. A run's output goes to runs/NAME.log beside its folder.
    """
    threads = [f"train.num_threads={max(1, (os.cpu_count() or 1) // parallel)}"] if parallel > 1 else []
    pending, running, rows = list(jobs), [], {}
    while pending or running:
        while pending and len(running) < parallel:
            name, config, overrides, seed = pending.pop(0)
            run_dir = out / "runs" / name
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            seeded = [f"train.seed={seed}"] if seed is not None else []
            cmd = [str(ROOT / ".venv/bin/tunelab"), "train", config, *overrides, *seeded, *threads, f"output_dir={run_dir}", "--force"]
            print("$ " + " ".join(cmd), flush=True)
            log = open(run_dir.parent / f"{name}.log", "w")
            running.append((name, overrides, run_dir, log, subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(1)
        for job in [j for j in running if j[4].poll() is not None]:
            name, overrides, run_dir, log, proc = job
            running.remove(job)
            log.close()
            if proc.returncode != 0:
                for *_, other in running:
                    other.terminate()  # no orphans training on after the benchmark has stopped
                sys.exit(f"tunelab run {name} failed (exit {proc.returncode}); see {log.name}")
            rows[name] = summary_row(run_dir, overrides)
            print(f"{name}: test accuracy {rows[name]['test_accuracy'] * 100:.2f} %, train {rows[name]['train_seconds']:.0f} s", flush=True)
    return rows


def seed_summary(rows: list[dict]) -> dict:
    """Mean ± sample std over the seeds of one config, as a table row (train time: the median)."""
    acc = [r["test_accuracy"] for r in rows]
    f1 = [r["test_macro_f1"] for r in rows]
    return {"model": f"{rows[0]['model']}: mean ± std of {len(rows)} seeds", "seeds": [r["seed"] for r in rows],
            "test_accuracy": statistics.mean(acc), "test_accuracy_std": statistics.stdev(acc),
            "test_macro_f1": statistics.mean(f1), "test_macro_f1_std": statistics.stdev(f1),
            "train_seconds": statistics.median(r["train_seconds"] for r in rows), "peak_memory_mb": max(r["peak_memory_mb"] for r in rows)}


def to_markdown(table: dict[str, list[dict]]) -> str:
    lines = ["| dataset | model | test acc | test macro-F1 | train time | peak memory |", "|---|---|---|---|---|---|"]
    for dataset, rows in table.items():
        for r in rows:
            mem = f"{r['peak_memory_mb'] / 1024:.2f} GiB" if r["peak_memory_mb"] else "-"
            acc, f1 = (f"{r[k] * 100:.2f}" + (f" ± {r[k + '_std'] * 100:.2f}" if k + "_std" in r else "") + " %" for k in ("test_accuracy", "test_macro_f1"))
            time_s = f"{r['train_seconds']:.1f} s" + (" (median)" if "seeds" in r else "")
            model = r["model"] + (f", seed {r['seed']}" if r.get("seed") is not None and "seeds" not in r else "")
            lines.append(f"| {dataset} | {model} | {acc} | {f1} | {time_s} | {mem} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(RUNS), help="comma-separated run names: " + ", ".join(RUNS))
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every tunelab run (repeatable)")
    ap.add_argument("--seeds", default="", help="comma-separated train.seed values, one run each (default: the config's seed)")
    ap.add_argument("--parallel", type=int, default=1, help="tunelab runs at once, sharing the cores")
    args = ap.parse_args()
    chosen = [n for n in args.only.split(",") if n]
    unknown = [n for n in chosen if n not in RUNS]
    if unknown:
        ap.error(f"--only: unknown run name(s) {', '.join(unknown)}; expected some of {', '.join(RUNS)}")
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    table: dict[str, list[dict]] = {}
    for dataset, cfg in BASELINE_DATA.items():
        if any(RUNS[n][1] == dataset for n in chosen):
            table[dataset] = tfidf_baselines(cfg)
    seeds = [s for s in args.seeds.split(",") if s] or [None]
    jobs = {name: [(name if seed is None else f"{name}-seed-{seed}", RUNS[name][0], args.set, seed) for seed in seeds] for name in chosen}
    rows = tunelab_runs([job for js in jobs.values() for job in js], out, max(1, args.parallel))
    for name, js in jobs.items():
        mine = [rows[job[0]] for job in js]
        table[RUNS[name][1]].extend(mine + ([seed_summary(mine)] if len(mine) > 1 else []))
    md = to_markdown(table)
    print("\n" + md)
    (out / "classify.json").write_text(json.dumps(table, indent=1))
    (out / "classify.md").write_text(md + "\n")
    print(f"\nbenchmark process peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
