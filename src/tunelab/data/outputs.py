"""Output-path checks that run before any work: an output never replaces an input or a run.

    check_output("scores.json", inputs=["data/test.csv", "runs/spam"], flag="--output")

A user who points `--output` at the file they are reading, or `export --out` at a run folder,
would otherwise lose it silently when the write lands. These checks compare resolved paths (so
`./a.csv`, `a.csv` and a symlink to it are the same file) and refuse with the flag's name. They
also refuse an output whose parent is an existing file, or that is an existing folder where a
file is expected, before hours of training rather than after.
"""

from __future__ import annotations

import os
from pathlib import Path

from tunelab.errors import TunelabError

# What training writes into a run folder: an output may not replace these (other files there may be
# written and rewritten, e.g. `tunelab eval RUN --output RUN/scores.json`).
RUN_OWNED = ("config.yaml", "data_report.json", "metrics.jsonl", "summary.json", "test_metrics.json", "test_report.txt",
             "test_predictions.jsonl", "examples.md", "sft_template.json", "checkpoints", "model", "adapter")


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _resolved(path) -> Path:
    return Path(path).expanduser().resolve()


def is_run_folder(path) -> bool:
    """A folder tunelab trained into: its resolved config.yaml plus one more file training writes
    (a project folder that merely has a config.yaml is not one)."""
    p = Path(path)
    return p.is_dir() and (p / "config.yaml").is_file() and any((p / name).exists() for name in RUN_OWNED[1:])


def _run_above(path: Path) -> Path | None:
    return next((p for p in [path, *path.parents] if is_run_folder(p)), None)


def check_output(output, inputs=(), flag: str = "--output", folder: bool = False) -> Path:
    """Refuse `output` when it is one of `inputs` (a folder output: when it holds one of them),
    when it exists inside a run folder (it would replace what training wrote there), when it is
    a folder where a file is expected (or a file where a folder is), or when its parent is a
    file. New files inside a run folder are allowed. Returns the output as a Path."""
    out = Path(output)
    target = _resolved(out)
    for given in inputs:
        if given is None or str(given) == "-":
            continue
        src = _resolved(given)
        if target == src or _same(out, Path(given)):
            raise TunelabError(f"{flag} {output} is the input {given}: choose another path (the input would be overwritten)")
        if folder and src.is_relative_to(target):
            raise TunelabError(f"{flag} {output} holds the input {given}: choose a folder that does not contain the input")
    if out.exists():
        if folder != out.is_dir():
            raise TunelabError(f"{flag} {output} is an existing {'file' if out.is_file() else 'folder'}; expected a {'folder' if folder else 'file'}")
        run = _run_above(target)
        if run is not None and (target == run or target.relative_to(run).parts[0] in RUN_OWNED):
            raise TunelabError(f"{flag} {output} would replace what training wrote in the run folder {run}: write it elsewhere")
        if folder and any(is_run_folder(child) for child in out.iterdir() if child.is_dir()):
            raise TunelabError(f"{flag} {output} holds run folders: choose a folder of its own")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise TunelabError(f"{flag} {output}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise TunelabError(f"{flag} {output}: no permission to write in {parent}")
            break
    return out


def check_folder_to_replace(out, protect=(), flag: str = "--out", force: bool = False, marker: str = "tunelab.json") -> Path:
    """A folder output that `--force` may replace: never a protected folder (the run being
    exported), one inside it or one holding it, never a run folder or a parent of runs; an
    existing non-empty folder only with `force`, and only when tunelab wrote it (`marker` at its top)."""
    out = Path(out)
    target = _resolved(out)
    for given in protect:
        src = _resolved(given)
        if target == src or target.is_relative_to(src) or src.is_relative_to(target):
            raise TunelabError(f"{flag} {out} overlaps the run folder {given}: choose a folder outside it")
    check_output(out, flag=flag, folder=True)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise TunelabError(f"{flag} {out} exists and is not empty; pass --force to replace it")
        if not (out / marker).is_file():
            raise TunelabError(f"{flag} {out} was not written by tunelab (no {marker} in it); --force replaces only tunelab's own folders, so empty or remove it yourself")
    return out
