"""The quick-start demo on this machine, frozen-prefix cache off and on, in one run (issue 16).

    .venv/bin/python bench/cpu_demo.py [--config configs/spam-smollm2.yaml] [--out bench/results/cpu-demo]

For each variant (`train.cache_frozen=false`, then `true`) it runs, one after the other:
1. `tunelab estimate CONFIG --measure` (the prediction a user gets before pressing enter), then
2. `tunelab train CONFIG` into a scratch run folder (what really happens),
and prints, side by side, the predicted and the measured time of the whole run, the training
time, peak memory (the formula's, the measured one) and the test accuracy. Both runs are real
CLI processes, so loading and import time count as a user sees them. Run it on a quiet machine:
nothing else may use the cores while it times.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUNELAB = [sys.executable, "-m", "tunelab.cli"]


def run(cmd: list[str]) -> tuple[str, float]:
    """stdout+stderr of `cmd` (must succeed) and its wall time in seconds."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr, wall


def seconds(text: str) -> float:
    """'3m 12s' / '45s' / '1.25s' / '1h 2m' -> seconds."""
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)\s*([hms])", text):
        total += float(number) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


def estimate(config: str, overrides: list[str]) -> dict:
    out, wall = run([*TUNELAB, "estimate", config, *overrides, "--measure"])
    whole = re.search(r"= about (.+?) for the whole run", out)
    formula = re.search(r"measured peak memory over those steps (.+?) \(the formula: (.+?)\)", out)
    step = re.search(r"measured on this machine, (.+?) a step", out)
    return {"predicted_s": seconds(whole.group(1)) if whole else None, "step_s": seconds(step.group(1)) if step else None,
            "formula_memory": formula.group(2) if formula else None, "measure_wall_s": wall, "output": out}


def train(config: str, overrides: list[str], keep: Path) -> dict:
    """The run in a scratch folder (a run folder holds the model: hundreds of MB); its
    summary.json is kept as `keep`."""
    with tempfile.TemporaryDirectory(prefix="tunelab-cpu-demo-") as scratch:
        run_dir = Path(scratch) / "run"
        out, wall = run([*TUNELAB, "train", config, *overrides, f"output_dir={run_dir}"])
        summary = json.loads((run_dir / "summary.json").read_text())
    keep.write_text(json.dumps(summary, indent=1))
    test = summary.get("test") or {}
    return {"wall_s": wall, "train_s": summary["train_seconds"], "total_s": summary["total_seconds"], "steps": summary["steps"],
            "peak_memory_mb": summary["peak_memory_mb"], "test_accuracy": test.get("accuracy"), "frozen_cache": summary.get("frozen_cache"),
            "cache_line": next((line for line in out.splitlines() if line.startswith("frozen-prefix cache")), "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/spam-smollm2.yaml")
    ap.add_argument("--out", default="bench/results/cpu-demo")
    args = ap.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, flag in (("cache off", "false"), ("cache on", "true")):
        overrides = [f"train.cache_frozen={flag}"]
        rows[name] = {"estimate": estimate(args.config, overrides), "train": train(args.config, overrides, out / f"summary-cache-{flag}.json")}
        (out / "results.json").write_text(json.dumps(rows, indent=2, default=str))
        e, t = rows[name]["estimate"], rows[name]["train"]
        print(f"{name}: {t['cache_line']}", flush=True)
        print(f"{name}: predicted {e['predicted_s']:.0f} s, CLI wall {t['wall_s']:.0f} s (run {t['total_s']:.0f} s, training {t['train_s']:.1f} s, "
              f"{t['steps']} steps), peak {t['peak_memory_mb']:.0f} MB (formula {e['formula_memory']}), "
              f"test accuracy {100 * t['test_accuracy']:.2f} %", flush=True)
    off, on = rows["cache off"]["train"], rows["cache on"]["train"]
    print(f"training time off/on: {off['train_s'] / on['train_s']:.2f}x, whole run {off['total_s'] / on['total_s']:.2f}x, "
          f"CLI wall {off['wall_s'] / on['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
