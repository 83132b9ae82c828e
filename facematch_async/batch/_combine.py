"""Shards' results files together, checked against the manifest (``facematch-async summary``).

```sh
facematch-async summary results-*.jsonl --manifest pairs.csv
```

:func:`summarize` gives the combined counts per status and ``sub_code`` and the latency
percentiles, and with a manifest which pairs have no line in any file. Pairs with lines in
more than one file are listed (a shard run twice, or two shards that disagreed on N); each
pair counts once, by its line in the first file named. Within a file a later line supersedes
an earlier one, as for ``--resume``. Memory stays flat for millions of pairs: pair keys go into
on-disk indexes (:class:`~facematch_async.batch._index.KeyIndex`), and only the first few
problem pairs are kept to print.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facematch_async.batch._index import KeyIndex
from facematch_async.batch._manifest import pair_key, read_manifest
from facematch_async.batch._summary import LatencyHistogram, format_counts

__all__ = ["ShardsSummary", "summarize"]

_SHOWN = 20  # problem pairs listed by name; the rest are counted


@dataclass
class ShardsSummary:
    """Combined statistics over several results files.

    Attributes:
        files: Lines read per file (after superseded lines are dropped).
        statuses: Pairs per status, each pair counted once.
        codes: Pairs per ``(status, sub_code or error type)`` for errors and no-faces.
        latency: Latencies of pairs that made requests.
        attempts: Face-match requests, all pairs together.
        duplicated: Pairs with lines in more than one file; ``duplicated_ids`` the first few.
        missing: Manifest pairs with no line (``None`` without a manifest).
        unreadable: Lines that could not be parsed.
    """

    files: dict[str, int] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    attempts: int = 0
    duplicated: int = 0
    duplicated_ids: list[str] = field(default_factory=list)
    missing: int | None = None
    missing_ids: list[str] = field(default_factory=list)
    unreadable: int = 0

    @property
    def pairs(self) -> int:
        """Distinct pairs with a line in some file."""
        return sum(self.statuses.values())

    @property
    def complete(self) -> bool:
        """No pair missing, none in more than one file."""
        return not self.duplicated and not self.missing

    def format(self) -> str:
        """A human-readable report."""
        lines = [
            f"{self.pairs} pairs in {len(self.files)} files, {self.attempts} face-match requests"
        ]
        lines += [f"  {name}: {count} lines" for name, count in self.files.items()]
        lines += format_counts(self.statuses, self.codes, self.latency)
        if self.unreadable:
            lines.append(f"  {self.unreadable} unreadable lines ignored")
        lines.append(f"in more than one file: {self.duplicated}")
        lines += [f"  {pair}" for pair in self.duplicated_ids]
        if self.duplicated > len(self.duplicated_ids):
            lines.append(f"  ... and {self.duplicated - len(self.duplicated_ids)} more")
        if self.missing is not None:
            lines.append(f"in the manifest but in no file: {self.missing}")
            lines += [f"  {pair}" for pair in self.missing_ids]
            if self.missing > len(self.missing_ids):
                lines.append(f"  ... and {self.missing - len(self.missing_ids)} more")
        return "\n".join(lines)


def _records(path: Path) -> Iterator[tuple[int, Mapping[str, Any] | None]]:
    """``(offset, record or None if unreadable)`` for each complete line of a results file."""
    is_csv = path.suffix.lower() == ".csv"
    header: list[str] | None = None
    with open(path, "rb") as file:
        offset = 0
        for raw in file:
            start, offset = offset, offset + len(raw)
            if not raw.endswith(b"\n"):
                continue  # a torn last line: its pair was not recorded
            text = raw.decode("utf-8", errors="replace")
            try:
                if not is_csv:
                    record = json.loads(text)
                    yield start, record if isinstance(record, dict) else None
                    continue
                row = next(csv.reader(io.StringIO(text)))
            except (ValueError, StopIteration):
                yield start, None
                continue
            if header is None:
                header = row
                continue
            yield start, dict(zip(header, row, strict=False)) if len(row) == len(header) else None


def _key(record: Mapping[str, Any]) -> str:
    try:
        line = int(record.get("line") or "")
    except ValueError:
        line = None
    return pair_key(str(record.get("pair_id") or ""), line, record.get("sub_code") or None)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def summarize(
    paths: list[str | Path],
    manifest: str | Path | None = None,
    *,
    index_dir: str | Path | None = None,
) -> ShardsSummary:
    """Combine ``paths`` (JSONL, or CSV by suffix) and check them against ``manifest``.

    Raises:
        OSError: a file cannot be read.
    """
    summary = ShardsSummary()
    seen = KeyIndex(index_dir)  # pair -> (number of files, None)
    try:
        for number, path in enumerate(map(Path, paths)):
            last = KeyIndex(index_dir)  # pair -> offset of its last line in this file
            try:
                for offset, record in _records(path):
                    if record is not None and "pair_id" in record:
                        last.put(_key(record), offset)
                used = 0
                for offset, record in _records(path):
                    if record is None or "pair_id" not in record:
                        summary.unreadable += 1
                        continue
                    key = _key(record)
                    entry = last.get(key)
                    if entry is None or entry[0] != offset:
                        continue  # superseded by a later line of the same file
                    used += 1
                    before = seen.get(key)
                    if before is not None:
                        copies = before[0] or 1
                        if copies == 1:
                            summary.duplicated += 1
                            if len(summary.duplicated_ids) < _SHOWN:
                                summary.duplicated_ids.append(key)
                        seen.put(key, copies + 1)
                        continue
                    seen.put(key, 1, str(number))
                    _count(summary, record)
            finally:
                last.close()
            summary.files[str(path)] = used
        if manifest is not None:
            summary.missing = 0
            for spec in read_manifest(manifest, confined=False):  # its keys only: no reads
                if seen.get(spec.key) is None:
                    summary.missing += 1
                    if len(summary.missing_ids) < _SHOWN:
                        summary.missing_ids.append(spec.key)
    finally:
        seen.close()
    return summary


def _count(summary: ShardsSummary, record: Mapping[str, Any]) -> None:
    status = str(record.get("status") or "error")
    summary.statuses[status] += 1
    code = record.get("sub_code") or record.get("error_type")
    if status in ("error", "no_face") and code:
        summary.codes[(status, str(code))] += 1
    attempts = int(_number(record.get("attempts")) or 0)
    summary.attempts += attempts
    latency = _number(record.get("latency_ms"))
    if latency is not None and attempts:
        summary.latency.add(latency / 1000)
