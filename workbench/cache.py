"""On-disk key → bytes store shared by LLM calls and embeddings.

SQLite in WAL mode with a busy timeout: safe for several threads (one lock per store) and
several processes. Keys are hashes the callers compute from everything that changes a value.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path


class Cache:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives the process dying (kill -9), not a power cut; it skips
        # an fsync per commit, which is most of a small write's cost
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, t REAL)")

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = f"SELECT key, value FROM kv WHERE key IN ({','.join('?' * len(chunk))})"
                out.update(self._db.execute(q, chunk))
        return out

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        now = time.time()
        with self._lock:
            # one transaction for the batch (in autocommit mode each row would be its own)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", [(k, v, now) for k, v in items])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM kv").fetchone()[0]
