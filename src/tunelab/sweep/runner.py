"""Execute the runs of a sweep (or a cross-validation): resumable, change-aware, optionally parallel.

Every run lives in its folder with `cell.json` (the resolved config and its hash). Before anything
runs, each folder is classified:
    new      no folder yet                       -> run
    partial  same hash, no summary.json          -> run again with resume (continues from its checkpoint)
    done     same hash, summary.json present     -> reused, not run
    changed  a different hash (or no cell.json)  -> error, unless rerun_changed (deleted and run anew)
so results of an old cell definition are never mixed with a new one. Runs then go one after
another (or `parallel` at once), each in a fresh `python -m tunelab.sweep.worker` process whose
output goes to `<run>/train.log`; a failed run is reported and the others go on. A progress line
after each run shows runs and cells done, runs left and the ETA.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.sweep.spec import Run, flatten


@dataclass
class Outcome:
    ran: list[Run] = field(default_factory=list)
    reused: list[Run] = field(default_factory=list)
    failed: list[tuple[Run, str]] = field(default_factory=list)
    seconds: float = 0.0


def status(run: Run) -> str:
    folder = run.home.folder
    if not folder.is_dir() or not any(folder.iterdir()):
        return "new"
    meta = folder / "cell.json"
    if not meta.is_file():
        return "changed"
    try:
        stored = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):
        return "changed"
    if stored.get("hash") != run.hash and changed_keys(stored, run):
        return "changed"
    return "done" if (folder / "summary.json").is_file() else "partial"


def _schema_default(key: str):
    """Default of a dotted config key (a sentinel if it has none or is unknown)."""
    from pydantic import BaseModel

    from tunelab.config import RunConfig

    cls, field = RunConfig, None
    for part in key.split("."):
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return _NO_DEFAULT
        cls = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
    value = field.get_default(call_default_factory=True)
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


_NO_DEFAULT = object()


def changed_keys(stored: dict, run: Run) -> list[str]:
    """Dotted keys whose value differs between a stored cell.json and the run now. A key the
    stored config lacks, whose value now is the schema default, is a field added to tunelab since
    (not a change of the cell); a key no longer in the schema is ignored the same way."""
    old, new = flatten(stored.get("config", {})), flatten(run.config)
    keys = []
    for k in dict.fromkeys([*old, *new]):
        if k == "output_dir" or old.get(k) == new.get(k):
            continue
        if k not in old and new[k] == _schema_default(k):
            continue
        if k not in new and _schema_default(k) is _NO_DEFAULT:
            continue
        keys.append(k)
    if stored.get("fingerprint", {}) != run.fingerprint:
        keys.append("(input data)")
    return keys


def busy_pid(folder: Path) -> int | None:
    """The pid of a worker process still training in `folder` (e.g. left by a killed sweep), if any."""
    try:
        pid = int((folder / "worker.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if pid != os.getpid() and b"tunelab.sweep.worker" in cmdline else None


def describe_change(run: Run) -> str:
    """What differs between the stored definition of a run and the current one (a few keys)."""
    meta = run.home.folder / "cell.json"
    if not meta.is_file():
        return "no cell.json (not a run made by a sweep)"
    stored = json.loads(meta.read_text(encoding="utf-8"))
    old, new = flatten(stored.get("config", {})), flatten(run.config)
    keys = changed_keys(stored, run)
    parts = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:3] if k != "(input data)"]
    if "(input data)" in keys:
        parts.append("its input data changed")
    return ", ".join(parts) or "definition changed"


def write_cell_json(run: Run) -> None:
    from tunelab.data.io_atomic import write_text_atomic

    cell = run.cell
    body = {
        "cell": cell.slug, "group": cell.group, "dataset": cell.dataset, "variant": cell.variant,
        "question": cell.question, "seed": run.seed, "overrides": cell.overrides, "base": str(cell.base),
        "hash": run.hash, "fingerprint": run.fingerprint, "config": run.config,
    }
    run.folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run.folder / "cell.json", json.dumps(body, indent=1, ensure_ascii=False, default=str))


def check_changes(runs: list[Run], rerun_changed: bool, what: str = "sweep") -> None:
    """Raise (or, with rerun_changed, delete the folders) for runs whose definition changed."""
    changed = [r for r in _homes(runs) if status(r) == "changed"]
    if not changed:
        return
    if rerun_changed:
        for r in changed:
            shutil.rmtree(r.folder)
        return
    listed = "\n  ".join(f"{r.label} ({r.folder}): {describe_change(r)}" for r in changed[:5])
    more = f"\n  (and {len(changed) - 5} more)" if len(changed) > 5 else ""
    raise TunelabError(
        f"{len(changed)} run folder(s) of this {what} were made with a different definition; their results "
        f"would be mixed with the new one:\n  {listed}{more}\n"
        f"Use a new output folder, or pass --rerun-changed to delete these runs and run them again."
    )


def _homes(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.alias_of is None]


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def estimate_seconds_left(left: list[Run], seconds_by_cell: dict[str, list[float]], parallel: int) -> float | None:
    """Wall seconds the runs in `left` still need, `parallel` at a time; None before any run ended.

    A run is expected to take the mean time of its own cell's finished runs, or, for a cell with
    none finished yet, the median over all finished runs: cells differ a lot in cost (all layers
    against the head alone), and a plain overall mean let the slow cells that run first inflate
    the estimate for every cell after them.
    """
    if not left:
        return 0.0
    every = [t for ts in seconds_by_cell.values() for t in ts]
    if not every:
        return None
    median = statistics.median(every)
    own = {slug: statistics.fmean(ts) for slug, ts in seconds_by_cell.items() if ts}
    return sum(own.get(r.cell.slug, median) for r in left) / parallel


def _log_tail(folder: Path, n: int = 3) -> str:
    log = folder / "train.log"
    if not log.is_file():
        return "(no train.log)"
    lines = [l for l in log.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
    return " | ".join(lines[-n:])


def _stop_on_sigterm():
    """Make SIGTERM (kill, a scheduler's stop) end the runner like Ctrl-C: its workers are
    stopped too, instead of training on as orphans. A background job started from a script
    ignores SIGINT, so SIGTERM is how such a sweep is stopped. Returns the previous handler."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        return None


def execute(runs: list[Run], *, parallel: int = 1, threads: int | None = None, keep: str = "metrics",
            rerun_changed: bool = False, isolate: bool = True, what: str = "sweep", log=print) -> Outcome:
    """Run every run not yet done; return what ran, what was reused and what failed."""
    if parallel < 1:
        raise TunelabError("--parallel must be at least 1")
    if not isolate and parallel > 1:
        raise TunelabError("parallel runs need separate processes (isolate=True)")
    check_changes(runs, rerun_changed, what)
    homes = _homes(runs)
    busy = [(r, pid) for r in homes if (pid := busy_pid(r.folder))]
    if busy:
        listed = ", ".join(f"{r.label} (pid {pid})" for r, pid in busy[:3])
        raise TunelabError(f"{len(busy)} run(s) are being trained by another process right now: {listed}; "
                           "wait for them or stop those processes before running this again")
    states = {id(r): status(r) for r in homes}
    todo = [r for r in homes if states[id(r)] != "done"]
    out = Outcome(reused=[r for r in homes if states[id(r)] == "done"])
    cells = {}
    for r in runs:
        cells.setdefault(r.cell.slug, []).append(r)
    if threads is None and isolate:
        threads = max(1, (os.cpu_count() or 1) // parallel)
    log(f"[{what}] {len(runs)} runs ({len(homes)} distinct) in {len(cells)} cells: {len(out.reused)} done, "
        f"{sum(states[id(r)] == 'partial' for r in homes)} to resume, {sum(states[id(r)] == 'new' for r in homes)} new"
        + (f"; {parallel} at a time" if parallel > 1 else "") + (f", {threads} threads each" if isolate else ""))

    started = time.perf_counter()
    seconds_by_cell: dict[str, list[float]] = {}

    def progress(run: Run, seconds: float, ok: bool, note: str) -> None:
        finished = {id(r) for r in out.reused + out.ran}
        done_cells = sum(all(id(r.home) in finished for r in rs) for rs in cells.values())
        ended = {id(r) for r in out.ran} | {id(r) for r, _ in out.failed}
        left_runs = [r for r in todo if id(r) not in ended]
        left = len(left_runs)
        left_seconds = estimate_seconds_left(left_runs, seconds_by_cell, parallel)
        eta = "?" if left_seconds is None else _fmt_seconds(left_seconds)
        log(f"[{what}] runs {len(finished)}/{len(homes)} done, cells {done_cells}/{len(cells)}, {left} left, ETA {eta} | "
            f"{run.label} {'finished' if ok else 'FAILED'} in {_fmt_seconds(seconds)}{note}")

    def finish(run: Run, seconds: float, error: str | None) -> None:
        summary_path = run.folder / "summary.json"
        if error is None and summary_path.is_file():
            seconds_by_cell.setdefault(run.cell.slug, []).append(seconds)
            out.ran.append(run)
            test = (json.loads(summary_path.read_text()).get("test") or {})
            note = f": test accuracy {test['accuracy']:.4f}" if "accuracy" in test else ""
            progress(run, seconds, True, note)
        else:
            msg = error or _log_tail(run.folder)
            out.failed.append((run, msg))
            progress(run, seconds, False, f": {msg}")

    if not isolate:
        from tunelab.sweep.worker import run_folder

        for run in todo:
            if states[id(run)] == "new":
                write_cell_json(run)
            log(f"[{what}] {'resuming' if states[id(run)] == 'partial' else 'starting'} {run.label}")
            t0 = time.perf_counter()
            try:
                run_folder(run.folder, threads, keep, log=lambda *a: None)
                finish(run, time.perf_counter() - t0, None)
            except Exception as err:  # a crashed run must not end the sweep
                finish(run, time.perf_counter() - t0, f"{type(err).__name__}: {err}")
    else:
        # The loop's progress bar goes to train.log: redraw it rarely there.
        env = {**os.environ, "TQDM_MININTERVAL": "30", "PYTHONUNBUFFERED": "1"}
        pending = list(todo)
        active: dict = {}  # Popen -> (run, start time, log file)
        previous = _stop_on_sigterm()
        try:
            while pending or active:
                while pending and len(active) < parallel:
                    run = pending.pop(0)
                    if states[id(run)] == "new":
                        write_cell_json(run)
                    logf = open(run.folder / "train.log", "a", encoding="utf-8")
                    logf.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {states[id(run)]} run: {run.label}\n")
                    logf.flush()
                    log(f"[{what}] {'resuming' if states[id(run)] == 'partial' else 'starting'} {run.label} (log: {run.folder / 'train.log'})")
                    cmd = [sys.executable, "-m", "tunelab.sweep.worker", str(run.folder), "--keep", keep, "--threads", str(threads)]
                    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
                    active[proc] = (run, time.perf_counter(), logf)
                time.sleep(0.2)
                for proc in [p for p in active if p.poll() is not None]:
                    run, t0, logf = active.pop(proc)
                    logf.close()
                    rc = proc.returncode
                    finish(run, time.perf_counter() - t0, None if rc == 0 else f"exit code {rc}: {_log_tail(run.folder)}")
        except BaseException as err:
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                log(f"[{what}] stopped; {len(active)} run(s) in progress stopped with it. "
                    "Run the same command again to resume (finished runs are kept).")
            for proc, (_, _, logf) in active.items():
                proc.terminate()
            for proc, (_, _, logf) in active.items():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                logf.close()
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    out.seconds = time.perf_counter() - started
    return out
