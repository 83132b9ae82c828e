"""The job's truth: what results files hold, checked against the manifest (:class:`JobState`).

```python
state = job_state("results.jsonl", manifest="pairs.csv", shard=(3, 8))
print(state.format())
raise SystemExit(state.exit_code)  # 0 all decided, 1 final errors, 69 pairs still to run
```

A run's own counts say what that run did; a re-verification job needs what the file holds:
how many pairs of the manifest (this shard's part of it) have a decision, how many ended in
an error no retry fixes (``final_errors``: fix the input, then ``--retry-failed``), how many
are still to run (``retryable`` lines and ``missing`` pairs: a plain ``--resume`` sends
them), and lines that belong to no pair of the manifest. :attr:`JobState.exit_code` is the
exit code the batch contract gives for it.

Memory stays flat for millions of pairs: one pass over each results file keeps each pair's
last line (what is needed of it) in an on-disk :class:`KeyIndex`; the manifest is then
streamed against it. Several files (one per shard) combine: a pair counts once, by the first
file holding it, and pairs in more than one file are counted.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facematch_async.batch._index import KeyIndex
from facematch_async.batch._manifest import PairSpec, scan_manifest
from facematch_async.batch._records import (
    LineState,
    ResultFormat,
    ResultsReader,
    line_state,
    record_key,
)
from facematch_async.batch._scan import ProgressCallback, Ticker, in_worker
from facematch_async.batch._shard import resolve_shard, shard_filter
from facematch_async.batch._summary import ConfidenceHistogram, LatencyHistogram, format_counts

__all__ = ["JobState", "job_state", "job_state_async", "manifest_keys", "results_format"]

_SHOWN = 20  # pairs listed by name per problem; the rest are counted
_CANDIDATES = 200  # error pairs remembered without a manifest (a later line may decide some)
_CHUNK = 2048
Lookup = Callable[[list[str]], list[LineState | None]]


def results_format(path: Path) -> ResultFormat:
    """A results file's format by its suffix: ``.csv`` is CSV, anything else JSONL."""
    return "csv" if path.suffix.lower() == ".csv" else "jsonl"


@dataclass
class JobState:
    """What results files hold, against the manifest when one is given.

    Attributes:
        files: Lines each file counts for (its pairs' last lines).
        statuses: Pairs per status over every file, each pair once.
        codes: Pairs per ``(status, sub_code or error type)`` for errors and no-faces.
        error_kinds: Error pairs per ``("final" or "retryable", sub_code or error type)``.
        latency: Latencies of the pairs that made requests.
        confidence: Confidences of the ``match`` and ``no_match`` pairs.
        attempts: Face-match requests, all pairs together.
        decided: Pairs with a decision (``match``, ``no_match``, ``no_face``); with a
            manifest, pairs of the manifest.
        final_errors: Pairs whose last line is an error no retry fixes (a bad image, a
            malformed or duplicate row): fix the input, then ``--retry-failed``.
        retryable: Pairs whose last line is a transient error (no connection, timeout,
            5xx, 429 after the retries): a plain ``--resume`` sends them again.
        missing: Manifest pairs with no line (``None`` without a manifest).
        not_in_manifest: Pairs with a line that the manifest (this shard's part) does not
            hold: another manifest's or another shard's file (``None`` without one).
        manifest_pairs: Pairs of the manifest (this shard's part); ``None`` without one.
        duplicated: Pairs with lines in more than one file.
        unreadable: Lines that are not results.
        superseded: Lines a later line of the same pair in the same file replaces.
        shard: The ``(k, n)`` the manifest was cut to.
        missing_ids: The first few missing pairs (likewise ``retryable_ids``,
            ``final_error_ids`` and ``duplicated_ids``).
    """

    files: dict[str, int] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    error_kinds: Counter[tuple[LineState, str]] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    confidence: ConfidenceHistogram = field(default_factory=ConfidenceHistogram)
    attempts: int = 0
    decided: int = 0
    final_errors: int = 0
    retryable: int = 0
    missing: int | None = None
    not_in_manifest: int | None = None
    manifest_pairs: int | None = None
    duplicated: int = 0
    unreadable: int = 0
    superseded: int = 0
    shard: tuple[int, int] | None = None
    missing_ids: list[str] = field(default_factory=list)
    retryable_ids: list[str] = field(default_factory=list)
    final_error_ids: list[str] = field(default_factory=list)
    duplicated_ids: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> int:
        """Distinct pairs with a line in some file."""
        return sum(self.statuses.values())

    @property
    def to_run(self) -> int:
        """Pairs a plain ``--resume`` sends: retryable errors and missing pairs."""
        return self.retryable + (self.missing or 0)

    @property
    def exit_code(self) -> int:
        """The batch contract's code for this state: ``69`` while pairs are still to run
        (a plain ``--resume`` sends them), else ``1`` with final errors, else ``0``."""
        if self.to_run:
            return 69
        return 1 if self.final_errors else 0

    @property
    def complete(self) -> bool:
        """Every pair decided, none in more than one file, every line a result."""
        return self.exit_code == 0 and not self.duplicated and not self.unreadable

    def format(self) -> str:
        """A human-readable report: the counts, then the state against the manifest."""
        lines = [
            f"{self.pairs} pairs in {len(self.files)} files, {self.attempts} face-match requests"
        ]
        lines += [f"  {name}: {count} lines" for name, count in self.files.items()]
        lines += format_counts(self.statuses, self.codes, self.latency)
        if self.unreadable:
            lines.append(f"  {self.unreadable} unreadable lines ignored")
        lines.append(f"in more than one file: {self.duplicated}")
        lines += _listed(self.duplicated_ids, self.duplicated)
        if self.missing is not None:
            lines.append(f"in the manifest but in no file: {self.missing}")
            lines += _listed(self.missing_ids, self.missing)
        part = f" (shard {self.shard[0]}/{self.shard[1]})" if self.shard else ""
        whose = f"of the manifest's {self.manifest_pairs} pairs{part}" if self.has_manifest else ""
        lines.append(f"state {whose}".rstrip() + ":")
        lines.append(f"  decided        {self.decided:>9}")
        lines.append(f"  final errors   {self.final_errors:>9}")
        lines += _listed(self.final_error_ids, self.final_errors, "    ")
        lines.append(
            f"  still to run   {self.to_run:>9}  ({self.retryable} after transient errors)"
        )
        lines += _listed(self.retryable_ids, self.retryable, "    ")
        if self.not_in_manifest:
            lines.append(
                f"  not in the manifest{part}: {self.not_in_manifest} (another manifest's or "
                "shard's lines?)"
            )
        return "\n".join(lines)

    @property
    def has_manifest(self) -> bool:
        """Whether the state was checked against a manifest."""
        return self.manifest_pairs is not None

    def advice(self) -> list[str]:
        """What to do next, one sentence per problem (empty when all is decided)."""
        said = []
        if self.to_run:
            said.append(
                f"{self.to_run} pair(s) still to run ({self.retryable} after transient "
                f"errors, {self.missing or 0} without a line): run the batch again with "
                "--resume"
            )
        if self.final_errors:
            said.append(
                f"{self.final_errors} pair(s) failed for good (a bad image, a malformed or "
                "duplicate row): fix the input, then run the batch with --retry-failed"
            )
        return said


