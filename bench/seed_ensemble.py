"""Does averaging the class probabilities of several runs (seeds) beat the runs alone?

    .venv/bin/python bench/seed_ensemble.py RUN_DIR RUN_DIR [RUN_DIR ...]

Reads each classification run's test_predictions.jsonl (same config, other train.seed: the same
test rows in the same order; checked), prints each run's test accuracy, their mean, and the
accuracy and macro-F1 of the ensemble that predicts the class of highest mean probability.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sklearn.metrics import accuracy_score, f1_score


def read_predictions(run: Path) -> list[dict]:
    path = run / "test_predictions.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (classification runs write it since this file was added)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def ensemble(runs: list[list[dict]]) -> list[str]:
    """The label of highest mean probability for each row; the runs must list the same rows."""
    first = runs[0]
    for other in runs[1:]:
        if len(other) != len(first) or any(a["text"] != b["text"] for a, b in zip(first, other)):
            raise SystemExit("the runs were scored on different test rows: use one config with other seeds")
    labels = list(first[0]["probabilities"])
    out = []
    for rows in zip(*runs):
        mean = {lab: sum(r["probabilities"][lab] for r in rows) / len(rows) for lab in labels}
        out.append(max(labels, key=mean.get))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    runs = [read_predictions(r) for r in args.runs]
    truth = [r["label"] for r in runs[0]]
    singles = []
    for path, rows in zip(args.runs, runs):
        acc = accuracy_score(truth, [r["predicted"] for r in rows])
        singles.append(acc)
        print(f"{path}: test accuracy {100 * acc:.2f} % ({sum(not r['correct'] for r in rows)} errors in {len(rows)})")
    pred = ensemble(runs)
    print(f"mean of the {len(runs)} runs: {100 * sum(singles) / len(singles):.2f} %")
    print(f"ensemble (mean probability): test accuracy {100 * accuracy_score(truth, pred):.2f} %, "
          f"macro-F1 {100 * f1_score(truth, pred, average='macro'):.2f} % "
          f"({sum(p != t for p, t in zip(pred, truth))} errors in {len(truth)})")


if __name__ == "__main__":
    main()
