"""`tunelab estimate CONFIG [key=value ...] [--measure [STEPS]]`: parameters, memory against this
machine's, and with --measure the time of the whole run, before training.

    tunelab estimate configs/spam-smollm2.yaml
    tunelab estimate configs/spam-smollm2.yaml train.batch_size=32 --measure

The formula and what --measure runs: tunelab/estimate.py.
"""

HELP = "estimate a run's parameters, memory and (--measure) time on this machine, without training"


def configure(p):
    p.add_argument("config", help="YAML run config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_size=4 data.max_length=128")
    p.add_argument("--measure", nargs="?", type=int, const=5, default=None, metavar="STEPS",
                   help="also run the real training for STEPS optimizer steps (default 5) in a scratch folder and "
                        "estimate the whole run's time from them (costs the run's loading and scoring once)")


def run(args) -> int:
    from tunelab.config import load_config
    from tunelab.errors import TunelabError
    from tunelab.estimate import estimate_config, format_estimate, format_timing, measure_time

    if args.measure is not None and args.measure < 2:
        raise TunelabError(f"--measure {args.measure}: measure at least 2 steps (the first one is not timed alone)")
    cfg = load_config(args.config, args.overrides)
    est = estimate_config(cfg)
    print("\n".join(format_estimate(est)))
    if args.measure is not None:
        print("\n".join(format_timing(measure_time(cfg, args.measure), est)))
    return 0