def _listed(ids: list[str], count: int | None, indent: str = "  ") -> list[str]:
    lines = [f"{indent}{pair}" for pair in ids]
    if count is not None and count > len(ids):
        lines.append(f"{indent}... and {count - len(ids)} more")
    return lines


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


@dataclass(frozen=True, slots=True)
class KeptLine:
    """What the index keeps of a pair's last line: enough to count it, and to uncount it
    when a later line supersedes it."""

    file: int
    duplicated: bool
    status: str
    state: LineState
    latency: float | None
    confidence: float | None
    attempts: int
    code: str

    def text(self) -> str:
        values = (
            self.file,
            "1" if self.duplicated else "",
            self.status,
            self.state,
            "" if self.latency is None else repr(self.latency),
            "" if self.confidence is None else repr(self.confidence),
            self.attempts,
            self.code,
        )
        return "\t".join(map(str, values))

    @classmethod
    def parse(cls, text: str) -> KeptLine:
        file, dup, status, state, latency, confidence, attempts, code = text.split("\t", 7)
        return cls(
            int(file),
            dup == "1",
            status,
            state,  # type: ignore[arg-type]
            float(latency) if latency else None,
            float(confidence) if confidence else None,
            int(attempts),
            code,
        )

    @classmethod
    def of(cls, file: int, record: Mapping[str, Any]) -> KeptLine:
        attempts = record.get("attempts")
        code = record.get("sub_code") or record.get("error_type") or ""
        return cls(
            file,
            False,
            str(record["status"]),
            line_state(record),
            _number(record.get("latency_ms")),
            _number(record.get("confidence")),
            attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0,
            str(code),
        )


