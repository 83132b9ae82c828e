"""Bulk matching: manifests in, one outcome per pair out, within the plan's rate limits.

* :func:`read_manifest` streams pairs from CSV, JSONL or a folder of pair folders.
* :class:`BatchRunner` matches them with bounded concurrency and a multi-window limiter.
* :class:`ResultsFile` appends one line per outcome (the format: :func:`results_schema`),
  is written by one run at a time, and knows what a resume may skip.
* :class:`BatchSummary` keeps a run's counts and latency quantiles in constant memory.
* :func:`job_state` says what results files hold against the manifest (:class:`JobState`:
  decided, final errors, pairs still to run, and the exit code that gives).
* :func:`compare_results` says what changed since earlier decisions (:class:`Comparison`).
* :func:`write_report` writes both as one self-contained HTML file.
* :func:`run_job` is the whole job (signals, exit codes); :func:`check_manifest` the dry run.
"""

from __future__ import annotations

from facematch_async.batch._check import ManifestCheck, check_manifest
from facematch_async.batch._compare import Comparison, compare_results, compare_results_async
from facematch_async.batch._index import IndexStorageError
from facematch_async.batch._job import ExitCode, JobProgress, JobResult, run_job
from facematch_async.batch._lock import LockHolder, ResultsFileLockedError
from facematch_async.batch._manifest import ManifestProblem, PairSpec, read_manifest
from facematch_async.batch._outcome import PairError, PairOutcome, is_retryable_error
from facematch_async.batch._records import FORMAT_VERSION, results_schema
from facematch_async.batch._report import write_report
from facematch_async.batch._runner import BatchRunner, PairInput, StopReason
from facematch_async.batch._scan import ScanProgress
from facematch_async.batch._shard import in_shard, resolve_shard, shard_filter
from facematch_async.batch._sink import ResultsFile, ResultsFileError
from facematch_async.batch._state import JobState, job_state, job_state_async
from facematch_async.batch._summary import BatchSummary

__all__ = [
    "FORMAT_VERSION",
    "BatchRunner",
    "BatchSummary",
    "Comparison",
    "ExitCode",
    "IndexStorageError",
    "JobProgress",
    "JobResult",
    "JobState",
    "LockHolder",
    "ManifestCheck",
    "ManifestProblem",
    "PairError",
    "PairInput",
    "PairOutcome",
    "PairSpec",
    "ResultsFile",
    "ResultsFileError",
    "ResultsFileLockedError",
    "ScanProgress",
    "StopReason",
    "check_manifest",
    "compare_results",
    "compare_results_async",
    "in_shard",
    "is_retryable_error",
    "job_state",
    "job_state_async",
    "read_manifest",
    "resolve_shard",
    "results_schema",
    "run_job",
    "shard_filter",
    "write_report",
]
