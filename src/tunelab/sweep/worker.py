"""One run of a sweep or a cross-validation, in its own process.

    python -m tunelab.sweep.worker runs/sweeps/demo/runs/trainable--spam--head/seed-1 --threads 2

The folder holds `cell.json` (written by the runner: the resolved config and its hash). The run
always starts with resume=True: a fresh folder starts from step 0, a crashed one continues from
its last checkpoint. A separate process per run makes `peak_memory_mb` (the process's peak RSS on
a CPU) the memory of that run alone, and a crash ends only that run.
After success, `keep` decides what stays: `metrics` deletes checkpoints/ and model/ (a sweep of
full fine-tunes would otherwise fill the disk), `model` deletes checkpoints/ only, `all` nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path


def prune(folder: Path, keep: str) -> None:
    drop = {"metrics": ("checkpoints", "model"), "model": ("checkpoints",), "all": ()}[keep]
    for name in drop:
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)


def run_folder(folder: str | Path, threads: int | None = None, keep: str = "metrics", log=print) -> dict:
    """Train the run described by `folder/cell.json`; return its summary."""
    import torch

    from tunelab.config import validate_dict
    from tunelab.tasks import recipe

    folder = Path(folder)
    cell = json.loads((folder / "cell.json").read_text(encoding="utf-8"))
    cfg = validate_dict(cell["config"], source=f"in {folder / 'cell.json'}")
    if threads:
        torch.set_num_threads(threads)
    # Lets a runner see that this folder is being trained right now (see runner.busy_pid).
    pid_file = folder / "worker.pid"
    pid_file.write_text(str(os.getpid()))
    try:
        summary = recipe(cfg.task)(cfg, resume=True, log=log)
        prune(folder, keep)
    finally:
        pid_file.unlink(missing_ok=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    from tunelab.errors import TunelabError

    p = argparse.ArgumentParser(prog="python -m tunelab.sweep.worker", description="run one sweep/CV run folder (holding cell.json)")
    p.add_argument("folder")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--keep", choices=["metrics", "model", "all"], default="metrics")
    args = p.parse_args(argv)
    try:
        run_folder(args.folder, args.threads, args.keep, log=lambda *a: print(*a, flush=True))
    except TunelabError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
