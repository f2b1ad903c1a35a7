"""Can a classifier tell, better than the doc-QA generator, whether a context answers a question?

    .venv/bin/python bench/docqa_refusal_gate.py --out runs/docqa-gate [--config configs/docqa-ko-gemma.yaml] [KEY=VALUE ...]

The generator fine-tuned on data/docqa refuses with a precision of 40-57 % whatever the settings
(docs/benchmarks.md). This writes the same train / validation / test rows as that SFT config
(split by document, so the test documents are unseen) as answerable/unanswerable classification
files, trains a tunelab classifier on them (Gemma-3-270m, mean pooling, LoRA; overrides after
the options) and prints refusal precision and recall per language on the test rows, where a
refusal is the classifier saying "unanswerable".
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

from tunelab.config import load_config
from tunelab.sft.data import load_sft_splits

ROOT = Path(__file__).resolve().parents[1]


def gate_text(row: dict) -> str:
    """Question first: a context longer than data.max_length then loses its end, never the question."""
    return f"[질문/Question] {row['question']}\n\n{row['context']}"


def write_split(items, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label", "lang"])
        for it in items:
            w.writerow([gate_text(it.row), "answerable" if it.row["answerable"] else "unanswerable", it.row["lang"]])


def refusal_scores(pred_path: Path, test_csv: Path) -> dict:
    with open(test_csv, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    preds = [json.loads(line) for line in open(pred_path, encoding="utf-8")]
    out = {}
    for lang in ("ko", "en", None):
        pairs = [(r["label"], p["label"]) for r, p in zip(rows, preds) if lang is None or r["lang"] == lang]
        tp = sum(1 for t, p in pairs if t == p == "unanswerable")
        n_pred = sum(1 for _, p in pairs if p == "unanswerable")
        n_ref = sum(1 for t, _ in pairs if t == "unanswerable")
        out[lang or "all"] = {"rows": len(pairs), "refusal_precision": tp / n_pred if n_pred else None,
                              "refusal_recall": tp / n_ref if n_ref else None,
                              "accuracy": sum(t == p for t, p in pairs) / len(pairs)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--config", default="configs/docqa-ko-gemma.yaml")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(ROOT / args.config)
    splits = load_sft_splits(cfg.data, cfg.sft)
    data = args.out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name in ("train", "validation", "test"):
        write_split(getattr(splits, name), data / f"{name}.csv")
    run = args.out / "run"
    cmd = [sys.executable, "-m", "tunelab.cli", "train", "--force", str(ROOT / "bench/docqa_gate.yaml"),
           f"output_dir={run}", f"data.train={data / 'train.csv'}", f"data.validation={data / 'validation.csv'}",
           f"data.test={data / 'test.csv'}", *args.overrides]
    subprocess.run(cmd, check=True)
    subprocess.run([sys.executable, "-m", "tunelab.cli", "predict", str(run), "--input", str(data / "test.csv"),
                    "--output", str(args.out / "test_predictions.jsonl")], check=True)
    scores = refusal_scores(args.out / "test_predictions.jsonl", data / "test.csv")
    (args.out / "gate_scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    print(json.dumps(scores, indent=2))


if __name__ == "__main__":
    main()
