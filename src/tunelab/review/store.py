"""Review decisions and edits, kept in SQLite next to the data (FILE.review.sqlite).

    store = ReviewStore("qa.jsonl")
    item = store.item(3)                                    # 1-based position in the file
    item = store.save(3, item.version, status="accepted", edits={"answer": "15일"})
    store.save(3, 0, status="rejected")                     # stale version -> Conflict (HTTP 409)
    store.export("accepted.jsonl")                          # accepted rows, edits applied, file order

    store = ReviewStore("answers.jsonl", grade_scale=(1, 5))  # grading mode (`--grade 1-5`)
    store.save(2, item.version, grade=4)                    # a person's score on the rubric's scale
    store.grades()                                          # {2: 4}: what `tunelab judge --human` reads

The JSONL file is only read, never written. An item is known in the database by the hash of its
line (plus which occurrence of that line it is), not by its position, so rows added to or
removed from the file later do not move decisions onto the wrong rows.

Every item has a version (0 before the first decision). A save names the version it started
from; if the item has moved on since (another tab, another reviewer), the save is refused with
`Conflict` carrying the current state, so nobody overwrites anybody silently. Writes run in an
IMMEDIATE transaction, so this holds across threads and across processes.

Grades (the grading mode, for measuring an LLM judge against people) live in the same database,
in a `grades` table keyed like the decisions; a grade is saved like any decision (it needs the
current version and bumps it) and leaves the status alone.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.io_atomic import write_jsonl_atomic
from tunelab.errors import TunelabError

STATUSES = ("pending", "accepted", "rejected")
# fields a reviewer may edit, in the order the page shows them (those present in the row)
EDITABLE = ("question", "answer", "context", "instruction", "input", "output", "prompt", "completion", "text")


# a decision with its grade; a grade is only ever written together with a decision row
_COLUMNS = "d.status, d.edits, d.version, d.updated, g.score FROM decisions d LEFT JOIN grades g ON g.key = d.key"


class Conflict(Exception):
    """A save started from an old version; `current` is the item as it is now."""

    def __init__(self, current: Item):
        super().__init__(f"item {current.id} is at version {current.version}")
        self.current = current


@dataclass
class Item:
    id: int  # 1-based position among the rows of the file
    key: str
    row: dict  # as in the file
    status: str = "pending"
    edits: dict = field(default_factory=dict)
    version: int = 0
    updated: float | None = None
    grade: int | None = None  # grading mode: a person's score on the rubric's scale

    @property
    def current(self) -> dict:
        """The row with the edits applied (what export writes)."""
        return {**self.row, **self.edits}

    @property
    def editable(self) -> list[str]:
        return [k for k in EDITABLE if isinstance(self.row.get(k), str)]

    def to_json(self) -> dict:
        return {"id": self.id, "status": self.status, "version": self.version, "edits": self.edits,
                "row": self.row, "current": self.current, "editable": self.editable,
                "source": str(self.row.get("source", "")), "updated": self.updated, "grade": self.grade}  # fmt: skip

    def summary(self) -> dict:
        cur = self.current
        head = next((cur[k] for k in EDITABLE if isinstance(cur.get(k), str)), json.dumps(cur, ensure_ascii=False))
        answer = cur.get("answer", cur.get("output", cur.get("completion", "")))
        return {"id": self.id, "status": self.status, "version": self.version, "edited": bool(self.edits),
                "source": str(self.row.get("source", "")), "title": head[:200],
                "answer": str(answer)[:120] if answer is not None else "", "grade": self.grade}  # fmt: skip


def db_path_for(data_path: str | Path) -> Path:
    """FILE.jsonl -> FILE.review.sqlite, next to it."""
    p = Path(data_path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.with_name(f"{stem}.review.sqlite")


def read_rows(path: Path) -> list[tuple[str, dict]]:
    """(key, row) for each JSON object line; errors name the file and line."""
    if not path.is_file():
        raise TunelabError(f"{path}: no such file")
    out: list[tuple[str, dict]] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise TunelabError(f"{path}:{lineno}: not valid JSON ({err})") from None
            if not isinstance(row, dict):
                raise TunelabError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            digest = hashlib.sha256(json.dumps(row, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:24]
            n = seen[digest] = seen.get(digest, -1) + 1
            out.append((f"{digest}#{n}", row))
    return out


class ReviewStore:
    def __init__(self, data_path: str | Path, db_path: str | Path | None = None, create: bool = True,
                 grade_scale: tuple[int, int] | None = None):
        self.data_path = Path(data_path)
        self.grade_scale = grade_scale
        self.db_path = Path(db_path) if db_path else db_path_for(self.data_path)
        if self.db_path.resolve() == self.data_path.resolve():
            raise TunelabError(f"{self.db_path}: the review database cannot be the data file")
        if not create and not self.db_path.is_file():
            raise TunelabError(f"{self.db_path}: no review of {self.data_path} yet (run `tunelab data review {self.data_path}`)")
        self._rows = read_rows(self.data_path)
        self._index = {key: i for i, (key, _) in enumerate(self._rows)}
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.db_path), check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS decisions (key TEXT PRIMARY KEY, status TEXT NOT NULL, "
                             "edits TEXT NOT NULL, version INTEGER NOT NULL, updated REAL)")  # fmt: skip
            self._db.execute("CREATE TABLE IF NOT EXISTS grades (key TEXT PRIMARY KEY, score INTEGER NOT NULL, updated REAL)")
        except sqlite3.DatabaseError as err:
            raise TunelabError(f"{self.db_path}: not a review database ({err})") from None

    def __len__(self) -> int:
        return len(self._rows)

    def _decisions(self) -> dict[str, tuple]:
        with self._lock:
            return {r[0]: r[1:] for r in self._db.execute("SELECT d.key, " + _COLUMNS)}

    def _make(self, i: int, decision: tuple | None) -> Item:
        key, row = self._rows[i]
        if decision is None:
            return Item(i + 1, key, row)
        status, edits, version, updated, grade = decision
        return Item(i + 1, key, row, status, json.loads(edits), version, updated, grade)

    def item(self, item_id: int) -> Item:
        if not 1 <= item_id <= len(self._rows):
            raise KeyError(item_id)
        key = self._rows[item_id - 1][0]
        with self._lock:
            d = self._db.execute("SELECT " + _COLUMNS + " WHERE d.key = ?", (key,)).fetchone()
        return self._make(item_id - 1, d)

    def items(self, status: str | None = None, source: str | None = None) -> list[Item]:
        """Items in file order, optionally only one status and/or one source."""
        decisions = self._decisions()
        out = [self._make(i, decisions.get(key)) for i, (key, _) in enumerate(self._rows)]
        return [it for it in out if (not status or it.status == status)
                and (source is None or str(it.row.get("source", "")) == source)]  # fmt: skip

    def counts(self) -> dict:
        items = self.items()
        c = {s: 0 for s in STATUSES}
        for it in items:
            c[it.status] += 1
        return {"total": len(items), **c, "edited": sum(bool(it.edits) for it in items)}

    def sources(self) -> list[str]:
        return sorted({str(row.get("source", "")) for _, row in self._rows})

    def orphans(self) -> int:
        """Decisions whose row is no longer in the file (kept, in case it comes back)."""
        return sum(key not in self._index for key in self._decisions())

    def save(self, item_id: int, version: int, status: str | None = None, edits: dict | None = None,
             grade: int | None = None) -> Item:
        """Set the status, merge edits and/or set the grade, if the item is still at `version`;
        returns the new state. Raises Conflict (stale version), ValueError (bad status, field or
        grade), KeyError."""
        item = self.item(item_id)
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        if grade is not None:
            if self.grade_scale is None:
                raise ValueError("grading is off: start the review with --grade LOW-HIGH (e.g. --grade 1-5)")
            lo, hi = self.grade_scale
            if isinstance(grade, bool) or not isinstance(grade, int) or not lo <= grade <= hi:
                raise ValueError(f"grade must be an integer from {lo} to {hi}, got {grade!r}")
        for k, v in (edits or {}).items():
            if k not in item.editable:
                raise ValueError(f"field {k!r} cannot be edited here; editable: {', '.join(item.editable)}")
            if not isinstance(v, str):
                raise ValueError(f"field {k!r} must be text")
        sql = "SELECT " + _COLUMNS + " WHERE d.key = ?"
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # from here until COMMIT no other writer, in any process
            try:
                now = self._make(item_id - 1, self._db.execute(sql, (item.key,)).fetchone())
                if now.version != version:
                    raise Conflict(now)
                merged = {**now.edits, **(edits or {})}
                merged = {k: v for k, v in merged.items() if v != now.row.get(k)}  # back to the original: no edit
                self._db.execute("INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?)",
                                 (item.key, status or now.status, json.dumps(merged, ensure_ascii=False),
                                  now.version + 1, time.time()))  # fmt: skip
                if grade is not None:
                    self._db.execute("INSERT OR REPLACE INTO grades VALUES (?, ?, ?)", (item.key, grade, time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.item(item_id)

    def grades(self) -> dict[int, int]:
        """{item id: grade} for the graded rows of the file (what `tunelab judge --human` reads)."""
        return {it.id: it.grade for it in self.items() if it.grade is not None}

    def export(self, output: str | Path) -> dict:
        """Write the accepted rows (edits applied) in file order; returns counts."""
        output = Path(output)
        if output.resolve() == self.data_path.resolve():
            raise TunelabError(f"{output}: the export would overwrite the reviewed file; choose another path")
        accepted = self.items(status="accepted")
        write_jsonl_atomic(output, (it.current for it in accepted))
        return {"accepted": len(accepted), "edited": sum(bool(it.edits) for it in accepted), **self.counts()}

    def close(self) -> None:
        with self._lock:
            self._db.close()
