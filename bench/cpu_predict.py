"""Scoring speed on the CPU: `tunelab predict` against the stock transformers pipeline (issue 16).

    .venv/bin/python bench/cpu_predict.py [--rows 256] [--out bench/results/cpu-predict]

Trains the demo config for a few steps in a scratch folder (the speed of scoring does not depend
on how well the model is trained), then labels the same `--rows` SMS texts (seeded sample of the
sms-spam asset):
- `tunelab predict RUN --input texts.txt --batch-size B [--threads T]`, the CLI as a user runs it,
  for batch 1 and 32 and 1 or 2 threads; rows/s is the CLI's own line (tokenising and scoring,
  not loading);
- `transformers.pipeline("text-classification", model=RUN/model, batch_size=32)`, the stock way to
  use the exported folder, timed the same way (call only, model already loaded), in this process.
The labels of the two must agree on every row: the speed is compared on the same answers.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUNELAB = [sys.executable, "-m", "tunelab.cli"]
CONFIG = "configs/spam-smollm2.yaml"


def cli(*args: str) -> str:
    proc = subprocess.run([*TUNELAB, *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"tunelab {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr


def sample_texts(n: int) -> list[str]:
    from tunelab.assets.resolve import read_data_spec
    from tunelab.config import DataConfig

    rows, text_col, _, _ = read_data_spec("asset:sms-spam", DataConfig(train="asset:sms-spam"))
    texts = [" ".join(str(r[text_col]).split()) for r in rows]  # one per line in a .txt input
    return random.Random(0).sample([t for t in texts if t], n)


def tunelab_rate(run: Path, texts_file: Path, batch: int, threads: int | None) -> tuple[float, list[str]]:
    out_file = texts_file.with_name(f"pred-{batch}-{threads}.jsonl")
    extra = ["--threads", str(threads)] if threads else []
    log = cli("predict", str(run), "--input", str(texts_file), "--output", str(out_file), "--batch-size", str(batch), *extra)
    rate = float(re.search(r"\(([\d,.]+) rows/s", log).group(1).replace(",", ""))
    return rate, [json.loads(line)["label"] for line in out_file.read_text().splitlines()]


def pipeline_rate(run: Path, texts: list[str], batch: int) -> tuple[float, list[str]]:
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(run / "model"), device="cpu")
    clf(texts[:batch], batch_size=batch)  # warm-up, as the CLI's rate excludes loading
    start = time.perf_counter()
    labels = [r["label"] for r in clf(texts, batch_size=batch, truncation=True, max_length=128)]
    return len(texts) / (time.perf_counter() - start), labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--out", default="bench/results/cpu-predict")
    args = ap.parse_args()
    texts = sample_texts(args.rows)
    results = {}
    with tempfile.TemporaryDirectory(prefix="tunelab-cpu-predict-") as scratch:
        run = Path(scratch) / "run"
        cli("train", CONFIG, f"output_dir={run}", "train.max_steps=20")
        texts_file = Path(scratch) / "texts.txt"
        texts_file.write_text("\n".join(texts) + "\n")
        reference = None
        for batch, threads in ((1, None), (32, 1), (32, None)):
            rate, labels = tunelab_rate(run, texts_file, batch, threads)
            reference = reference or labels
            results[f"tunelab predict, batch {batch}, threads {threads or 'default'}"] = rate
            print(f"tunelab predict batch {batch} threads {threads or 'default'}: {rate:,.1f} rows/s", flush=True)
        rate, labels = pipeline_rate(run, texts, 32)
        agree = sum(a == b for a, b in zip(labels, reference))
        results["transformers pipeline, batch 32"] = rate
        print(f"transformers pipeline batch 32: {rate:,.1f} rows/s; labels agree with tunelab on {agree} of {len(texts)}", flush=True)
    best = results["tunelab predict, batch 32, threads default"]
    print(f"tunelab batch 32 / pipeline batch 32: {best / rate:.2f}x")
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"rows": args.rows, "rows_per_second": results, "labels_agree": agree}, indent=1))


if __name__ == "__main__":
    main()