class Tally:
    """One pass over results files into a :class:`JobState` and an index of each pair's
    last line (key -> offset, :class:`KeptLine`)."""

    def __init__(self, index_dir: str | os.PathLike[str] | None, ticker: Ticker) -> None:
        self.index = KeyIndex(index_dir)
        self.ticker = ticker
        self.state = JobState()
        self.states: Counter[LineState] = Counter()
        self.error_candidates: list[str] = []

    def read(self, paths: Sequence[Path]) -> None:
        for number, path in enumerate(paths):
            reader = ResultsReader(
                path, results_format(path), self.ticker.for_file(path, path.stat().st_size)
            )
            lines = superseded = 0
            chunk: list[tuple[str, int, Mapping[str, Any]]] = []
            for offset, _raw, record in reader:
                if record is None:
                    self.state.unreadable += 1
                    continue
                lines += 1
                chunk.append((record_key(record), offset, record))
                if len(chunk) >= _CHUNK:
                    superseded += self._merge(number, chunk)
                    chunk.clear()
            superseded += self._merge(number, chunk)
            self.state.files[str(path)] = lines - superseded
            self.state.superseded += superseded

    def _merge(self, number: int, chunk: list[tuple[str, int, Mapping[str, Any]]]) -> int:
        """Count a chunk of lines; returns how many superseded a line of the same file."""
        before = self.index.get_many([key for key, _, _ in chunk])
        changed: dict[str, tuple[int, KeptLine]] = {}  # this chunk's updates, by key
        superseded = 0
        for (key, offset, record), entry in zip(chunk, before, strict=True):
            kept = changed.get(key)
            if kept is None and entry is not None:
                kept = (int(entry[0] or 0), KeptLine.parse(str(entry[1])))
            line = KeptLine.of(number, record)
            if kept is None:
                self._count(key, line, 1)
                changed[key] = (offset, line)
            elif kept[1].file == number:  # a later line of the same pair in this file
                superseded += 1
                self._count(key, kept[1], -1)
                self._count(key, line, 1)
                changed[key] = (offset, line)
            elif not kept[1].duplicated:  # the pair is in an earlier file: it counts there
                self.state.duplicated += 1
                if len(self.state.duplicated_ids) < _SHOWN:
                    self.state.duplicated_ids.append(key)
                changed[key] = (kept[0], dataclasses.replace(kept[1], duplicated=True))
        self.index.put_many((key, offset, kept.text()) for key, (offset, kept) in changed.items())
        return superseded

    def _count(self, key: str, kept: KeptLine, sign: int) -> None:
        state = self.state
        state.statuses[kept.status] += sign
        if kept.status in ("error", "no_face") and kept.code:
            state.codes[(kept.status, kept.code)] += sign
        if kept.status == "error":
            state.error_kinds[(kept.state, kept.code or "unknown")] += sign
        state.attempts += sign * kept.attempts
        if kept.latency is not None and kept.attempts:
            if sign > 0:
                state.latency.add(kept.latency / 1000)
            else:
                state.latency.remove(kept.latency / 1000)
        if kept.status in ("match", "no_match"):
            state.confidence.add(kept.confidence, kept.status, sign)
        self.states[kept.state] += sign
        if sign > 0 and kept.state != "decided" and len(self.error_candidates) < _CANDIDATES:
            self.error_candidates.append(key)

    def lookup(self, keys: list[str]) -> list[LineState | None]:
        """The state of each key's last line (``None``: no line)."""
        return [
            None if entry is None else KeptLine.parse(str(entry[1])).state
            for entry in self.index.get_many(keys)
        ]

    def finish(self) -> JobState:
        """The state without a manifest: every line's pair counts."""
        state = self.state
        state.statuses = +state.statuses  # drop the zeros that uncounting leaves
        state.codes = +state.codes
        state.error_kinds = +state.error_kinds
        state.decided = self.states["decided"]
        state.final_errors = self.states["final"]
        state.retryable = self.states["retryable"]
        for key, now in zip(self.error_candidates, self.lookup(self.error_candidates), strict=True):
            ids = state.retryable_ids if now == "retryable" else state.final_error_ids
            if now in ("retryable", "final") and len(ids) < _SHOWN and key not in ids:
                ids.append(key)
        return state

    def close(self) -> None:
        self.index.close()


def manifest_keys(
    specs: Iterable[PairSpec], index_dir: str | os.PathLike[str] | None = None
) -> Iterator[str]:
    """The key each pair's outcome is filed under, as the runner files it: a ``pair_id``
    seen before in the same run is a duplicate, filed under its line (``@line:N``)."""
    seen = KeyIndex(index_dir)
    try:
        chunk: list[PairSpec] = []
        for spec in specs:
            chunk.append(spec)
            if len(chunk) >= _CHUNK:
                yield from _keyed(chunk, seen)
                chunk = []
        yield from _keyed(chunk, seen)
    finally:
        seen.close()


def _keyed(chunk: list[PairSpec], seen: KeyIndex) -> list[str]:
    """The keys of a chunk of rows; ``seen`` learns their ids (one query each way)."""
    ids = [spec.pair_id for spec in chunk if spec.pair_id]
    before = {pair_id for pair_id, entry in zip(ids, seen.get_many(ids), strict=True) if entry}
    keys: list[str] = []
    new: dict[str, None] = {}
    for spec in chunk:
        if spec.pair_id and (spec.pair_id in before or spec.pair_id in new):
            keys.append(f"@line:{spec.line}")
            continue
        if spec.pair_id:
            new[spec.pair_id] = None
        keys.append(spec.key)
    seen.put_many((pair_id, None, None) for pair_id in new)
    return keys


