"""Bulk matching: manifests in, one outcome per pair out, within the plan's rate limits.

* :func:`read_manifest` streams pairs from CSV, JSONL or a folder of pair folders.
* :class:`BatchRunner` matches them with bounded concurrency and a multi-window limiter.
* :class:`ResultsFile` appends one line per outcome and knows what a resume may skip.
* :class:`BatchSummary` keeps counts and latency quantiles in constant memory.
"""

from __future__ import annotations

from facematch_async.batch._index import IndexStorageError
from facematch_async.batch._manifest import ManifestProblem, PairSpec, read_manifest
from facematch_async.batch._outcome import PairError, PairOutcome
from facematch_async.batch._runner import BatchRunner, PairInput
from facematch_async.batch._sink import ResultsFile, ResultsFileError
from facematch_async.batch._summary import BatchSummary

__all__ = [
    "BatchRunner",
    "BatchSummary",
    "IndexStorageError",
    "ManifestProblem",
    "PairError",
    "PairInput",
    "PairOutcome",
    "PairSpec",
    "ResultsFile",
    "ResultsFileError",
    "read_manifest",
]
