"""The `tunelab` command line.

    tunelab --help
    tunelab train configs/spam-smollm2.yaml train.lr=1e-4

Each subcommand lives in `tunelab/commands/<name>.py` with `HELP`, `configure(parser)` and
`run(args) -> int`. Those modules import only argparse at the top; heavy libraries (torch,
transformers) are imported inside `run`, so `tunelab --help` answers instantly.
User errors (`TunelabError`) are printed as one clear message without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tunelab.errors import TunelabError

# subcommand -> module under tunelab.commands
COMMANDS = {
    "assets": "assets",
    "validate": "validate",
    "train": "train",
    "eval": "evaluate",
    "predict": "predict",
    "generate": "generate",
    "chat": "chat",
    "export": "export",
    "data": "data",
    "sweep": "sweep",
    "cv": "cv",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunelab",
        description="Turn pretrained language models into specialists (offline by default).",
    )
    from tunelab.version import __version__

    parser.add_argument("--version", action="version", version=f"tunelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"tunelab.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except TunelabError as err:
        print(f"tunelab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tunelab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
