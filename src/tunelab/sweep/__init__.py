"""Sweeps: many runs of one base config (cells x seeds), resumable, with aggregated reports.

    tunelab sweep configs/sweeps/seven-questions-quick.yaml [--parallel 2] [--dry-run]

spec.py reads and expands the sweep file (every run config validated before anything runs),
runner.py executes the runs (one process each, resumable, change-aware), aggregate.py computes
mean/std/t-intervals over seeds, report.py writes results.csv, results.md, report.html, plots/.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from tunelab.errors import TunelabError


def _notes(spec, path, runs, rows, outcome=None) -> list[str]:
    homes = {id(r.home) for r in runs}
    notes = [
        f"Sweep file {path}: {len(runs)} runs ({len(homes)} distinct configs) in {len({r.cell.slug for r in runs})} cells; "
        f"{len(rows)} runs finished and reported.",
        f"Seeds are written to {', '.join(spec.seed_keys)}"
        + ("; the data split stays fixed, so every cell is scored on the same test set." if "data.split.seed" not in spec.seed_keys else "; each seed also draws its own split."),
        "Values are mean ± sample standard deviation over seeds; the 95 % CI of test accuracy is Student's t over seeds (none with one seed). "
        "A cell marked (= other) has the same resolved config as that cell and shares its runs.",
    ]
    if outcome and outcome.failed:
        notes.append(f"{len(outcome.failed)} run(s) failed and are missing here: " + "; ".join(r.label for r, _ in outcome.failed))
    return notes


def write_sweep_report(path, spec, runs, out: Path, outcome=None) -> dict:
    from tunelab.sweep.aggregate import aggregate, collect
    from tunelab.sweep.report import write_reports

    rows = collect(runs)
    cells = aggregate(rows)
    paths = write_reports(rows, cells, out, f"Sweep results: {Path(path).stem}", _notes(spec, path, runs, rows, outcome))
    return {"rows": rows, "cells": cells, "paths": paths}


def write_plan(path, spec, runs, out: Path, cli_overrides) -> None:
    from tunelab.data.io_atomic import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    cells = {}
    for r in runs:
        c = cells.setdefault(r.cell.slug, {"cell": r.cell.slug, "group": r.cell.group, "dataset": r.cell.dataset, "variant": r.cell.variant,
                                           "question": r.cell.question, "base": str(r.cell.base), "overrides": r.cell.overrides, "runs": []})
        c["runs"].append({"seed": r.seed, "hash": r.hash, "folder": str(r.home.folder)})
    body = {"sweep_file": str(path), "seed_keys": spec.seed_keys, "command_line_overrides": cli_overrides or [], "cells": list(cells.values())}
    write_text_atomic(out / "sweep.json", json.dumps(body, indent=1, ensure_ascii=False, default=str))
    write_text_atomic(out / "sweep.yaml", Path(path).read_text(encoding="utf-8"))


def run_sweep(path, overrides: list[str] | None = None, *, output_dir: str | None = None, parallel: int = 1, threads: int | None = None,
              rerun_changed: bool = False, only: str | None = None, keep: str | None = None, isolate: bool = True, log=print) -> dict:
    """Validate, run what is not done yet, aggregate and write the reports. Returns
    {"outcome", "rows", "cells", "paths"}."""
    from tunelab.sweep.runner import execute
    from tunelab.sweep.spec import load_sweep

    spec, _, runs = load_sweep(path, overrides, output_dir)
    out = Path(output_dir or spec.output_dir)
    selected = select(runs, only)
    write_plan(path, spec, runs, out, overrides)
    outcome = execute(selected, parallel=parallel, threads=threads, keep=keep or spec.keep, rerun_changed=rerun_changed, isolate=isolate, log=log)
    result = write_sweep_report(path, spec, runs, out, outcome)
    result["outcome"] = outcome
    return result


def matches(slug: str, only: str) -> bool:
    return any(fnmatch.fnmatchcase(slug, p.strip()) for p in only.split(",") if p.strip())


def select(runs, only: str | None):
    """Runs whose cell matches the glob `only` (comma-separated globs allowed); shared runs are
    executed in the folder of the cell that owns them."""
    if not only:
        return runs
    chosen = [r for r in runs if matches(r.cell.slug, only)]
    if not chosen:
        raise TunelabError(f"--only {only!r} matches no cell; cells are: {', '.join(dict.fromkeys(r.cell.slug for r in runs))}")
    homes = list({id(r.home): r.home for r in chosen}.values())
    return homes
