"""The reliability table of docs/benchmarks.md: every case of the malformed-input corpus
(tests/test_malformed_inputs.py) through the real command line, counted by command.

    .venv/bin/python bench/reliability.py

For each case: did it exit non-zero with a message naming the file, flag or key and no traceback
("clear"), and did any file under the case's folder change or appear half-written ("partial")?
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_malformed_inputs import CASES, build_world, checksums

from tunelab.cli import main


def run_case(world: Path, argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except Exception as exc:  # an older tunelab let it through: a traceback for the user
            return 1, f"Traceback (uncaught {type(exc).__name__}: {exc})"
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


def main_table() -> None:
    world = build_world(Path(tempfile.mkdtemp()))
    table: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for case, argv, expected in CASES:
        args = argv(world)
        before = checksums(world)
        code, err = run_case(world, args)
        after = checksums(world)
        command = case.split(":")[0]
        clear = code != 0 and expected in err and "Traceback" not in err and "internal error" not in err
        partial = any(after.get(p) != h for p, h in before.items()) or any(".tmp" in p for p in set(after) - set(before))
        row = table[command]
        row[0] += 1
        row[1] += clear
        row[2] += partial
        if not clear or partial:
            print(f"NOT CLEAR or PARTIAL: {case}: exit {code}: {err.strip()[:200]}")
    print("| command | cases | clear error | left a changed or partial file |")
    print("|---|---|---|---|")
    for command, (n, clear, partial) in table.items():
        print(f"| {command} | {n} | {clear} | {partial} |")
    total = [sum(v[i] for v in table.values()) for i in range(3)]
    print(f"| all | {total[0]} | {total[1]} | {total[2]} |")


if __name__ == "__main__":
    main_table()
