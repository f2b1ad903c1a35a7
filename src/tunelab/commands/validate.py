"""`tunelab validate CONFIG [key=value ...]`: check a config without loading any model."""

HELP = "check a config file (and overrides) without loading a model; print the resolved config"


def configure(p):
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4")


def run(args) -> int:
    from tunelab.config import load_config, to_yaml

    cfg = load_config(args.config, args.overrides)
    print(to_yaml(cfg), end="")
    print(f"# {args.config}: valid")
    return 0
