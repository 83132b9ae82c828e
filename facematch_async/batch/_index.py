"""A compact on-disk map from pair keys to small values, for duplicates and ``--resume``.

A million pair ids in a Python set cost ~100 MB. Here each key becomes an 8-byte BLAKE2b
hash, the primary key of a throwaway SQLite table with a bounded page cache, so memory stays
flat however many pairs there are. Two different ids share a hash with probability ~3e-8 in
a million-pair run; the cost of such a collision is one pair reported as a duplicate or
skipped on resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import tempfile

__all__ = ["KeyIndex", "key_hash"]


def key_hash(key: str) -> int:
    """A stable signed 64-bit hash of ``key`` (SQLite integers are signed)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class KeyIndex:
    """Keys mapped to ``(number, text)``, kept in a temporary SQLite file deleted on close.

    Args:
        directory: Where to put the file (default: the system temp folder).
        cache_kib: The SQLite page cache, which bounds this index's memory.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, cache_kib: int = 512):
        handle, self._path = tempfile.mkstemp(
            prefix="facematch-index-", suffix=".sqlite", dir=directory
        )
        os.close(handle)
        # Disposable data: no journal, no fsync; the file is rebuilt on every run.
        self._db = sqlite3.connect(self._path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        self._db.execute("CREATE TABLE keys (h INTEGER PRIMARY KEY, n INTEGER, t TEXT)")
        self._db.execute("BEGIN")
        self.size = 0
        self._closed = False

    def add(self, key: str, number: int | None = None, text: str | None = None) -> bool:
        """Insert ``key`` unless present; returns whether it was new."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO keys VALUES (?, ?, ?)", (key_hash(key), number, text)
        )
        added = cursor.rowcount == 1
        self.size += added
        return added

    def put(self, key: str, number: int | None = None, text: str | None = None) -> bool:
        """Insert or overwrite ``key``; returns whether it was new."""
        row = (key_hash(key), number, text)
        if self._db.execute("INSERT OR IGNORE INTO keys VALUES (?, ?, ?)", row).rowcount == 1:
            self.size += 1
            return True
        self._db.execute("UPDATE keys SET n = ?, t = ? WHERE h = ?", (number, text, row[0]))
        return False

    def get(self, key: str) -> tuple[int | None, str | None] | None:
        """The ``(number, text)`` stored for ``key``, or ``None``."""
        row = self._db.execute("SELECT n, t FROM keys WHERE h = ?", (key_hash(key),)).fetchone()
        return None if row is None else (row[0], row[1])

    def close(self) -> None:
        """Drop the index and delete its file. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._db.close()
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path + suffix)