def check_manifest(
    state: JobState,
    lookup: Lookup,
    distinct: int,
    manifest: str | os.PathLike[str],
    *,
    shard: tuple[int, int] | None,
    index_dir: str | os.PathLike[str] | None,
    ticker: Ticker | None = None,
) -> JobState:
    """Fill ``state``'s manifest figures: stream the manifest (``shard``'s part) and look
    each pair up (``lookup``: the state of each key's last line); ``distinct`` is the
    number of pairs the files hold."""
    state.shard = shard
    state.manifest_pairs = state.missing = 0
    state.decided = state.final_errors = state.retryable = 0
    state.retryable_ids, state.final_error_ids = [], []
    found = 0
    keys = manifest_keys(shard_filter(scan_manifest(manifest), shard), index_dir)
    chunk: list[str] = []
    for key in keys:
        chunk.append(key)
        if len(chunk) >= _CHUNK:
            found += _check(state, chunk, lookup(chunk))
            chunk.clear()
            if ticker is not None:
                ticker(Path(manifest), 0, 0, state.manifest_pairs)  # rows, not bytes
    found += _check(state, chunk, lookup(chunk))
    state.not_in_manifest = distinct - found
    return state


def _check(state: JobState, keys: list[str], found: list[LineState | None]) -> int:
    state.manifest_pairs = (state.manifest_pairs or 0) + len(keys)
    hits = 0
    for key, line in zip(keys, found, strict=True):
        if line is None:
            state.missing = (state.missing or 0) + 1
            ids = state.missing_ids
        else:
            hits += 1
            if line == "decided":
                state.decided += 1
                continue
            if line == "retryable":
                state.retryable += 1
                ids = state.retryable_ids
            else:
                state.final_errors += 1
                ids = state.final_error_ids
        if len(ids) < _SHOWN:
            ids.append(key)
    return hits


def result_paths(results: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(results, str | os.PathLike):
        return [Path(results)]
    return [Path(path) for path in results]


def shard_of(shard: tuple[int, int] | str | None) -> tuple[int, int] | None:
    return resolve_shard(shard) if isinstance(shard, str) else shard


def _job_state(
    results: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    manifest: str | os.PathLike[str] | None,
    shard: tuple[int, int] | str | None,
    index_dir: str | os.PathLike[str] | None,
    ticker: Ticker,
) -> JobState:
    tally = Tally(index_dir, ticker)
    try:
        tally.read(result_paths(results))
        state = tally.finish()
        if manifest is None:
            return state
        distinct = state.pairs
        return check_manifest(
            state,
            tally.lookup,
            distinct,
            manifest,
            shard=shard_of(shard),
            index_dir=index_dir,
            ticker=ticker,
        )
    finally:
        tally.close()


def job_state(
    results: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    manifest: str | os.PathLike[str] | None = None,
    *,
    shard: tuple[int, int] | str | None = None,
    index_dir: str | os.PathLike[str] | None = None,
    on_progress: ProgressCallback | None = None,
) -> JobState:
    """Read results files (one, or one per shard) and check them against ``manifest``.

    Args:
        results: A results file (JSONL, or CSV by its ``.csv`` suffix), or several.
        manifest: The manifest the pairs came from (CSV, JSONL or a folder); without it,
            the state covers the lines in the files only (``missing`` is ``None``).
        shard: ``(k, n)`` or ``"k/n"``: only this shard's part of the manifest is expected.
        index_dir: Where the on-disk indexes go (default: the temp folder).
        on_progress: Called now and then with a :class:`ScanProgress` while files are read.

    Returns:
        The :class:`JobState`; its ``exit_code`` is what ``batch`` exits with for it.

    Raises:
        OSError: a file cannot be read (``FileNotFoundError`` for a missing one).
        ValueError: a CSV file that is not a results file, a manifest without its header,
            a malformed shard.
        IndexStorageError: the index folder is full.
    """
    return _job_state(results, manifest, shard, index_dir, Ticker(on_progress))


async def job_state_async(
    results: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    manifest: str | os.PathLike[str] | None = None,
    *,
    shard: tuple[int, int] | str | None = None,
    index_dir: str | os.PathLike[str] | None = None,
    on_progress: ProgressCallback | None = None,
) -> JobState:
    """:func:`job_state` in a worker thread: the event loop runs meanwhile,
    ``on_progress`` is called on it, and cancelling stops the read within milliseconds."""
    return await in_worker(
        lambda ticker: _job_state(results, manifest, shard, index_dir, ticker), on_progress
    )
