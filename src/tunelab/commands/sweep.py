"""`tunelab sweep SWEEP.yaml [key=value ...]`: run every cell x seed of a sweep, resumably, and
write results.csv, results.md, report.html and plots/ into the sweep's output_dir.

    tunelab sweep configs/sweeps/seven-questions-quick.yaml --dry-run     # check + show the plan
    tunelab sweep configs/sweeps/seven-questions-quick.yaml               # run (again: resumes)
    tunelab sweep configs/sweeps/seven-questions.yaml --only 'pooling--*' --parallel 2
"""

HELP = "run a sweep of configs x seeds (resumable) and report mean ± std per cell"


def configure(p):
    p.add_argument("sweep", help="sweep YAML file (base config, seeds, groups of variants/grids)")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every run, e.g. train.max_steps=20 (part of each run's definition)")
    p.add_argument("--dry-run", action="store_true", help="check the sweep and every run config, print the cells and what is done; run nothing")
    p.add_argument("--report-only", action="store_true", help="rewrite the reports from the finished runs; run nothing")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="runs at once (each in its own process; default 1)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads per run (default: CPU cores / parallel)")
    p.add_argument("--only", default=None, metavar="GLOB", help="run only cells whose name matches (comma-separated globs, e.g. 'trainable--*')")
    p.add_argument("--output-dir", default=None, help="sweep folder instead of the file's output_dir")
    p.add_argument("--keep", choices=["metrics", "model", "all"], default=None, help="what a finished run keeps (default: the file's `keep`, else metrics)")
    p.add_argument("--rerun-changed", action="store_true", help="delete and rerun runs whose cell definition changed (default: stop with an error)")


def print_plan(runs, log=print) -> None:
    from tunelab.sweep.runner import status

    cells: dict = {}
    for r in runs:
        cells.setdefault(r.cell.slug, []).append(r)
    width = max(len(c) for c in cells)
    for slug, rs in cells.items():
        states = " ".join(f"{r.seed}:{status(r)}" for r in rs)
        shared = f"  (= {rs[0].alias_of.cell.slug})" if rs[0].alias_of else ""
        over = ", ".join(f"{k}={v}" for k, v in rs[0].cell.overrides.items())
        log(f"  {slug:<{width}}  seeds {states}{shared}\n  {'':<{width}}  {over}")


def print_table(cells, log=print) -> None:
    """The sweep's cells on the console: accuracy columns, or the generated answers' scores when
    every cell is instruction tuning (SFT cells have no accuracy)."""
    from tunelab.sweep.report import loss, pct

    def secs(e):
        return f"{e['train_seconds']['mean']:.0f}" if e["train_seconds"]["mean"] is not None else "–"

    if cells and all(e.get("task") == "sft" for e in cells):
        rows = [("cell", "n", "val loss", "test loss", "exact match %", "token F1 %", "refusal precision %", "refusal recall %", "train s")]
        rows += [(e["cell"], str(e["n"]), loss(e["validation_loss"]), loss(e["test_loss"]), pct(e["test_exact_match"]), pct(e["test_token_f1"]),
                  pct(e["test_refusal_precision"]), pct(e["test_refusal_recall"]), secs(e)) for e in cells]
    else:
        rows = [("cell", "n", "test acc %", "test macro-F1 %", "test loss", "train s")]
        rows += [(e["cell"], str(e["n"]), pct(e["test_accuracy"]), pct(e["test_macro_f1"]), loss(e["test_loss"]), secs(e)) for e in cells]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        log("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def run(args) -> int:
    from pathlib import Path

    from tunelab.sweep import matches, run_sweep, write_sweep_report
    from tunelab.sweep.spec import load_sweep

    if args.dry_run or args.report_only:
        spec, cells, runs = load_sweep(args.sweep, args.overrides, args.output_dir)
        if args.dry_run:
            homes = {id(r.home) for r in runs}
            print(f"{args.sweep}: {len(cells)} cells, {len(runs)} runs ({len(homes)} distinct configs), every run config valid")
            print_plan([r for r in runs if matches(r.cell.slug, args.only)] if args.only else runs)
            return 0
        result = write_sweep_report(args.sweep, spec, runs, Path(args.output_dir or spec.output_dir))
    else:
        result = run_sweep(args.sweep, args.overrides, output_dir=args.output_dir, parallel=args.parallel, threads=args.threads,
                           rerun_changed=args.rerun_changed, only=args.only, keep=args.keep)
    print()
    print_table(result["cells"])
    print(f"\nreports: {result['paths']['md']}  {result['paths']['html']}  {result['paths']['csv']}")
    failed = result.get("outcome").failed if result.get("outcome") else []
    for r, msg in failed:
        print(f"failed: {r.label} ({r.folder}/train.log): {msg}")
    return 1 if failed else 0
