"""`tunelab cv CONFIG --folds K [key=value ...]`: k-fold cross-validation of one config.

    tunelab cv configs/spam-minilm.yaml --folds 5
    tunelab cv configs/spam-minilm.yaml --folds 5 --output-dir runs/spam-minilm-cv5 train.epochs=2

Writes <output>/folds/fold-i/*.jsonl, one run per fold in <output>/runs/fold-i/, cv_results.json
and results.csv; prints per-fold scores and mean ± std. Run it again to resume.
"""

HELP = "k-fold cross-validation of a config: mean ± std of fold test accuracy and macro-F1 (resumable)"


def configure(p):
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=2")
    p.add_argument("--folds", type=int, default=5, metavar="K", help="number of stratified folds (default 5)")
    p.add_argument("--seed", type=int, default=None, help="seed of the fold assignment (default: data.split.seed)")
    p.add_argument("--output-dir", default=None, help="CV folder (default: the config's output_dir + '-cvK')")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="folds at once, each in its own process (default 1)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads per fold (default: CPU cores / parallel)")
    p.add_argument("--keep", choices=["metrics", "model", "all"], default="metrics", help="what a finished fold keeps (default: metrics; model/ and checkpoints/ deleted)")
    p.add_argument("--rerun-changed", action="store_true", help="delete and rerun folds whose config or data changed (default: stop with an error)")


def run(args) -> int:
    from tunelab.config import load_config
    from tunelab.sweep.cv import cross_validate, format_table

    cfg = load_config(args.config, args.overrides)
    result = cross_validate(cfg, args.folds, args.output_dir, args.seed, parallel=args.parallel, threads=args.threads,
                            rerun_changed=args.rerun_changed, keep=args.keep, source=str(args.config))
    print()
    print(format_table(result))
    print(f"\nresults: {result['out'] / 'cv_results.json'}  {result['out'] / 'results.csv'}")
    for r, msg in result["outcome"].failed:
        print(f"failed: {r.label} ({r.folder}/train.log): {msg}")
    return 1 if result["outcome"].failed else 0
