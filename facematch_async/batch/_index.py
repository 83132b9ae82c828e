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
from collections.abc import Iterable

__all__ = ["IndexStorageError", "KeyIndex", "key_hash"]


class IndexStorageError(OSError):
    """The index's file cannot be created or written (a full or read-only temp folder).

    Attributes:
        directory: The folder the index lives in.
    """

    def __init__(self, directory: str, reason: str) -> None:
        super().__init__(
            f"the on-disk pair index in {directory} cannot be written ({reason}): free space "
            "there, or choose another folder (--index-dir, or the TMPDIR variable)"
        )
        self.directory = directory


def key_hash(key: str) -> int:
    """A stable signed 64-bit hash of ``key`` (SQLite integers are signed)."""
    # surrogatepass: a name read from a non-UTF-8 file system still hashes (as itself).
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _first(row: tuple[int, int | None, str | None]) -> int:
    return row[0]


class KeyIndex:
    """Keys mapped to ``(number, text)``, kept in a temporary SQLite file deleted on close.

    One thread at a time: a long read may fill it in a worker thread, and the event loop
    use it afterwards.

    Args:
        directory: Where to put the file (default: the system temp folder).
        cache_kib: The SQLite page cache, which bounds this index's memory.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, cache_kib: int = 512):
        self.directory = os.fspath(directory) if directory is not None else tempfile.gettempdir()
        self._closed = True  # until the file exists: close() then has nothing to delete
        try:
            handle, self._path = tempfile.mkstemp(
                prefix="facematch-index-", suffix=".sqlite", dir=self.directory
            )
        except OSError as exc:
            raise IndexStorageError(self.directory, exc.strerror or str(exc)) from None
        os.close(handle)
        self._closed = False
        try:
            # Disposable data: no journal, no fsync; the file is rebuilt on every run.
            self._db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=OFF")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
            self._db.execute("CREATE TABLE keys (h INTEGER PRIMARY KEY, n INTEGER, t TEXT)")
            self._db.execute("BEGIN")
        except sqlite3.Error as exc:
            self.close()
            raise IndexStorageError(self.directory, str(exc)) from None
        self._size: int | None = 0

    @property
    def size(self) -> int:
        """Keys in the index."""
        if self._size is None:  # after put_many: counted once, when asked
            self._size = int(self._execute("SELECT count(*) FROM keys", ()).fetchone()[0])
        return self._size

    def _execute(self, sql: str, row: tuple[object, ...]) -> sqlite3.Cursor:
        # SQLite says "database or disk is full" with no path: name the folder for a person.
        try:
            return self._db.execute(sql, row)
        except sqlite3.Error as exc:
            raise IndexStorageError(self.directory, str(exc)) from None

    def add(self, key: str, number: int | None = None, text: str | None = None) -> bool:
        """Insert ``key`` unless present; returns whether it was new."""
        cursor = self._execute(
            "INSERT OR IGNORE INTO keys VALUES (?, ?, ?)", (key_hash(key), number, text)
        )
        added = cursor.rowcount == 1
        if added and self._size is not None:
            self._size += 1
        return added

    def put(self, key: str, number: int | None = None, text: str | None = None) -> bool:
        """Insert or overwrite ``key``; returns whether it was new."""
        row = (key_hash(key), number, text)
        if self._execute("INSERT OR IGNORE INTO keys VALUES (?, ?, ?)", row).rowcount == 1:
            if self._size is not None:
                self._size += 1
            return True
        self._execute("UPDATE keys SET n = ?, t = ? WHERE h = ?", (number, text, row[0]))
        return False

    def put_many(self, rows: Iterable[tuple[str, int | None, str | None]]) -> None:
        """Insert or overwrite many keys at once (a later row for a key wins): what a long
        read does, several times faster than :meth:`put` one by one."""
        # In hash order (a stable sort: a later row for a key still wins): neighbouring
        # rows land on the same pages.
        hashed = sorted(((key_hash(key), number, text) for key, number, text in rows), key=_first)
        try:
            self._db.executemany(
                "INSERT INTO keys VALUES (?, ?, ?) "
                "ON CONFLICT(h) DO UPDATE SET n = excluded.n, t = excluded.t",
                hashed,
            )
        except sqlite3.Error as exc:
            raise IndexStorageError(self.directory, str(exc)) from None
        self._size = None

    def get_many(self, keys: list[str]) -> list[tuple[int | None, str | None] | None]:
        """:meth:`get` for each of ``keys``, in one query per few hundred."""
        hashes = [key_hash(key) for key in keys]
        found: dict[int, tuple[int | None, str | None]] = {}
        for start in range(0, len(hashes), 500):
            chunk = hashes[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT h, n, t FROM keys WHERE h IN ({marks})"  # noqa: S608 (only ?s)
            try:
                rows = self._db.execute(query, chunk).fetchall()
            except sqlite3.Error as exc:
                raise IndexStorageError(self.directory, str(exc)) from None
            found.update((h, (n, t)) for h, n, t in rows)
        return [found.get(h) for h in hashes]

    def get(self, key: str) -> tuple[int | None, str | None] | None:
        """The ``(number, text)`` stored for ``key``, or ``None``."""
        row = self._execute("SELECT n, t FROM keys WHERE h = ?", (key_hash(key),)).fetchone()
        return None if row is None else (row[0], row[1])

    def count_by_text(self) -> dict[str | None, int]:
        """Keys per text (one scan of the index: for totals, not for every key)."""
        rows = self._execute("SELECT t, count(*) FROM keys GROUP BY t", ()).fetchall()
        return {text: int(count) for text, count in rows}

    def close(self) -> None:
        """Drop the index and delete its file. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(AttributeError, sqlite3.Error):
            self._db.close()
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(self._path + suffix)
