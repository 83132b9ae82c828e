"""The results file: one line per pair, appended and flushed as each pair finishes.

Layout: JSONL (one object per line) or CSV (a header, then one row per line; newlines in
messages become spaces so that every record is one physical line). Each line carries
``pair_id, status, match, confidence, attempts, latency_ms, line, error_type, sub_code,
status_code, message, transaction_id, finished_at`` and the manifest's extra columns.

Guarantees, and how:

* **A crash loses only pairs in flight**: each line is written with one ``write`` and
  flushed to the OS at once, so ``kill -9`` leaves every finished pair on disk (a power cut
  may lose what the OS had not synced yet).
* **A torn last line is tolerated**: on resume, a last line without its newline is cut off;
  its pair had not been recorded and runs again.
* **One final line per pair**: on resume the file is read into an on-disk index (key ->
  offset of its *last* line, status), and finished pairs are skipped. ``--retry-failed``
  appends a new line for a pair that had an ``error`` line; a later line supersedes an
  earlier one, and :meth:`ResultsFile.close` rewrites the file (atomically, via a temporary
  file and ``os.replace``) keeping only each pair's last line. If a run dies before that,
  the next run's close compacts it; readers that take the last line per ``pair_id`` are
  right at any moment.
* **Lines that are not results are set aside**: a garbage line (an editor, a stray
  ``echo >>``) is skipped on resume (its pair, if any, runs again) and removed by the next
  compaction, which appends what it removed to ``<file>.removed`` beside the file.
* **Disk problems are typed**: a results file that cannot be opened, read or written raises
  :class:`ResultsFileError` naming the path and the reason; every line written before it
  is intact.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeAlias

from facematch_async.batch._index import KeyIndex
from facematch_async.batch._manifest import pair_key
from facematch_async.batch._outcome import STATUSES, PairOutcome

__all__ = ["FIELDS", "ResultFormat", "ResultsFile", "ResultsFileError", "outcome_record"]

ResultFormat: TypeAlias = Literal["jsonl", "csv"]
FIELDS = (
    "pair_id",
    "status",
    "match",
    "confidence",
    "attempts",
    "latency_ms",
    "line",
    "error_type",
    "sub_code",
    "status_code",
    "message",
    "transaction_id",
    "finished_at",
)
_DAY = 86400.0
logger = logging.getLogger("facematch_async")
# A name read from a non-UTF-8 file system holds surrogates: written as ``\udce9``, never
# an error that would stop the batch.
_UNENCODABLE = "backslashreplace"


def outcome_record(outcome: PairOutcome) -> dict[str, Any]:
    """The flat record written for ``outcome`` (``extra`` holds the manifest's columns)."""
    result, error = outcome.result, outcome.error
    return {
        # The key: the pair id, or ``@line:N`` for a row without a usable id of its own (a
        # repeated id among them), so that a reader taking the last line per pair_id never
        # mistakes a duplicate row's error for the outcome of the pair it repeats.
        "pair_id": outcome.key or outcome.pair_id,
        "status": outcome.status,
        "match": result.match if result else None,
        "confidence": result.confidence if result else None,
        "attempts": outcome.attempts,
        "latency_ms": round(outcome.latency * 1000, 1) if outcome.latency is not None else None,
        "line": outcome.line,
        "error_type": error.type if error else None,
        "sub_code": error.sub_code if error else (result.sub_code if result else None),
        "status_code": error.status_code if error else None,
        "message": error.message if error else None,
        "transaction_id": error.transaction_id
        if error
        else (result.transaction_id if result else None),
        "finished_at": round(outcome.finished_at, 3),
        "extra": dict(outcome.extra),
    }


_DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO})


