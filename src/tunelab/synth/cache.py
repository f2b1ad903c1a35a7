"""A cache of teacher replies in SQLite, keyed by content, so an interrupted run resumes for free.

    cache = ReplyCache("data/qa.synth-cache.sqlite")
    key = cache_key(teacher.id, cfg.prompt_version, messages, teacher.params)
    reply = cache.get(key)            # None on a miss
    cache.put(key, reply, teacher=teacher.id, prompt_version=cfg.prompt_version)

The key is the SHA-256 of (teacher id, prompt version, the full messages, generation settings),
so a changed prompt, chunk, few-shot example or temperature is a miss, never a stale reply.
Every reply is committed as soon as it arrives (WAL journal), so a run killed half way keeps
what it paid for; the file lives next to the output and can be deleted to start afresh.
Safe to use from the request threads of the endpoint teacher.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

from tunelab.errors import TunelabError


def cache_key(teacher_id: str, prompt_version: str, messages: list[dict], params: dict) -> str:
    """Hex SHA-256 of everything that decides the reply.

    >>> len(cache_key("local:tiny", "v1", [{"role": "user", "content": "hi"}], {"temperature": 0}))
    64
    """
    blob = json.dumps([teacher_id, prompt_version, messages, params], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ReplyCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, teacher TEXT, "
                             "prompt_version TEXT, reply TEXT NOT NULL, created REAL)")  # fmt: skip
        except sqlite3.DatabaseError as err:
            raise TunelabError(f"{self.path}: cannot open the synth cache ({err}); delete it to start afresh") from None

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, reply: str, teacher: str = "", prompt_version: str = "") -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?)",
                             (key, teacher, prompt_version, reply, time.time()))  # fmt: skip

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
