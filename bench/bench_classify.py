"""Classification benchmark on the offline assets, side by side with TF-IDF baselines, in one run.

    .venv/bin/python bench/bench_classify.py [--only spam-smollm2,spam-minilm,...] [--out bench/results]

Every row uses the anchor split protocol (stratified 70/10/20, seed 123; balanced SMS spam =
spam plus an equal random sample of ham), built by tunelab's own data code, so the baselines and
the fine-tuned models see exactly the same train and test rows. Each tunelab run is a separate
`tunelab train` process (so its peak memory is its own). Prints a table of test accuracy,
macro-F1, training wall time and peak memory, and writes it as JSON and Markdown.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

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

    from tunelab.config import load_config
    from tunelab.data.classification import load_splits

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


def tunelab_run(name: str, config: str, out: Path) -> dict:
    run_dir = out / "runs" / name
    cmd = [str(ROOT / ".venv/bin/tunelab"), "train", config, f"output_dir={run_dir}", "--force"]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
    s = json.loads((run_dir / "summary.json").read_text())
    return {"model": f"tunelab: {s['model']} ({s['trainable_params']:,} trainable)", "train_n": None, "test_n": None, "test_accuracy": s["test"]["accuracy"], "test_macro_f1": s["test"]["macro_f1"], "train_seconds": s["train_seconds"], "peak_memory_mb": s["peak_memory_mb"], "validation_accuracy": s["validation"]["accuracy"] if s["validation"] else None, "steps": s["steps"]}


def to_markdown(table: dict[str, list[dict]]) -> str:
    lines = ["| dataset | model | test acc | test macro-F1 | train time | peak memory |", "|---|---|---|---|---|---|"]
    for dataset, rows in table.items():
        for r in rows:
            mem = f"{r['peak_memory_mb'] / 1024:.2f} GiB" if r["peak_memory_mb"] else "-"
            lines.append(f"| {dataset} | {r['model']} | {r['test_accuracy'] * 100:.2f} % | {r['test_macro_f1'] * 100:.2f} % | {r['train_seconds']:.1f} s | {mem} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(RUNS), help="comma-separated run names: " + ", ".join(RUNS))
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    chosen = [n for n in args.only.split(",") if n]
    table: dict[str, list[dict]] = {}
    for dataset, cfg in BASELINE_DATA.items():
        if any(RUNS[n][1] == dataset for n in chosen):
            table[dataset] = tfidf_baselines(cfg)
    for name in chosen:
        config, dataset = RUNS[name]
        table[dataset].append(tunelab_run(name, config, out))
        print(to_markdown({dataset: table[dataset][-1:]}).splitlines()[-1], flush=True)
    md = to_markdown(table)
    print("\n" + md)
    (out / "classify.json").write_text(json.dumps(table, indent=1))
    (out / "classify.md").write_text(md + "\n")
    print(f"\nbenchmark process peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
