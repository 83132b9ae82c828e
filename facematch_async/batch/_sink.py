"""The results file: one line per pair, appended and flushed as each pair finishes.

The line itself (fields, format version, JSONL and CSV encodings, its JSON Schema) is
described in :mod:`facematch_async.batch._records`.

Guarantees, and how:

* **One writer**: :meth:`ResultsFile.open` takes an exclusive lock on the file
  (:class:`~facematch_async.batch._lock.ResultsFileLock`) and keeps it until
  :meth:`ResultsFile.close` has compacted the file; a second writer, in this process or
  another, fails at once with :class:`ResultsFileLockedError` naming the holder. A killed
  holder leaves nothing that blocks.
* **A crash loses only pairs in flight**: each line is written with one ``write`` and
  flushed to the OS at once, so ``kill -9`` leaves every finished pair on disk (a power cut
  may lose what the OS had not synced yet).
* **A torn last line is tolerated**: on resume, a last line (or CSV record) without its end
  is cut off; its pair had not been recorded and runs again.
* **One final line per pair**: on resume the file is read into an on-disk index (key ->
  offset of its *last* line, and what that line says). A later line supersedes an earlier
  one, and :meth:`ResultsFile.close` rewrites the file (atomically, via a temporary file
  and ``os.replace``, under the lock) keeping only each pair's last line. If a run dies
  before that, the next run's close compacts it; readers that take the last line per
  ``pair_id`` are right at any moment.
* **Transient errors are not decisions**: a line whose error was transient (no
  connection, a timeout, a 5xx, a 429 after the retries; ``"retryable": true``) leaves its
  pair to run again on a plain resume; other errors wait for ``retry_failed``.
* **A long resume stays responsive**: :meth:`ResultsFile.open_async` reads the file in a
  worker thread, reports progress, and stops within milliseconds when cancelled.
* **Lines that are not results are set aside**: a garbage line (an editor, a stray
  ``echo >>``) is skipped on resume (its pair, if any, runs again) and removed by the next
  compaction, which appends what it removed to ``<file>.removed`` beside the file.
* **Disk problems are typed**: a results file that cannot be opened, read or written raises
  :class:`ResultsFileError` naming the path and the reason; every line written before it
  is intact.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from facematch_async.batch._index import KeyIndex
from facematch_async.batch._lock import ResultsFileLock, ResultsFileLockedError
from facematch_async.batch._outcome import PairOutcome
from facematch_async.batch._records import (
    FIELDS,
    RETRYABLE_TEXT,
    LineState,
    ResultFormat,
    ResultsFileError,
    ResultsReader,
    encode_csv,
    encode_jsonl,
    index_fields,
    index_text,
    line_state,
    outcome_record,
    record_key,
    text_state,
)
from facematch_async.batch._scan import ProgressCallback, Ticker, in_worker
from facematch_async.batch._state import JobState, check_manifest, shard_of

__all__ = [
    "FIELDS",
    "ResultFormat",
    "ResultsFile",
    "ResultsFileError",
    "ResultsFileLockedError",
    "outcome_record",
]

_DAY = 86400.0
_CHUNK = 4096  # lines indexed per SQLite round trip
logger = logging.getLogger("facematch_async")


class ResultsFile:
    """An append-only results file with a resume index, written by one run at a time.

    Args:
        path: The results file.
        fmt: ``"jsonl"`` or ``"csv"``; default from the suffix (``.csv``), else JSONL.
        index_dir: Where the index's temporary file goes.

    Attributes:
        recorded: Distinct pairs with a line in the file.
        superseded: Lines a later line for the same pair replaces (dropped on close).
        repaired: Whether a torn last line was cut off on open.
        unreadable: Complete lines that could not be parsed (ignored: their pairs rerun).
        retryable: Pairs whose last line is a transient error (run again on resume).
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
        self._lock = ResultsFileLock(self.path)
        self._header: list[str] | None = None
        self._file: io.FileIO | None = None
        self._offset = 0
        self.recorded = 0
        self.superseded = 0
        self.repaired = False
        self.unreadable = 0
        self.retryable = 0
        self.recent: deque[float] = deque()

    def open(
        self,
        *,
        resume: bool,
        seed_limit: int = 0,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        """Take the file for writing; with ``resume``, first read what is there.

        Args:
            resume: Read and index the existing lines; without it the file must be absent
                or empty.
            seed_limit: Keep up to this many of the last day's request times (wall clock,
                one per attempt) in :attr:`recent`, to seed a rate limiter.
            on_progress: Called now and then with a
                :class:`~facematch_async.batch.ScanProgress` while a long file is read.

        Raises:
            ResultsFileLockedError: another run writes to it (nothing was changed).
            FileExistsError: the file has results and ``resume`` is false.
            ResultsFileError: the path cannot take results (a directory, no such folder, no
                permission) or cannot be read or repaired.
            ValueError: the file is not a results file of this format.
        """
        self._open(resume, seed_limit, Ticker(on_progress))

    async def open_async(
        self,
        *,
        resume: bool,
        seed_limit: int = 0,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        """:meth:`open`, reading the file in a worker thread: the event loop (signal
        handlers, other tasks) runs meanwhile, ``on_progress`` is called on it, and
        cancelling the awaiting task stops the read within milliseconds (the file is then
        left as it was, unlocked, and this object closed)."""
        await in_worker(lambda ticker: self._open(resume, seed_limit, ticker), on_progress)

    def _open(self, resume: bool, seed_limit: int, ticker: Ticker) -> None:
        try:
            # Unbuffered: one write per line, and nothing left in a buffer for close() to
            # fail on when the disk is full. Opened first, so that a path that cannot take
            # results (a directory, no such folder, read-only) is refused before any work.
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 (close() closes it)
        except OSError as exc:
            self._index.close()
            raise ResultsFileError(self.path, "open for appending", exc) from None
        try:
            self._lock.acquire()
            exists = self._file.seek(0, os.SEEK_END) > 0
            if exists and not resume:
                raise FileExistsError(f"{self.path} already holds results")
            if exists:
                self._load_checked(seed_limit, True, ticker)
        except BaseException:
            self._file.close()
            self._file = None
            self._lock.release()
            self._index.close()
            raise
        self._offset = self._file.seek(0, os.SEEK_END)

    def load(
        self,
        seed_limit: int = 0,
        *,
        repair: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        """Index the lines already in the file without taking it (``open(resume=True)``
        does it for a writer; a dry run reads only).

        Args:
            seed_limit: See :meth:`open`.
            repair: Cut a torn last line off the file (else it is only ignored).
            on_progress: See :meth:`open`.
        """
        self._load_checked(seed_limit, repair, Ticker(on_progress))

    def _load_checked(self, seed_limit: int, repair: bool, ticker: Ticker) -> None:
        try:
            self._load(seed_limit, repair, ticker)
        except FileNotFoundError:
            return
        except OSError as exc:
            if isinstance(exc, ResultsFileError):
                raise
            raise ResultsFileError(self.path, "read", exc) from None

    def _load(self, seed_limit: int, repair: bool, ticker: Ticker) -> None:
        reader = ResultsReader(
            self.path, self.format, ticker.for_file(self.path, self.path.stat().st_size)
        )
        recent: deque[float] = deque(maxlen=seed_limit or None)
        since = time.time() - _DAY
        rows: list[tuple[str, int | None, str | None]] = []
        results = 0
        for offset, raw in reader.raw():
            fast = index_fields(raw) if self.format == "jsonl" else None
            if fast is not None:
                key, status, state, finished, attempts = fast
            elif (record := reader.parse(raw)) is not None:
                key, status, state = record_key(record), str(record["status"]), line_state(record)
                stamp, count = record.get("finished_at"), record.get("attempts")
                finished = float(stamp) if isinstance(stamp, int | float) else 0.0
                attempts = count if isinstance(count, int) else 0
            else:
                self.unreadable += 1
                if self.unreadable > 100 and not results:
                    raise ValueError(
                        f"{self.path} is not a {self.format} results file (check --format)"
                    )
                continue
            results += 1
            rows.append((key, offset, index_text(status, state)))
            if len(rows) >= _CHUNK:
                self._index.put_many(rows)
                rows.clear()
            if seed_limit and finished > since:
                recent.extend([finished] * attempts)
        self._index.put_many(rows)
        self._header = reader.header
        self.recorded = self._index.size
        self.superseded = results - self.recorded
        self.retryable = self._index.count_by_text().get(RETRYABLE_TEXT, 0)
        self.recent = recent
        if self.unreadable and not results:
            raise ValueError(f"{self.path} is not a {self.format} results file (check --format)")
        if reader.end < reader.size and repair:
            self._cut_torn_tail(reader.end)

    def _cut_torn_tail(self, end: int) -> None:
        """Cut off a last line without its end (the process died mid-write, or junk was
        appended): its pair reruns, and the bytes are kept in ``<file>.removed``."""
        with open(self.path, "rb") as file:
            file.seek(end)
            torn = file.read()
        try:
            self._set_aside([torn + b"\n"])
        except ResultsFileError as exc:  # a full disk: the cut frees room; the copy is a nicety
            logger.warning("%s; the torn line is dropped without a copy", exc)
        try:
            os.truncate(self.path, end)
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

        ``resume`` skips every pair that has a decision or a final error, and runs the
        rest: pairs without a line, and pairs whose last line is a transient error
        (``retryable``). ``retry_failed`` also runs every pair whose last line is an
        ``error`` (alone, it runs nothing else); neither skips nothing.
        """
        if not (resume or retry_failed):
            return None

        def skip(key: str) -> bool:
            state = self.state(key)
            if state is None:
                return not resume  # --retry-failed alone touches only failed pairs
            if state == "decided":
                return True
            return not (retry_failed or state == "retryable")

        return skip

    def status(self, key: str) -> str | None:
        """The status of ``key``'s last line, or ``None`` if it has none."""
        entry = self._index.get(key)
        if entry is None:
            return None
        return "error" if entry[1] == RETRYABLE_TEXT else entry[1]

    def state(self, key: str) -> LineState | None:
        """What ``key``'s last line means for a resume: ``"decided"``, ``"final"`` (an error
        only ``retry_failed`` runs again), ``"retryable"`` (a transient error a plain resume
        runs again), or ``None`` without a line."""
        entry = self._index.get(key)
        return None if entry is None else text_state(entry[1])

    def states(self, keys: list[str]) -> list[LineState | None]:
        """:meth:`state` for many keys at once."""
        return [None if entry is None else text_state(entry[1]) for entry in
                self._index.get_many(keys)]  # fmt: skip

    def job_state(
        self,
        manifest: str | os.PathLike[str] | None = None,
        *,
        shard: tuple[int, int] | str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> JobState:
        """The file's truth from this object's index, without reading the file again
        (open or loaded, not yet closed): pairs decided, final errors, retryable errors
        and, with ``manifest`` (``shard``'s part of it), missing pairs and lines not in
        it. What a run prints at its end and exits with (:attr:`JobState.exit_code`).
        The index keeps no latencies, codes or confidences: for those (the report), read
        the closed file with :func:`~facematch_async.batch.job_state`.

        Raises:
            OSError, ValueError: the manifest cannot be read (as :func:`read_manifest`).
        """
        return self._job_state(manifest, shard, Ticker(on_progress))

    async def job_state_async(
        self,
        manifest: str | os.PathLike[str] | None = None,
        *,
        shard: tuple[int, int] | str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> JobState:
        """:meth:`job_state` in a worker thread (the manifest of a big job takes a while)."""
        return await in_worker(lambda ticker: self._job_state(manifest, shard, ticker), on_progress)

    def _job_state(
        self,
        manifest: str | os.PathLike[str] | None,
        shard: tuple[int, int] | str | None,
        ticker: Ticker,
    ) -> JobState:
        texts = self._index.count_by_text()
        state = JobState(files={str(self.path): self.recorded})
        for text, count in texts.items():
            status = "error" if text == RETRYABLE_TEXT else str(text)
            state.statuses[status] += count
            state_of = text_state(text)
            if state_of == "decided":
                state.decided += count
            elif state_of == "retryable":
                state.retryable += count
            else:
                state.final_errors += count
        state.unreadable, state.superseded = self.unreadable, self.superseded
        if manifest is None:
            return state
        return check_manifest(
            state,
            self.states,
            self.recorded,
            manifest,
            shard=shard_of(shard),
            index_dir=self._index.directory,
            ticker=ticker,
        )

    def write(self, outcome: PairOutcome) -> None:
        """Append ``outcome``'s line and flush it."""
        if self._file is None:
            raise RuntimeError("the results file is not open")
        record = outcome_record(outcome)
        if self.format == "jsonl":
            data = encode_jsonl(record)
        else:
            data, self._header = encode_csv(record, self._header)
        offset = self._offset
        try:
            view = memoryview(data)
            while view:  # an unbuffered write may be partial (a signal, a nearly full disk)
                view = view[self._file.write(view) or 0 :]
        except OSError as exc:
            # The line may be torn: the next --resume cuts it off and its pair runs again.
            raise ResultsFileError(self.path, "write to", exc) from None
        self._offset += len(data)
        before = self.state(outcome.key)
        state = line_state(record)
        if self._index.put(outcome.key, offset, index_text(outcome.status, state)):
            self.recorded += 1
        else:
            self.superseded += 1
        self.retryable += (state == "retryable") - (before == "retryable")

    def close(self, *, compact: bool = True) -> None:
        """Close the file; with ``compact``, drop superseded lines and lines that are not
        results (atomically, before the lock is let go; the latter are kept in
        :attr:`removed_path`).

        Raises:
            ResultsFileError: compaction failed (a full disk): the file is left as it was,
                complete and readable, and the next run compacts it.
        """
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            # Only the lock's holder compacts: a reader (a dry run) never swaps the file
            # under a run that writes it.
            if compact and (self.superseded or self.unreadable) and self._lock.held:
                self._compact()
        finally:
            self._lock.release()
            self._index.close()

    def _compact(self) -> None:
        temporary = self.path.with_name(self.path.name + ".compacting")
        removed: list[bytes] = []
        try:
            with open(temporary, "wb") as out:
                reader = ResultsReader(self.path, self.format)
                started = False
                for offset, raw, record in reader:
                    if not started:  # the CSV header, read with the first record
                        out.write(reader.header_bytes)
                        started = True
                    if record is None:
                        removed.append(raw)
                        continue
                    entry = self._index.get(record_key(record))
                    if entry is not None and entry[0] == offset:
                        out.write(raw)
                if not started:
                    out.write(reader.header_bytes)
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
