"""Progress for long work that suits where the output goes: a tqdm bar on a terminal, plain lines
in a file.

    bar = progress_bar(total=600, desc="train", unit="step")
    for ...:
        bar.update(1)
        bar.set_postfix(loss="0.4123", lr="2.00e-05")
        bar.write("step 100: val_loss 0.3012")   # a message on its own line, above the bar
    bar.close()

A tqdm bar rewrites its line several times a step; in a file (`make demo > log 2>&1`, a sweep
worker's log, CI) every version is kept, thousands of partial lines. So when stderr is not a
terminal (nor a Jupyter kernel, where tqdm draws a widget) `progress_bar` returns a `LineProgress`
instead, with the same small interface (update, set_postfix, write, close), which prints one
whole line when another `every_percent` of the total is done or `every_seconds` have passed since
its last line, and at the end:

    train 120/600 steps (20%) loss 0.4123 lr 2.00e-05 3.1 step/s eta 2m35s

That is at most one line per update, and about 100 / every_percent + minutes / (every_seconds / 60)
lines in all. Base of every package that shows progress (train, data, synth); imports nothing of
tunelab.
"""

from __future__ import annotations

import math
import sys
import time

EVERY_PERCENT = 5.0  # a line each time another 5 % of the total is done ...
EVERY_SECONDS = 60.0  # ... or a minute has passed since the last line, whichever comes first


def progress_bar(total: int | None, desc: str = "", unit: str = "it", initial: int = 0, disable: bool = False, file=None):
    """tqdm's bar on a terminal (or in a notebook), else a `LineProgress`; output to `file`
    (default: sys.stderr at the time of the call). Both take update(n), set_postfix(**values),
    write(message) and close()."""
    file = sys.stderr if file is None else file
    if _interactive(file):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, file=file)
    return LineProgress(total, desc, unit, initial=initial, disable=disable, file=file)


def _interactive(file) -> bool:
    """A terminal, or an IPython kernel (Jupyter), where tqdm.auto draws a widget that does not grow."""
    isatty = getattr(file, "isatty", None)
    if isatty is not None and isatty():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class LineProgress:
    """Progress as whole lines, for output that is not a terminal (see the module docstring).

    A line falls due in `update`, and is printed at the following `set_postfix` (so it carries the
    values of the step just done, as the loop sets them right after updating), or else at the next
    `update` or at `close`. `clock` is injectable for tests.
    """

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", initial: int = 0, disable: bool = False, file=None,
                 every_percent: float = EVERY_PERCENT, every_seconds: float = EVERY_SECONDS, clock=time.monotonic):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.disable, self.file = disable, sys.stderr if file is None else file
        self.every_percent, self.every_seconds, self.clock = every_percent, every_seconds, clock
        self.postfix: dict = {}
        self._first, self._started = initial, clock()
        self._last_n, self._last_time = initial, self._started  # of the last line printed
        self._due = False

    def update(self, n: int = 1) -> None:
        if self._due:
            self._print()
        self.n += n
        now = self.clock()
        self._due = not self.disable and (self._finished() or now - self._last_time >= self.every_seconds or self._next_share())

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        self.postfix = {**(ordered_dict or {}), **values}
        if self._due:
            self._print()

    def write(self, message: str, file=None, end: str = "\n") -> None:
        """A message on its own line (to stdout, as tqdm.write does); printed even when disabled."""
        print(message, file=file or sys.stdout, end=end, flush=True)

    def close(self) -> None:
        if not self.disable and (self._due or self.n != self._last_n):
            self._print()

    def _finished(self) -> bool:
        return bool(self.total) and self.n >= self.total

    def _next_share(self) -> bool:
        """Whether the count crossed another multiple of every_percent since the last line."""
        if not self.total:
            return False
        step = self.total * self.every_percent / 100
        return math.floor(self.n / step) > math.floor(self._last_n / step)

    def _print(self) -> None:
        now = self.clock()
        print(self.line(now), file=self.file, flush=True)
        self._last_n, self._last_time, self._due = self.n, now, False

    def line(self, now: float) -> str:
        """`train 120/600 steps (20%) loss 0.4123 3.1 step/s eta 2m35s` (at the end: `in 3m10s`)."""
        elapsed = now - self._started
        done = self.n - self._first
        parts = [self.desc] if self.desc else []
        parts.append(f"{self.n}/{self.total} {self.unit}s ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n} {self.unit}s")
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.1f} {self.unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{self.unit}")
            if self.total and self.n < self.total:
                parts.append(f"eta {duration((self.total - self.n) / rate)}")
        if self._finished() or not self.total:
            parts.append(f"in {duration(elapsed)}")
        return " ".join(parts)


def duration(seconds: float) -> str:
    """A short human duration.

    >>> duration(7), duration(155), duration(3725)
    ('7s', '2m35s', '1h02m')
    """
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
