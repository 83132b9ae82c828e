"""What changed since earlier decisions: :func:`compare_results` (``summary --against``).

```python
comparison = compare_results("results.jsonl", "last_year.csv", changed="changed.jsonl")
print(comparison.format())       # match -> no_match: 3, new (match): 12, ...
```

The earlier decisions (``previous``) are an earlier results file, or an export from the
team's own system: CSV (a header) or JSONL with ``pair_id`` and ``match`` (``true``/``false``,
``1``/``0``, ``yes``/``no``, ``match``/``no_match``), and ``confidence`` when there is one.
A ``status`` of a results file (``match``, ``no_match``, ``no_face``, ``error``) is used
when present. A row without a decision (an empty ``match``) is ``undecided``.

Each pair gets one transition ``(before, after)``; ``"absent"`` stands for no row: ``new``
pairs have no earlier decision, ``missing`` pairs have no line in the results now. Rows of
``previous`` that hold no ``pair_id`` or no readable decision are counted, never fatal;
a file with none that is readable is a :class:`ValueError` in one line.

Memory stays flat for millions of pairs: both sides go into on-disk indexes
(:class:`~facematch_async.batch._index.KeyIndex`); the results files are read once (twice
when there are new pairs) and ``previous`` twice.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from facematch_async.batch._index import KeyIndex
from facematch_async.batch._outcome import STATUSES
from facematch_async.batch._records import ResultsReader, record_key
from facematch_async.batch._scan import ProgressCallback, Ticker, in_worker
from facematch_async.batch._state import (
    JobState,
    KeptLine,
    Tally,
    check_manifest,
    result_paths,
    results_format,
    shard_of,
)
from facematch_async.batch._summary import ConfidenceHistogram

__all__ = ["ABSENT", "Comparison", "compare_results", "compare_results_async"]

ABSENT = "absent"
"""The side of a transition with no row: ``(ABSENT, x)`` is new, ``(x, ABSENT)`` missing."""
UNDECIDED = "undecided"
_SHOWN = 5  # pairs named per transition in the printed report
_CHUNK = 2048
_TRUE = frozenset({"true", "t", "yes", "y", "1", "match", "matched", "same"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "no_match", "nomatch", "not_match", "mismatch"})
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_MIN_READABLE_PROBE = 100  # rows read before a file with none readable is refused


def _rank(before: str, after: str) -> int:
    decided = ("match", "no_match", "no_face")
    if before == after:
        return 5
    if before == ABSENT or after == ABSENT:
        return 3 if before == ABSENT else 4
    if before in decided and after in decided:
        return 0
    return 1 if before in decided else 2


def label(before: str, after: str) -> str:
    """How a transition is printed: ``match -> no_match``, ``new (match)``,
    ``missing (was match)``, ``unchanged (match)``."""
    if before == ABSENT:
        return f"new ({after})"
    if after == ABSENT:
        return f"missing (was {before})"
    if before == after:
        return f"unchanged ({after})"
    return f"{before} -> {after}"


@dataclass
class Comparison:
    """Earlier decisions against the results files, pair by pair.

    Attributes:
        transitions: Pairs per ``(before, after)``; ``before`` is ``match``, ``no_match``,
            ``no_face``, ``error``, ``undecided`` or ``absent`` (a new pair), ``after`` is
            ``match``, ``no_match``, ``no_face``, ``error`` or ``absent`` (a pair with no
            line in the results now).
        current: The results files' :class:`JobState`.
        previous: The earlier decisions' file.
        previous_kind: ``"results"`` (it has a ``status``) or ``"export"``.
        previous_pairs: Distinct pairs with a row in ``previous``.
        previous_unreadable: Rows of ``previous`` without a ``pair_id`` or a readable
            decision (skipped).
        previous_confidence: Confidences of the earlier ``match`` and ``no_match`` rows.
        examples: The first few pair ids of each transition that is a change.
        changed_path: Where one line per changed pair was written, if asked.
    """

    current: JobState
    previous: str
    previous_kind: Literal["results", "export"] = "export"
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    previous_pairs: int = 0
    previous_unreadable: int = 0
    previous_confidence: ConfidenceHistogram = field(default_factory=ConfidenceHistogram)
    examples: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    changed_path: str | None = None

    @property
    def changed(self) -> int:
        """Pairs whose decision is not what it was (new and missing pairs included)."""
        return sum(n for (before, after), n in self.transitions.items() if before != after)

    @property
    def unchanged(self) -> int:
        """Pairs with the same decision (or the same error) as before."""
        return sum(n for (before, after), n in self.transitions.items() if before == after)

    def rows(self) -> list[tuple[str, str, int]]:
        """``(before, after, pairs)`` for every transition, what a reviewer reads first
        first: decisions that flipped, decisions now errors, decisions where there were
        none, new pairs, missing pairs, then the unchanged; the most pairs first within."""
        return sorted(
            ((before, after, n) for (before, after), n in self.transitions.items()),
            key=lambda row: (_rank(row[0], row[1]), -row[2], row[0], row[1]),
        )

    def format(self) -> str:
        """A human-readable report of the transitions."""
        kind = "a results file" if self.previous_kind == "results" else "an export"
        lines = [
            f"compared with {self.previous} ({kind}, {self.previous_pairs} pairs): "
            f"{self.changed} changed, {self.unchanged} unchanged"
        ]
        for before, after, count in self.rows():
            lines.append(f"  {label(before, after):<32}{count:>9}")
            for pair in self.examples.get((before, after), []):
                lines.append(f"    {pair}")
        if self.previous_unreadable:
            lines.append(
                f"  {self.previous_unreadable} row(s) of {self.previous} skipped "
                "(no pair_id, or no readable decision)"
            )
        if self.changed_path is not None:
            lines.append(f"changed pairs written to {self.changed_path}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _Row:
    key: str
    decision: str
    confidence: float | None


def _confidence(value: Any) -> float | None:
    if isinstance(value, str):
        value = value.strip().removesuffix("%")
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _decision(row: Mapping[str, Any]) -> str | None:
    """A row's decision, or ``None`` when it has none that can be read."""
    status = row.get("status")
    if isinstance(status, str) and status.strip() in STATUSES:
        return status.strip()
    if "match" not in row:
        return None
    match = row["match"]
    if match is None or (isinstance(match, str) and not match.strip()):
        return UNDECIDED
    if isinstance(match, int | float):  # bool too
        return "match" if match else "no_match"
    if isinstance(match, str):
        text = match.strip().lower()
        if text in _TRUE:
            return "match"
        if text in _FALSE:
            return "no_match"
    return None


