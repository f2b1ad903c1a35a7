"""Flags and argument readers that several commands share (generate, chat, predict, eval); not a command."""


def add_decoding_options(p):
    """Decoding flags shared by generate and chat; None means the run's own setting."""
    p.add_argument("--max-new-tokens", type=int, default=None, help="most new tokens per answer (default: the run's)")
    p.add_argument("--sample", dest="do_sample", action="store_const", const=True, default=None, help="sample (temperature, top-p) instead of greedy decoding")
    p.add_argument("--greedy", dest="do_sample", action="store_const", const=False, help="greedy decoding")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling probability mass")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def decoding(args, meta: dict) -> dict:
    """The run's generation settings with the command-line flags that were given on top."""
    from tunelab.errors import TunelabError
    from tunelab.sft.generate import decoding_settings

    flags = {key: getattr(args, key, None) for key in ("max_new_tokens", "do_sample", "temperature", "top_p", "seed")}
    checks = {"max_new_tokens": (lambda v: v >= 1, "at least 1"), "temperature": (lambda v: v > 0, "above 0"), "top_p": (lambda v: 0 < v <= 1, "in (0, 1]")}
    for key, (ok, expected) in checks.items():
        if flags[key] is not None and not ok(flags[key]):
            raise TunelabError(f"--{key.replace('_', '-')} {flags[key]}: expected {expected}")
    return decoding_settings(meta.get("generation"), **flags)


def read_context(value):
    """--context: the text itself, or @FILE / an existing file path for its content."""
    from pathlib import Path

    if value is None:
        return None
    path = Path(value[1:] if value.startswith("@") else value)
    if value.startswith("@") or (len(value) < 4096 and "\n" not in value and path.is_file()):
        from tunelab.errors import TunelabError

        if not path.is_file():
            raise TunelabError(f"--context: file not found: {path}")
        return path.read_text(encoding="utf-8").strip()
    return value


def add_threads_option(p):
    """--threads for the commands that score rows on the CPU (predict, eval), as train.num_threads
    is for training."""
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice, as in training)")


def apply_threads(args) -> int:
    """Set torch's CPU thread count from --threads; the count in use."""
    import torch

    from tunelab.errors import TunelabError

    if args.threads is not None:
        if args.threads < 1:
            raise TunelabError(f"--threads {args.threads}: expected at least 1")
        torch.set_num_threads(args.threads)
    return torch.get_num_threads()


def rate_line(verb: str, rows: int, seconds: float, threads: int, device) -> str:
    """'scored 1,115 rows in 4.2 s (265 rows/s; cpu, 2 threads)': how fast a command went, for the log.

    >>> rate_line("scored", 1115, 4.2, 2, "cpu"), rate_line("predicted", 256, 25.6, 1, "cuda:0")
    ('scored 1,115 rows in 4.2 s (265 rows/s; cpu, 2 threads)', 'predicted 256 rows in 25.6 s (10.0 rows/s; cuda:0)')
    """
    where = f"{device}, {threads} threads" if str(device).startswith("cpu") else str(device)
    rate = rows / max(seconds, 1e-9)
    shown = f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}"  # slow models: a decimal tells 8 from 8.9
    return f"{verb} {rows:,} rows in {seconds:.1f} s ({shown} rows/s; {where})"
