"""Bulk matching: manifests in, one outcome per pair out, within the plan's rate limits.

* :func:`read_manifest` streams pairs from CSV, JSONL or a folder of pair folders.
* :class:`BatchRunner` matches them with bounded concurrency and a multi-window limiter.
* :class:`ResultsFile` appends one line per outcome and knows what a resume may skip.
* :class:`BatchSummary` keeps counts and latency quantiles in constant memory.
* :func:`run_job` is the whole job (signals, exit codes); :func:`check_manifest` the dry run.
"""

from __future__ import annotations

from facematch_async.batch._check import ManifestCheck, check_manifest
from facematch_async.batch._index import IndexStorageError
from facematch_async.batch._job import ExitCode, JobProgress, JobResult, run_job
from facematch_async.batch._manifest import ManifestProblem, PairSpec, read_manifest
from facematch_async.batch._outcome import PairError, PairOutcome
from facematch_async.batch._runner import BatchRunner, PairInput, StopReason
from facematch_async.batch._shard import resolve_shard, shard_filter
from facematch_async.batch._sink import ResultsFile, ResultsFileError
from facematch_async.batch._summary import BatchSummary

__all__ = [
    "BatchRunner",
    "BatchSummary",
    "ExitCode",
    "IndexStorageError",
    "JobProgress",
    "JobResult",
    "ManifestCheck",
    "ManifestProblem",
    "PairError",
    "PairInput",
    "PairOutcome",
    "PairSpec",
    "ResultsFile",
    "ResultsFileError",
    "StopReason",
    "check_manifest",
    "read_manifest",
    "resolve_shard",
    "run_job",
    "shard_filter",
]
