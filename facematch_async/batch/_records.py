"""The results line: its fields, its format version, and how it is written and read back.

One line per pair, JSONL (one object per line) or CSV (a header, then one record per pair).
``results.schema.json`` beside this module describes every field (:func:`results_schema`);
each line carries the format version ``v`` (:data:`FORMAT_VERSION`). Lines written before
the version existed (no ``v``, no ``retryable``) still read: :func:`line_state` classifies
their errors by ``error_type`` and ``status_code``.

CSV is written with the csv module's own quoting and ``\\r\\n`` line ends, as RFC 4180 has
it, so a field holding a newline or a carriage return (a ``pair_id`` from a folder name, an
error message) is quoted and comes back unchanged; :class:`ResultsReader` reads such a
quoted multi-line record as one record.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeAlias

from facematch_async.batch._manifest import pair_key
from facematch_async.batch._outcome import DECISIONS, STATUSES, PairOutcome, is_retryable_error

__all__ = [
    "FIELDS",
    "FORMAT_VERSION",
    "RETRYABLE_TEXT",
    "LineState",
    "ResultFormat",
    "ResultsFileError",
    "ResultsReader",
    "encode_csv",
    "encode_jsonl",
    "index_fields",
    "index_text",
    "line_state",
    "outcome_record",
    "record_key",
    "results_schema",
    "text_state",
]

ResultFormat: TypeAlias = Literal["jsonl", "csv"]
LineState: TypeAlias = Literal["decided", "final", "retryable"]

FORMAT_VERSION = 1
"""The results format written now; the ``v`` of every line (absent before version 1)."""

FIELDS = (
    "v",
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
    "retryable",
    "finished_at",
)
"""The fixed fields of a line, in the order CSV columns are written (the manifest's own
columns follow in CSV; in JSONL they are the ``extra`` object)."""

_INTEGERS = frozenset({"v", "attempts", "line", "status_code"})
_NUMBERS = frozenset({"confidence", "latency_ms", "finished_at"})
_BOOLEANS = frozenset({"match", "retryable"})
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})
# A name read from a non-UTF-8 file system holds surrogates: written as ``\udce9``, never
# an error that would stop the batch.
_UNENCODABLE = "backslashreplace"
# A CSV record longer than this is taken to begin with a stray quote (junk appended to the
# file), not to hold that much text: its first line is then read as a line that is not a
# result, and reading goes on from the next line.
_MAX_RECORD_BYTES = 4 * 1024 * 1024
_TICK_EVERY = 1024  # records between two progress ticks (a tick is a clock read)
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


@cache
def results_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a results line, as shipped in the package."""
    text = resources.files("facematch_async.batch").joinpath("results.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def outcome_record(outcome: PairOutcome) -> dict[str, Any]:
    """The line written for ``outcome``: the :data:`FIELDS`, then ``extra`` (the manifest's
    other columns)."""
    result, error = outcome.result, outcome.error
    return {
        "v": FORMAT_VERSION,
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
        "retryable": error.retryable if (error and outcome.status == "error") else False,
        "finished_at": round(outcome.finished_at, 3),
        "extra": dict(outcome.extra),
    }


def encode_jsonl(record: Mapping[str, Any]) -> bytes:
    """One JSONL line (``extra`` left out when empty)."""
    line = {name: value for name, value in record.items() if name != "extra"}
    if record.get("extra"):
        line["extra"] = record["extra"]
    return (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8", _UNENCODABLE)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def encode_csv(record: Mapping[str, Any], header: list[str] | None) -> tuple[bytes, list[str]]:
    """One CSV record for ``header``, preceded by the header itself when there is none yet
    (a new file: the :data:`FIELDS`, then the manifest's columns). Returns the bytes and
    the header. A column the header lacks is not written (an older file keeps its header).
    """
    extra: Mapping[str, Any] = record.get("extra") or {}
    buffer = io.StringIO()
    # \r\n, as the csv module's default dialect: a field holding \r or \n is then quoted.
    writer = csv.writer(buffer, lineterminator="\r\n")
    if header is None:
        header = [*FIELDS, *(name for name in extra if name not in FIELDS)]
        writer.writerow(header)
    values = {**extra, **record}
    writer.writerow([_cell(values.get(name)) for name in header])
    return buffer.getvalue().encode("utf-8", _UNENCODABLE), header


def record_key(record: Mapping[str, Any]) -> str:
    """The key a line is filed under (its ``pair_id``; ``@line:N`` for an anonymous row)."""
    line = record.get("line")
    return pair_key(
        str(record.get("pair_id") or ""),
        line if isinstance(line, int) else None,
        record.get("sub_code") or None,
    )


def line_state(record: Mapping[str, Any]) -> LineState:
    """``"decided"`` (match, no_match, no_face), ``"retryable"`` (an error a plain resume
    runs again) or ``"final"`` (an error that waits for ``--retry-failed``). A line without
    ``retryable`` (an older file) is classified by its ``error_type`` and ``status_code``."""
    if record.get("status") in DECISIONS:
        return "decided"
    retryable = record.get("retryable")
    if not isinstance(retryable, bool):
        status_code = record.get("status_code")
        retryable = is_retryable_error(
            record.get("error_type"), status_code if isinstance(status_code, int) else None
        )
    return "retryable" if retryable else "final"


RETRYABLE_TEXT = "error:retryable"
"""What a resume index keeps for a pair whose last line is a retryable error."""


def index_text(status: str, state: LineState) -> str:
    """What a resume index keeps for a line: its status, or :data:`RETRYABLE_TEXT`."""
    return RETRYABLE_TEXT if state == "retryable" else status


def text_state(text: str | None) -> LineState:
    """The :func:`line_state` of a line from what :func:`index_text` kept of it."""
    if text == RETRYABLE_TEXT:
        return "retryable"
    return "final" if text == "error" else "decided"


# A line of format version 1 as encode_jsonl writes it (json.dumps's separators, the
# fields in FIELDS order): what a resume needs of it, read without building the object.
# Quotes inside JSON strings are escaped, so these keys cannot be matched inside a value.
_V1_LINE = re.compile(
    rb'\{"v": 1, "pair_id": ("(?:[^"\\]|\\.)*"), '
    rb'"status": "(match|no_match|no_face|error)", "match": (?:true|false|null), '
    rb'"confidence": [-+.0-9a-zA-Z]+, "attempts": (\d+), '
    rb'.*"retryable": (true|false), "finished_at": ([-+.0-9eE]+)[,}]'
)
_V1_START = b'{"v": '


def index_fields(raw: bytes) -> tuple[str, str, LineState, float, int] | None:
    """``(key, status, state, finished_at, attempts)`` of a version-1 JSONL line written
    by :func:`encode_jsonl`, read several times faster than the whole line (a long
    resume's index needs no more); ``None`` for any other line: parse that one."""
    if raw.count(_V1_START) != 1 or not raw.endswith(b"}\n"):
        return None  # not one line of ours (two glued by a torn write, say)
    found = _V1_LINE.match(raw)
    if found is None:
        return None
    quoted, status, attempts, retryable, finished = found.groups()
    try:
        key = json.loads(quoted) if b"\\" in quoted else quoted[1:-1].decode("utf-8")
        stamp = float(finished)
    except ValueError:
        return None
    if not key:
        return None
    name = status.decode()
    state: LineState = (
        "decided" if name in DECISIONS else "retryable" if retryable == b"true" else "final"
    )
    return key, name, state, stamp, int(attempts)


def _typed(name: str, text: str) -> Any:
    """A CSV cell as the JSON value the same field holds in JSONL."""
    if name not in _INTEGERS and name not in _NUMBERS and name not in _BOOLEANS:
        return text if text or name == "pair_id" else None
    text = text.strip()
    if name in _BOOLEANS:
        lowered = text.lower()
        return True if lowered in _TRUE else False if lowered in _FALSE else None
    try:
        return int(text) if name in _INTEGERS else float(text)
    except ValueError:
        return None


def _csv_record(header: list[str], row: list[str]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    extra: dict[str, str] = {}
    for name, text in zip(header, row, strict=True):
        if name in FIELDS:
            record[name] = _typed(name, text)
        else:
            extra[name] = text
    if extra:
        record["extra"] = extra
    return record


def _is_result(record: object) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("pair_id"), str)
        and record.get("status") in STATUSES
    )


class ResultsReader:
    """The complete records of a results file, in order: ``(offset, raw bytes, record)``,
    the record ``None`` for a line that is not a result (garbage, a hand-made line without
    a ``pair_id`` and a known ``status``). CSV cells come back typed as in JSONL.

    A torn last record (the process died mid-write) is not yielded; after the iteration
    :attr:`end` is where it starts (the file's size when there is none).

    Args:
        path: The results file.
        fmt: ``"jsonl"`` or ``"csv"``.
        tick: Called with ``(bytes read, records read)`` every thousand records or so; a
            long read reports progress (and is cancelled) through it.

    Attributes:
        header: The CSV header (``None`` for JSONL, or an empty file).
        header_bytes: The header's bytes, as in the file.
        size: The file's size when the read began.
        end: Where the torn tail begins, once iterated.
    """

    def __init__(
        self,
        path: Path,
        fmt: ResultFormat,
        tick: Callable[[int, int], None] | None = None,
    ) -> None:
        self.path = path
        self.format = fmt
        self.tick = tick
        self.header: list[str] | None = None
        self.header_bytes = b""
        self.size = 0
        self.end = 0

    def __iter__(self) -> Iterator[tuple[int, bytes, dict[str, Any] | None]]:
        for offset, raw in self.raw():
            yield offset, raw, self.parse(raw)

    def raw(self) -> Iterator[tuple[int, bytes]]:
        """``(offset, bytes)`` of each complete record, not parsed (the header read)."""
        with open(self.path, "rb") as file:
            self.size = os.fstat(file.fileno()).st_size
            self.end = self.size
            source = (
                self._lines(file)
                if self.format == "jsonl"
                else self._csv_records(self._physical(file))
            )
            count = 0
            for offset, raw in source:
                count += 1
                if self.tick is not None and count % _TICK_EVERY == 0:
                    self.tick(offset, count)
                if self.format == "csv" and self.header is None:
                    self.header = self._header(raw)
                    self.header_bytes = raw
                    continue
                yield offset, raw
            if self.tick is not None:
                self.tick(self.end, count)

    def _lines(self, file: io.BufferedReader) -> Iterator[tuple[int, bytes]]:
        offset = 0
        for raw in file:
            if not raw.endswith(b"\n"):
                self.end = offset  # a torn last line
                return
            yield offset, raw
            offset += len(raw)

    def _csv_records(self, lines: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
        """Records from ``(offset, physical line)``: a record is one line, or several
        joined while a quote is open (a field holding a newline).

        Only junk holds a quote that does not belong to a record of ours (an ``echo`` with
        an unclosed ``"``): a record of several lines that is not a result, or a quote left
        open over 4 MiB, makes its first line alone the junk, and the lines after it are
        read again. At the end of the file, lines still inside a quote are a torn write,
        unless results follow the open quote (then it is junk again).
        """
        replay: deque[tuple[int, bytes]] = deque()  # lines to read again, after junk
        pending: list[tuple[int, bytes]] = []
        size = 0
        odd = False
        while True:
            item = replay.popleft() if replay else next(lines, None)
            if item is None:
                break
            pending.append(item)
            size += len(item[1])
            odd ^= item[1].count(b'"') % 2 == 1
            if not item[1].endswith(b"\n"):
                break  # the end of the file, mid-record
            if odd and size <= _MAX_RECORD_BYTES:
                continue
            joined = b"".join(raw for _, raw in pending)
            if not odd and (len(pending) == 1 or self._result_or_header(joined)):
                yield pending[0][0], joined
            else:
                yield pending[0]  # junk: that line alone; read on after it
                replay.extendleft(reversed(pending[1:]))
            pending, size, odd = [], 0, False
        if len(pending) > 1:
            end = self.end
            after = list(self._csv_records(iter(pending[1:])))
            if any(self._result_or_header(raw) for _, raw in after):
                yield pending[0]  # an open quote with results after it: junk
                yield from after
                return
            self.end = end
        if pending:
            self.end = pending[0][0]  # a torn write: the last record, cut short

    def _result_or_header(self, raw: bytes) -> bool:
        return self.header is None or self.parse(raw) is not None

    @staticmethod
    def _physical(file: io.BufferedReader) -> Iterator[tuple[int, bytes]]:
        offset = 0
        for raw in file:
            yield offset, raw
            offset += len(raw)

    def _header(self, raw: bytes) -> list[str]:
        try:
            row = next(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
        except (UnicodeDecodeError, csv.Error, StopIteration):
            row = []
        if not {"pair_id", "status"} <= set(row):
            raise ValueError(f"{self.path} is not a CSV results file (check --format)")
        return row

    def parse(self, raw: bytes) -> dict[str, Any] | None:
        """The record ``raw`` holds, or ``None`` when it is not a result."""
        try:
            text = raw.decode("utf-8")
            if self.format == "jsonl":
                record = json.loads(text)
            else:
                rows = list(csv.reader(io.StringIO(text, newline="")))
                header = self.header or []
                if len(rows) != 1 or len(rows[0]) != len(header):
                    return None
                record = _csv_record(header, rows[0])
        except (ValueError, RecursionError, csv.Error):
            return None
        return record if _is_result(record) else None
