"""The `tunelab` command line.

    tunelab --help
    tunelab train configs/spam-smollm2.yaml train.lr=1e-4

Each subcommand lives in `tunelab/commands/<name>.py` with `HELP`, `configure(parser)` and
`run(args) -> int`. Those modules import only argparse at the top; heavy libraries (torch,
transformers) are imported inside `run`, so `tunelab --help` answers instantly.
`main` is the one error boundary: user errors (`TunelabError`, OS errors on a user's path) are
printed as one clear message without a traceback; anything else is reported as a bug, with the
traceback saved to a file.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import threading
from pathlib import Path

from tunelab.errors import TunelabError

# subcommand -> module under tunelab.commands
COMMANDS = {
    "assets": "assets",
    "validate": "validate",
    "estimate": "estimate",
    "train": "train",
    "eval": "evaluate",
    "predict": "predict",
    "generate": "generate",
    "chat": "chat",
    "export": "export",
    "data": "data",
    "sweep": "sweep",
    "cv": "cv",
    "serve": "serve",
    "judge": "judge",
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


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, except that dotted overrides (`key=value`) may come anywhere after the config
    path, also after a flag (`tunelab train c.yaml --force train.max_steps=200`)."""
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    if overrides and hasattr(args, "overrides"):
        args.overrides = [*(args.overrides or []), *overrides]
        extra = [a for a in extra if a not in overrides]
    if extra:
        parser.parse_args(argv)  # argparse's own message and exit 2 for what is really unknown
    return args


def report_bug(command: str, err: BaseException) -> int:
    """An unexpected error: one line that says it is a bug and where the traceback was saved."""
    import tempfile
    import time
    import traceback

    folder = Path(os.environ.get("TUNELAB_HOME", Path.home() / ".cache" / "tunelab")) / "crash-reports"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir())
    path = folder / f"tunelab-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    text = f"tunelab {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(err))
    try:
        path.write_text(text, encoding="utf-8")
        where = f"the full traceback is in {path}"
    except OSError:
        where = "the traceback could not be saved"
    print(f"tunelab {command}: internal error (a bug in tunelab, not in your input): {type(err).__name__}: {err}\n"
          f"  {where}; please report it with that file", file=sys.stderr)
    return 1


def os_error_message(err: OSError) -> str:
    """A user-facing line for an operating-system error (disk full, permissions, a file where a
    folder is expected ...): what happened and to which path."""
    path = err.filename or ""
    hint = {errno.ENOSPC: "the disk is full: free some space and run again (a run resumes with --resume)",
            errno.EDQUOT: "the disk quota is exceeded: free some space and run again",
            errno.EACCES: "no permission", errno.EPERM: "not permitted", errno.EROFS: "the file system is read-only",
            errno.ENOTDIR: "a part of the path is a file, not a folder", errno.EISDIR: "this is a folder, a file was expected",
            errno.ENOENT: "no such file or folder", errno.EEXIST: "it already exists"}.get(err.errno, err.strerror or str(err))
    return f"{path}: {hint}" if path else hint


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """The error boundary of every command: a user-caused failure (TunelabError, an OS error on a
    user's path) prints one line and exits 2; Ctrl-C or SIGTERM exits 130 with a word on resuming;
    anything else is a bug: one line, the traceback saved to a file, exit 1."""
    parser = build_parser()
    args = parse(parser, argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    previous = signal.signal(signal.SIGTERM, _terminated) if threading.current_thread() is threading.main_thread() else None
    finished = False
    try:
        status = int(args._run(args) or 0)
        finished = True
        return status
    except TunelabError as err:
        print(f"tunelab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno is None:
            return report_bug(args.command, err)
        print(f"tunelab {args.command}: error: {os_error_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        resume = "; continue with the same command and --resume" if args.command in ("train",) else ""
        print(f"tunelab {args.command}: interrupted{' by ' + str(err) if str(err) else ''}{resume}", file=sys.stderr)
        return 130
    except Exception as err:
        return report_bug(args.command, err)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _close_process_group(finished)


def _close_process_group(finished: bool) -> None:
    """A command started by torchrun / accelerate launch ends its process group here (only if
    torch was imported at all: `tunelab --help` stays instant)."""
    if "torch" in sys.modules and os.environ.get("WORLD_SIZE", "1") != "1":
        from tunelab.train.distributed import close

        try:
            close(finished)
        except Exception as err:  # another rank already gone: what this one wrote is complete; no traceback
            print(f"tunelab: the process group did not close cleanly ({type(err).__name__}: {str(err)[:200]})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
