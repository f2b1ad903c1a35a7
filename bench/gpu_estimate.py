"""`tunelab estimate --measure` against the run it predicts, on the GPU: time and peak GPU memory (issue 16).

    python3 bench/gpu_estimate.py --out OUT [--cases a,e] [--steps 150] [--measure-steps 5] [--tiny]

(on the GPU machine with tunelab's src/ and the carried wheels on PYTHONPATH, as
bench/device_sweep.sh sets it; no weights are needed). The cases are bench/gpu_fastpath.py's, with
its random-init models of real shapes, its made-up BPE tokenizer, its rows and the config its
`tunelab` variant trains (data.packing and train.compile auto, the defaults; bf16 by `train.precision: auto`):
  (a) Qwen2-0.5B full SFT, batch 8, prompt+answer 64-1024 tokens (default)
  (e) Qwen2-0.5B classification, all weights, batch 8, texts of 128-1024 tokens (default)
  (b), (c), (d) on request (LoRA SFT; GPT-2 124M and SmolLM2-135M classification, batch 32, 10-120).
Each case trains for a fixed `--steps` optimizer steps (steps x batch + 64 rows; no validation
split) and runs, as real CLI processes, one after the other:
  1. `tunelab estimate OUT/config-<case>.yaml --measure STEPS`: what a user is told beforehand;
  2. `tunelab train OUT/config-<case>.yaml output_dir=<scratch>`: what really happens (the run
     folder is deleted afterwards; its summary.json is kept as OUT/summary-<case>.json).
Printed per case, and written to OUT/results.json after every case (predicted / measured = ratio):
  whole run   the estimate's "about ... for the whole run" (loading, data, the steps, validation,
              scoring and export, as the scratch run measured them) against summary.json's
              total_seconds (the same span of the real run; the CLI wall time, imports included,
              is given too);
  training    the estimate's steps x step time + validations x validation time against
              summary.json's train_seconds (the training loop);
  step        the estimate's mean step (interval between its optimizer steps, the first one left
              out) against the real run's mean step without its first one (summary.json's
              step_seconds and first_step_seconds);
  peak memory the formula's total (the memory line of the estimate: weights, gradients, optimizer,
              autocast copy, activations and 0.5 GB runtime, for the GPU) against summary.json's
              peak_memory_mb (torch.cuda.max_memory_allocated over the whole run: tensors only, so
              without the CUDA context or the allocator's cached blocks that the runtime term stands
              for; the ratio without the runtime term is given too), and the peak the estimate's
              own few steps measured.
`--tiny` runs the same code with gpu_fastpath's tiny shapes on the CPU (train.device=cpu, 4 steps,
96 rows, texts 8x shorter) in under a minute: a check of the script, not a measurement (peak memory is then the
process's peak RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
import cpu_demo
import gpu_fastpath

ROOT = cpu_demo.ROOT
UNITS = {"KB": 2**10, "MB": 2**20, "GB": 2**30}  # as tunelab.estimate.size prints them
SIZE = r"([\d.]+ [KMG]B)"
TIME = r"(\S+)"  # tunelab's `duration` (7s, 2m35s, 1h02m) or seconds (1.25s)
TINY_STEPS, TINY_MEASURE_STEPS, TINY_LENGTH_SCALE = 4, 3, 8  # --tiny: texts 8x shorter too


def fastpath_config(task: str, folder: Path, data: Path, trainable: str, steps: int, batch: int, max_length: int, run_dir: Path) -> dict:
    """The raw config gpu_fastpath's `tunelab` variant trains with, with both switches on auto
    (the defaults a user gets)."""
    return gpu_fastpath.tunelab_config(task, folder, data, trainable, steps, batch, run_dir, max_length, "auto", "auto")


def size_bytes(text: str) -> float:
    """'1.50 GB' / '3 MB' / '107 KB' -> bytes."""
    number, unit = text.split()
    return float(number) * UNITS[unit]


def parse_estimate(text: str) -> dict:
    """The figures of `tunelab estimate --measure`'s printed lines (it has no machine-readable
    output); exits with the text when a line is missing or has changed."""
    head = re.search(r"^estimate: .*micro-batch of up to (\d+) tokens, (\w+) on (\w+)$", text, re.M)
    memory = re.search(rf"^memory: (.+) = {SIZE} of {SIZE} \((.+)\)$", text, re.M)
    timing = re.search(rf"^time: (\d+) steps measured on this machine, {TIME} a step -> (\d+) steps {TIME} \+ (\d+) validations x {TIME} "
                       rf"\+ loading, scoring and export {TIME} = about {TIME} for the whole run$", text, re.M)
    peak = re.search(rf"^measured peak memory over those steps {SIZE} \(the formula: {SIZE}\)$", text, re.M)
    if not (head and memory and timing and peak):
        sys.exit(f"could not read `tunelab estimate --measure`'s output (a line changed?):\n{text[-4000:]}")
    parts = {name: size_bytes(value) for name, value in re.findall(rf"(\w+) {SIZE}", memory.group(1))}
    measured, step, total_steps, steps_time, validations, validation, fixed, whole = timing.groups()
    return {
        "tokens": int(head.group(1)), "precision": head.group(2), "device": head.group(3),
        "memory_parts": parts, "memory_total": size_bytes(memory.group(2)), "available": size_bytes(memory.group(3)), "where": memory.group(4),
        "steps_measured": int(measured), "step_s": cpu_demo.seconds(step), "total_steps": int(total_steps),
        "steps_s": cpu_demo.seconds(steps_time), "validations": int(validations), "validation_s": cpu_demo.seconds(validation),
        "fixed_s": cpu_demo.seconds(fixed), "whole_s": cpu_demo.seconds(whole),
        "training_s": round(cpu_demo.seconds(steps_time) + max(int(validations), 1) * cpu_demo.seconds(validation), 3),
        "measured_steps_peak": size_bytes(peak.group(1)),
    }


def ratio(predicted: float, measured: float) -> float | None:
    return round(predicted / measured, 3) if measured else None


def compare(est: dict, summary: dict) -> dict:
    """Predicted against measured (module docstring), each with predicted / measured."""
    steps, first = summary["steps"], summary.get("first_step_seconds")
    step = (summary["step_seconds"] - first) / (steps - 1) if first is not None and steps > 1 else summary["step_seconds"] / max(steps, 1)
    peak = summary["peak_memory_mb"] * 2**20
    formula = est["memory_total"]
    runtime = est["memory_parts"].get("runtime", 0.0)
    pairs = {"whole_s": (est["whole_s"], summary["total_seconds"]), "training_s": (est["training_s"], summary["train_seconds"]),
             "step_s": (est["step_s"], step), "peak_bytes": (formula, peak), "peak_bytes_without_runtime": (formula - runtime, peak)}
    return {name: {"predicted": p, "measured": m, "ratio": ratio(p, m)} for name, (p, m) in pairs.items()}


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_case(case: str, work: Path, tokenizer, out: Path, steps: int, measure_steps: int, tiny: bool) -> dict:
    """Estimate, then train, one of gpu_fastpath's cases; the figures of both and their comparison."""
    task, shape, trainable, batch, lo, hi = gpu_fastpath.CASES[case]
    if tiny:
        lo, hi = lo // TINY_LENGTH_SCALE, hi // TINY_LENGTH_SCALE
    folder = gpu_fastpath.make_model_dir(work / "models", shape, tokenizer, tiny)
    data = write_rows(work / f"rows-{case}.jsonl", gpu_fastpath.make_rows(task, steps * batch + 64, lo, hi, seed=ord(case)))
    config = out / f"config-{case}.yaml"
    config.write_text(yaml.safe_dump(fastpath_config(task, folder, data, trainable, steps, batch, hi + 16, work / f"run-{case}"), sort_keys=False))
    overrides = ["train.device=cpu"] if tiny else []
    text, wall = cpu_demo.run([*cpu_demo.TUNELAB, "estimate", str(config), *overrides, "--measure", str(measure_steps)])
    est = {**parse_estimate(text), "wall_s": round(wall, 2), "output": text}
    if not tiny and est["device"] != "cuda":
        sys.exit(f"the estimate ran on {est['device']}, not on a GPU:\n{text}")
    trained = cpu_demo.train(str(config), overrides, out / f"summary-{case}.json")
    summary = json.loads((out / f"summary-{case}.json").read_text())
    return {"task": task, "shape": shape, "trainable": trainable, "batch": batch, "lengths": [lo, hi], "steps": steps,
            "measure_steps": measure_steps, "config": str(config), "overrides": overrides, "estimate": est,
            "train": {**trained, "device": summary["device"], "precision": summary["precision"], "step_seconds": summary["step_seconds"],
                      "first_step_seconds": summary.get("first_step_seconds")},
            "compare": compare(est, summary)}


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def report(case: str, r: dict) -> list[str]:
    est, c, t = r["estimate"], r["compare"], r["train"]
    peak_kind = "max_memory_allocated" if t["device"].startswith("cuda") else "peak RSS"
    parts = ", ".join(f"{name} {gib(n)}" for name, n in est["memory_parts"].items())
    return [
        f"({case}) {r['shape']} {r['task']} {r['trainable']}, batch {r['batch']}, {r['lengths'][0]}-{r['lengths'][1]} tokens, {r['steps']} steps; "
        f"{est['precision']} on {t['device']} ({est['where']}), estimate from {est['steps_measured']} measured steps",
        f"({case})   whole run: predicted {c['whole_s']['predicted']:.1f} s, measured {c['whole_s']['measured']:.1f} s, ratio {c['whole_s']['ratio']} "
        f"(CLI wall: estimate {est['wall_s']:.0f} s, train {t['wall_s']:.0f} s)",
        f"({case})   training:  predicted {c['training_s']['predicted']:.1f} s, measured {c['training_s']['measured']:.1f} s, ratio {c['training_s']['ratio']}; "
        f"step {c['step_s']['predicted']:.3f} s against {c['step_s']['measured']:.3f} s (first step left out), ratio {c['step_s']['ratio']}",
        f"({case})   peak memory: predicted {gib(c['peak_bytes']['predicted'])} (formula), measured {gib(c['peak_bytes']['measured'])} ({peak_kind}, whole run), "
        f"ratio {c['peak_bytes']['ratio']} ({c['peak_bytes_without_runtime']['ratio']} without the runtime term); "
        f"the estimate's own steps peaked at {gib(est['measured_steps_peak'])}",
        f"({case})   formula: {parts}; micro-batch of up to {est['tokens']} tokens",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default="a,e", help=f"comma-separated, of gpu_fastpath's {','.join(gpu_fastpath.CASES)}")
    ap.add_argument("--steps", type=int, default=150, help="optimizer steps of each run")
    ap.add_argument("--measure-steps", type=int, default=5, help="steps `tunelab estimate --measure` times (its default: 5)")
    ap.add_argument("--work", default="/tmp/tunelab-gpu-estimate", help="models, tokenizer and rows (kept between runs)")
    ap.add_argument("--tiny", action="store_true", help=f"tiny shapes on the CPU, {TINY_STEPS} steps: check the script")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) / ("tiny" if args.tiny else "full")  # the tiny and real models share their folder names
    work.mkdir(parents=True, exist_ok=True)
    steps, measure_steps = (TINY_STEPS, TINY_MEASURE_STEPS) if args.tiny else (args.steps, args.measure_steps)
    src = str(ROOT / "src")  # this checkout's tunelab, here and in the CLI processes
    sys.path.insert(0, src)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    tokenizer = gpu_fastpath.build_tokenizer(work / "tokenizer")
    results = {}
    for case in args.cases.split(","):
        results[case] = run_case(case, work, tokenizer, out, steps, measure_steps, args.tiny)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        print("\n".join(report(case, results[case])), flush=True)


if __name__ == "__main__":
    main()