class ResultsFileError(OSError):
    """The results file cannot be opened, read or written (a directory, a missing folder,
    no permission, a full disk). The message names the path and the reason; lines already
    written are intact."""

    def __init__(self, path: Path, action: str, exc: OSError) -> None:
        self.message = f"cannot {action} {path}: {exc.strerror or exc}"
        super().__init__(exc.errno, self.message)
        self.path = path

    def __str__(self) -> str:
        return self.message

    @property
    def disk_full(self) -> bool:
        """A full disk, a file-size limit or an I/O error: the path itself is fine."""
        return self.errno in _DISK_FULL


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return str(value).replace("\r", " ").replace("\n", " ")


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class ResultsFile:
    """An append-only results file with a resume index.

    Args:
        path: The results file.
        fmt: ``"jsonl"`` or ``"csv"``; default from the suffix (``.csv``), else JSONL.
        index_dir: Where the index's temporary file goes.

    Attributes:
        recorded: Distinct pairs with a line in the file.
        superseded: Lines a later line for the same pair replaces (dropped on close).
        repaired: Whether a torn last line was cut off on open.
        unreadable: Complete lines that could not be parsed (ignored: their pairs rerun).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fmt: ResultFormat | None = None,
        *,
        index_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.format: ResultFormat = fmt or (
            "csv" if self.path.suffix.lower() == ".csv" else "jsonl"
        )
        self._index = KeyIndex(index_dir)
        self._header: list[str] | None = None
        self._file: io.FileIO | None = None
        self._offset = 0
        self.recorded = 0
        self.superseded = 0
        self.repaired = False
        self.unreadable = 0
        self.recent: deque[float] = deque()

    def open(self, *, resume: bool, seed_limit: int = 0) -> None:
        """Open for appending; with ``resume``, first read what is there.

        Args:
            resume: Read and index the existing lines; without it the file must be absent
                or empty.
            seed_limit: Keep up to this many of the last day's request times (wall clock,
                one per attempt) in :attr:`recent`, to seed a rate limiter.

        Raises:
            FileExistsError: the file has results and ``resume`` is false.
            ResultsFileError: the path cannot take results (a directory, no such folder, no
                permission) or cannot be read or repaired.
            ValueError: the file is not a results file of this format.
        """
        try:
            # Unbuffered: one write per line, and nothing left in a buffer for close() to
            # fail on when the disk is full. Opened first, so that a path that cannot take
            # results (a directory, no such folder, read-only) is refused before any work.
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 (close() closes it)
        except OSError as exc:
            self._index.close()
            raise ResultsFileError(self.path, "open for appending", exc) from None
        exists = self._file.seek(0, os.SEEK_END) > 0
        try:
            if exists and not resume:
                raise FileExistsError(f"{self.path} already holds results")
            if exists:
                self.load(seed_limit, repair=True)
        except BaseException:
            self._file.close()
            self._file = None
            self._index.close()
            raise
        self._offset = self._file.seek(0, os.SEEK_END)

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        """(offset, line) for every complete line, after the CSV header."""
        with open(self.path, "rb") as file:
            offset = 0
            for raw in file:
                start, offset = offset, offset + len(raw)
                if (start == 0 and self.format == "csv") or not raw.endswith(b"\n"):
                    continue  # the header, or a torn last line
                yield start, raw

    def _parse(self, raw: bytes) -> Mapping[str, Any] | None:
        """The record a line holds, or ``None`` for a line that is not a result (garbage,
        or a hand-made line without a pair id and a known status)."""
        try:
            text = raw.decode("utf-8")
            if self.format == "jsonl":
                record = json.loads(text)
            else:
                row = next(csv.reader([text]))
                header = self._header or []
                record = dict(zip(header, row, strict=False)) if len(row) == len(header) else None
        except (ValueError, RecursionError, StopIteration):
            return None
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("pair_id"), str)
            or record.get("status") not in STATUSES
        ):
            return None
        return record

    @staticmethod
    def _key(record: Mapping[str, Any]) -> str:
        sub_code = record.get("sub_code") or None
        return pair_key(str(record.get("pair_id") or ""), _int(record.get("line")), sub_code)

    def load(self, seed_limit: int = 0, *, repair: bool = False) -> None:
        """Index the lines already in the file (``open(resume=True)`` does it).

        Args:
            seed_limit: See :meth:`open`.
            repair: Cut a torn last line off the file (else it is only ignored).
        """
        try:
            self._load(seed_limit, repair)
        except FileNotFoundError:
            return
        except OSError as exc:
            if isinstance(exc, ResultsFileError):
                raise
            raise ResultsFileError(self.path, "read", exc) from None

    def _load(self, seed_limit: int, repair: bool) -> None:
        with open(self.path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - 1))
            if size and file.read(1) != b"\n" and repair:
                self._cut_torn_line()
            file.seek(0)
            if self.format == "csv":
                first = file.readline().decode("utf-8", errors="replace")
                self._header = next(csv.reader([first]), None) if first else None
                if first and not {"pair_id", "status"} <= set(self._header or ()):
                    raise ValueError(f"{self.path} is not a CSV results file (check --format)")
        recent: deque[float] = deque(maxlen=seed_limit or None)
        since = time.time() - _DAY
        for offset, raw in self._lines():
            record = self._parse(raw)
            if record is None:
                self.unreadable += 1
                if self.unreadable > 100 and not self.recorded:
                    raise ValueError(
                        f"{self.path} is not a {self.format} results file (check --format)"
                    )
                continue
            if self._index.put(self._key(record), offset, str(record.get("status"))):
                self.recorded += 1
            else:
                self.superseded += 1
            try:
                finished = float(record.get("finished_at") or 0.0)
            except (TypeError, ValueError):
                continue
            if seed_limit and finished > since:
                recent.extend([finished] * (_int(record.get("attempts")) or 0))
        self.recent = recent
        if self.unreadable and not self.recorded:
            raise ValueError(f"{self.path} is not a {self.format} results file (check --format)")

    def _cut_torn_line(self) -> None:
        """Cut off a last line without its newline (the process died mid-write, or junk
        was appended): its pair reruns, and the bytes are kept in ``<file>.removed``."""
        keep = 0
        with open(self.path, "rb") as file:
            for raw in file:
                if raw.endswith(b"\n"):
                    keep += len(raw)
            file.seek(keep)
            torn = file.read()
        try:
            self._set_aside([torn + b"\n"])
        except ResultsFileError as exc:  # a full disk: the cut frees room; the copy is a nicety
            logger.warning("%s; the torn line is dropped without a copy", exc)
        try:
            os.truncate(self.path, keep)
        except OSError as exc:
            raise ResultsFileError(self.path, "repair the torn last line of", exc) from None
        self.repaired = True

    @property
    def removed_path(self) -> Path:
        """Where lines that are not results go when they are removed: ``<file>.removed``."""
        return self.path.with_name(self.path.name + ".removed")

    def _set_aside(self, lines: list[bytes]) -> None:
        if not lines:
            return
        try:
            with open(self.removed_path, "ab") as out:
                out.writelines(lines)
        except OSError as exc:
            raise ResultsFileError(self.removed_path, "write", exc) from None

    def skip_rule(self, *, resume: bool, retry_failed: bool) -> Callable[[str], bool] | None:
        """The ``skip`` predicate for :meth:`BatchRunner.run`: which pairs a run passes over.

        ``resume`` skips every pair with a line; ``retry_failed`` runs again the pairs whose
        last line is an ``error`` (alone, it runs nothing else); neither skips nothing.
        """
        if not (resume or retry_failed):
            return None

        def skip(key: str) -> bool:
            status = self.status(key)
            if status is None:
                return not resume  # --retry-failed alone touches only failed pairs
            return not (status == "error" and retry_failed)

        return skip

    def status(self, key: str) -> str | None:
        """The status of ``key``'s last line, or ``None`` if it has none."""
        entry = self._index.get(key)
        return None if entry is None else entry[1]

    def write(self, outcome: PairOutcome) -> None:
        """Append ``outcome``'s line and flush it."""
        if self._file is None:
            raise RuntimeError("the results file is not open")
        record = outcome_record(outcome)
        data = self._encode(record)
        offset = self._offset
        try:
            view = memoryview(data)
            while view:  # an unbuffered write may be partial (a signal, a nearly full disk)
                view = view[self._file.write(view) or 0 :]
        except OSError as exc:
            # The line may be torn: the next --resume cuts it off and its pair runs again.
            raise ResultsFileError(self.path, "write to", exc) from None
        self._offset += len(data)
        if self._index.put(outcome.key, offset, outcome.status):
            self.recorded += 1
        else:
            self.superseded += 1

    def _encode(self, record: dict[str, Any]) -> bytes:
        extra = record.pop("extra")
        if self.format == "jsonl":
            if extra:
                record["extra"] = extra
            return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", _UNENCODABLE)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if self._header is None:
            self._header = [*FIELDS, *(name for name in extra if name not in FIELDS)]
            writer.writerow(self._header)
        values = {**extra, **record}
        writer.writerow([_cell(values.get(name)) for name in self._header])
        return buffer.getvalue().encode("utf-8", _UNENCODABLE)

    def close(self, *, compact: bool = True) -> None:
        """Close the file; with ``compact``, drop superseded lines and lines that are not
        results (atomically; the latter are kept in :attr:`removed_path`).

        Raises:
            ResultsFileError: compaction failed (a full disk): the file is left as it was,
                complete and readable, and the next run compacts it.
        """
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            if compact and (self.superseded or self.unreadable):
                self._compact()
        finally:
            self._index.close()

    def _compact(self) -> None:
        temporary = self.path.with_name(self.path.name + ".compacting")
        removed: list[bytes] = []
        try:
            with open(temporary, "wb") as out:
                if self.format == "csv":
                    with open(self.path, "rb") as file:
                        out.write(file.readline())
                for offset, raw in self._lines():
                    record = self._parse(raw)
                    if record is None:
                        removed.append(raw)
                        continue
                    entry = self._index.get(self._key(record))
                    if entry is not None and entry[0] == offset:
                        out.write(raw)
                out.flush()
                os.fsync(out.fileno())
            self._set_aside(removed)
            os.replace(temporary, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            if isinstance(exc, ResultsFileError):
                raise
            raise ResultsFileError(self.path, "compact", exc) from None
        self.superseded = 0
        self.unreadable = 0
