"""`tunelab train CONFIG [key=value ...] [--resume] [--force]`: fine-tune as configured."""

HELP = "fine-tune a model as the config says (task: classification or sft); resumable"


def configure(p):
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 output_dir=runs/x")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing run folder")


def run(args) -> int:
    from tunelab.config import load_config
    from tunelab.tasks import recipe

    cfg = load_config(args.config, args.overrides)
    recipe(cfg.task)(cfg, resume=args.resume, force=args.force)
    return 0