class _Previous:
    """The rows of the earlier decisions' file: ``(row number, row or None)``."""

    def __init__(self, path: Path, ticker: Ticker) -> None:
        self.path = path
        self.ticker = ticker
        self.size = path.stat().st_size
        self.jsonl = path.suffix.lower() in _JSONL_SUFFIXES or (
            path.suffix.lower() not in (".csv", ".tsv") and self._starts_with_brace()
        )
        self.kind: Literal["results", "export"] = "export"

    def _starts_with_brace(self) -> bool:
        with open(self.path, "rb") as file:
            return file.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{")

    def __iter__(self) -> Iterator[tuple[int, _Row | None]]:
        try:
            yield from self._jsonl() if self.jsonl else self._csv()
        except UnicodeDecodeError:
            raise ValueError(f"{self.path}: not UTF-8 text") from None

    def _row(self, fields: Mapping[str, Any]) -> _Row | None:
        pair_id = fields.get("pair_id")
        if isinstance(pair_id, int) and not isinstance(pair_id, bool):
            pair_id = str(pair_id)  # an export's numeric ids
        decision = _decision(fields)
        if not isinstance(pair_id, str) or not pair_id.strip() or decision is None:
            return None
        if isinstance(fields.get("status"), str) and fields["status"].strip() in STATUSES:
            self.kind = "results"
            key = record_key({**fields, "pair_id": pair_id.strip()})
        else:
            key = pair_id.strip()
        return _Row(key, decision, _confidence(fields.get("confidence")))

    def _jsonl(self) -> Iterator[tuple[int, _Row | None]]:
        with open(self.path, "rb") as file:
            done = 0
            for number, raw in enumerate(file, start=1):
                done += len(raw)
                if number % 1024 == 0:
                    self.ticker(self.path, done, self.size, number)
                text = raw.decode("utf-8").removeprefix("\ufeff")
                if not text.strip():
                    continue
                try:
                    fields = json.loads(text)
                except (ValueError, RecursionError):
                    yield number, None
                    continue
                yield number, self._row(fields) if isinstance(fields, dict) else None

    def _csv(self) -> Iterator[tuple[int, _Row | None]]:
        delimiter = "\t" if self.path.suffix.lower() == ".tsv" else ","
        with (
            open(self.path, "rb") as binary,
            io.TextIOWrapper(binary, encoding="utf-8-sig", newline="") as file,
        ):
            reader = csv.reader(file, delimiter=delimiter)
            try:
                header = [name.strip() for name in next(reader, [])]
            except csv.Error as exc:
                raise ValueError(f"{self.path}: not a CSV with a header ({exc})") from None
            if "pair_id" not in header:
                raise ValueError(
                    f"{self.path}: no pair_id column: earlier decisions need a header naming "
                    "pair_id and match (or a results file)"
                )
            if "match" not in header and "status" not in header:
                raise ValueError(
                    f"{self.path}: no match column: earlier decisions need pair_id and match "
                    "(true/false), or a results file's status"
                )
            number = 0
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error:  # a field over the csv module's limit, say
                    number += 1
                    yield number, None
                    continue
                number += 1
                if number % 1024 == 0:
                    self.ticker(self.path, binary.tell(), self.size, number)
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(header):
                    yield number, None
                    continue
                yield number, self._row(dict(zip(header, row, strict=True)))


class _Changed:
    """One line per changed pair, JSONL or CSV (by the suffix)."""

    FIELDS = (
        "pair_id",
        "change",
        "before",
        "after",
        "confidence_before",
        "confidence_after",
        "after_code",
        "retryable",
    )

    def __init__(self, path: Path) -> None:
        self.path = path
        self.csv = path.suffix.lower() == ".csv"
        self.file: TextIO = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 (close())
        self.writer = csv.writer(self.file, lineterminator="\r\n") if self.csv else None
        if self.writer is not None:
            self.writer.writerow(self.FIELDS)

    def write(self, key: str, before: _Row | None, after: KeptLine | None) -> None:
        values = (
            key,
            label(before.decision if before else ABSENT, after.status if after else ABSENT),
            before.decision if before else None,
            after.status if after else None,
            before.confidence if before else None,
            after.confidence if after else None,
            (after.code or None) if after and after.status in ("error", "no_face") else None,
            (after.state == "retryable") if after and after.status == "error" else None,
        )
        if self.writer is not None:
            self.writer.writerow(["" if value is None else value for value in values])
        else:
            line = dict(zip(self.FIELDS, values, strict=True))
            self.file.write(json.dumps(line, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.file.close()


class _Comparer:
    """The passes of one comparison (see the module's docstring)."""

    def __init__(
        self,
        tally: Tally,
        comparison: Comparison,
        previous: _Previous,
        changed: _Changed | None,
        index_dir: str | os.PathLike[str] | None,
    ) -> None:
        self.tally = tally
        self.comparison = comparison
        self.previous = previous
        self.changed = changed
        self.earlier = KeyIndex(index_dir)  # key -> (row number, "decision\tconfidence")
        self.matched = 0

    def index_previous(self) -> None:
        rows: list[tuple[str, int | None, str | None]] = []
        readable = 0
        for number, row in self.previous:
            if row is None:
                self.comparison.previous_unreadable += 1
                if self.comparison.previous_unreadable >= _MIN_READABLE_PROBE and not readable:
                    break
                continue
            readable += 1
            confidence = "" if row.confidence is None else repr(row.confidence)
            rows.append((row.key, number, f"{row.decision}\t{confidence}"))
            if len(rows) >= _CHUNK:
                self.earlier.put_many(rows)
                rows.clear()
        self.earlier.put_many(rows)
        if not readable and self.comparison.previous_unreadable:
            raise ValueError(
                f"{self.previous.path}: not a results file or an export with pair_id and "
                "match (CSV with a header, or JSONL)"
            )
        self.comparison.previous_kind = self.previous.kind
        self.comparison.previous_pairs = self.earlier.size

    def against_previous(self) -> None:
        """Each earlier pair (its last row) against the results: changes, and missing."""
        chunk: list[_Row] = []
        for number, row in self.previous:
            if row is None:
                continue
            entry = self.earlier.get(row.key)
            if entry is None or entry[0] != number:
                continue  # a later row of the same pair replaces this one
            chunk.append(row)
            if len(chunk) >= _CHUNK:
                self._earlier_chunk(chunk)
                chunk.clear()
        self._earlier_chunk(chunk)

    def _earlier_chunk(self, rows: list[_Row]) -> None:
        found = self.tally.index.get_many([row.key for row in rows])
        for row, entry in zip(rows, found, strict=True):
            if row.decision in ("match", "no_match"):
                self.comparison.previous_confidence.add(row.confidence, row.decision)
            now = None if entry is None else KeptLine.parse(str(entry[1]))
            self.matched += now is not None
            self._note(row.key, row, now)

    def new_pairs(self, paths: Sequence[Path]) -> None:
        """The results' pairs with no earlier row (read only when there are some)."""
        for number, path in enumerate(paths):
            chunk: list[tuple[str, int]] = []
            tick = self.tally.ticker.for_file(path, path.stat().st_size)
            for offset, _raw, record in ResultsReader(path, results_format(path), tick):
                if record is not None:
                    chunk.append((record_key(record), offset))
                if len(chunk) >= _CHUNK:
                    self._new_chunk(number, chunk)
                    chunk.clear()
            self._new_chunk(number, chunk)

    def _new_chunk(self, number: int, chunk: list[tuple[str, int]]) -> None:
        keys = [key for key, _ in chunk]
        now = self.tally.index.get_many(keys)
        earlier = self.earlier.get_many(keys)
        for (key, offset), entry, before in zip(chunk, now, earlier, strict=True):
            if entry is None or entry[0] != offset or before is not None:
                continue  # superseded, or compared already
            kept = KeptLine.parse(str(entry[1]))
            if kept.file == number:  # counted once: by the file that holds the pair
                self._note(key, None, kept)

    def _note(self, key: str, before: _Row | None, after: KeptLine | None) -> None:
        transition = (before.decision if before else ABSENT, after.status if after else ABSENT)
        self.comparison.transitions[transition] += 1
        if transition[0] == transition[1]:
            return
        examples = self.comparison.examples.setdefault(transition, [])
        if len(examples) < _SHOWN:
            examples.append(key)
        if self.changed is not None:
            self.changed.write(key, before, after)

    def close(self) -> None:
        self.earlier.close()


def _compare(
    current: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    previous: str | os.PathLike[str],
    changed: str | os.PathLike[str] | None,
    manifest: str | os.PathLike[str] | None,
    shard: tuple[int, int] | str | None,
    index_dir: str | os.PathLike[str] | None,
    ticker: Ticker,
) -> Comparison:
    paths = result_paths(current)
    earlier = _Previous(Path(previous), ticker)  # unreadable: raised before any work
    tally = Tally(index_dir, ticker)
    writer = None
    comparer = None
    try:
        tally.read(paths)
        state = tally.finish()
        comparison = Comparison(state, str(previous))
        comparer = _Comparer(tally, comparison, earlier, None, index_dir)
        comparer.index_previous()
        if changed is not None:
            writer = comparer.changed = _Changed(Path(changed))
            comparison.changed_path = str(changed)
        comparer.against_previous()
        if comparer.matched < state.pairs:
            comparer.new_pairs(paths)
        if manifest is not None:
            check_manifest(
                state,
                tally.lookup,
                state.pairs,
                manifest,
                shard=shard_of(shard),
                index_dir=index_dir,
                ticker=ticker,
            )
        return comparison
    finally:
        if writer is not None:
            writer.close()
        if comparer is not None:
            comparer.close()
        tally.close()


def compare_results(
    current: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    previous: str | os.PathLike[str],
    *,
    changed: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    shard: tuple[int, int] | str | None = None,
    index_dir: str | os.PathLike[str] | None = None,
    on_progress: ProgressCallback | None = None,
) -> Comparison:
    """Compare results files with earlier decisions, pair by pair.

    Args:
        current: A results file, or several (one per shard).
        previous: An earlier results file, or an export with ``pair_id`` and ``match`` (and
            ``confidence``): CSV with a header (``.tsv``: tab-separated), or JSONL.
        changed: Write one line per changed pair here (JSONL, or CSV by its suffix):
            ``pair_id``, ``change``, ``before``, ``after``, ``confidence_before``,
            ``confidence_after``, ``after_code`` (the sub_code or error type now) and
            ``retryable``.
        manifest: Also check the results against the manifest (``Comparison.current``
            then has its ``missing`` pairs and exit code, as :func:`job_state` gives).
        shard: The shard of ``manifest`` the results are, ``(k, n)`` or ``"k/n"``.
        index_dir: Where the on-disk indexes go (default: the temp folder).
        on_progress: Called now and then with a :class:`ScanProgress` while files are read.

    Raises:
        ValueError: ``previous`` is not earlier decisions (no ``pair_id`` or ``match``
            column, not UTF-8, no readable row) or a results file is not one.
        OSError: a file cannot be read, or ``changed`` cannot be written.
    """
    return _compare(current, previous, changed, manifest, shard, index_dir, Ticker(on_progress))


async def compare_results_async(
    current: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    previous: str | os.PathLike[str],
    *,
    changed: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    shard: tuple[int, int] | str | None = None,
    index_dir: str | os.PathLike[str] | None = None,
    on_progress: ProgressCallback | None = None,
) -> Comparison:
    """:func:`compare_results` in a worker thread (see :func:`job_state_async`)."""
    return await in_worker(
        lambda ticker: _compare(current, previous, changed, manifest, shard, index_dir, ticker),
        on_progress,
    )
