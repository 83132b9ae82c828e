"""``facematch-async summary``: what results files hold, against the manifest and against
earlier decisions (a thin caller of :func:`facematch_async.batch.job_state`,
:func:`~facematch_async.batch.compare_results` and :func:`~facematch_async.batch.write_report`).

Exit codes: 0 every pair has a decision, exactly one line, and every line is a result;
1 otherwise (pairs of ``--manifest`` without a decision, error lines, pairs in more than one
file, lines that are not results); 2 usage; 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from facematch_async.batch._compare import Comparison, compare_results
from facematch_async.batch._index import IndexStorageError
from facematch_async.batch._manifest import is_url
from facematch_async.batch._report import write_report
from facematch_async.batch._scan import ScanProgress
from facematch_async.batch._shard import resolve_shard
from facematch_async.batch._state import JobState, job_state
from facematch_async.cli._common import EXIT_ABORTED, EXIT_OK, EXIT_PAIRS_FAILED, UsageError

__all__ = ["add_summary_parser", "run_summary"]

_QUIET_FOR = 5.0  # seconds a read goes on before progress lines start (small files: none)


def add_summary_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``summary`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "summary",
        help="what results files hold: against --manifest, and what changed --against "
        "earlier decisions",
        description=(
            "Combined counts per status and sub_code and latency percentiles across results "
            "files (e.g. one per shard); with --manifest, the pairs with no line in any file, "
            "the final errors and the pairs still to run; with --against, what changed since "
            "earlier decisions. Exit codes: 0 every pair decided, 1 pairs without a decision, "
            "errors, pairs repeated or lines that are not results, 2 usage, 130 interrupted."
        ),
    )
    parser.add_argument("results", nargs="+", help="results files (JSONL, or CSV by suffix)")
    parser.add_argument("--manifest", help="the manifest the pairs came from")
    parser.add_argument("--shard", metavar="K/N", help="the results are shard K of N of --manifest")
    parser.add_argument(
        "--against",
        metavar="PREVIOUS",
        help="earlier decisions: a results file, or a CSV/JSONL export with pair_id and "
        "match (and confidence) from your own system; prints what changed",
    )
    parser.add_argument(
        "--changed",
        metavar="PATH",
        help="with --against: write one line per changed pair here (JSONL, or CSV by suffix)",
    )
    parser.add_argument(
        "--report",
        metavar="PATH",
        help="write a self-contained HTML report (counts, what changed, confidence "
        "histograms, errors, latency)",
    )
    parser.add_argument(
        "--index-dir", metavar="DIR", help="where the on-disk pair index goes (default $TMPDIR)"
    )
    parser.set_defaults(func=run_summary)
    return parser


class _Progress:
    """Progress lines on stderr for a long read (none for the first few seconds)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, progress: ScanProgress) -> None:
        now = time.monotonic()
        if now - self.started >= _QUIET_FOR and now - self.last >= _QUIET_FOR:
            self.last = now
            print(progress.format(), file=sys.stderr, flush=True)


def _check_paths(args: argparse.Namespace) -> None:
    for path in args.results:
        if Path(path).is_dir():
            raise UsageError(f"{path}: is a directory, not a results file")
        if not Path(path).is_file():
            raise UsageError(f"{path}: no such file")
    if args.manifest and not is_url(args.manifest) and not Path(args.manifest).exists():
        raise UsageError(f"{args.manifest}: no such manifest")
    if args.changed and not args.against:
        raise UsageError("--changed lists what changed --against earlier decisions: give both")
    if args.against and not Path(args.against).is_file():
        raise UsageError(f"--against {args.against}: no such file")
    if args.shard and not args.manifest:
        raise UsageError("--shard cuts --manifest to one shard's part: give --manifest")
    for option in ("changed", "report"):
        value = getattr(args, option)
        if value and not Path(value).resolve().parent.is_dir():
            raise UsageError(f"--{option} {value}: the folder does not exist")


def run_summary(args: argparse.Namespace) -> int:
    """``facematch-async summary``: prints the report; see the module for the exit codes."""
    _check_paths(args)
    try:
        shard = resolve_shard(args.shard) if args.shard else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    comparison: Comparison | None = None
    progress = _Progress()
    try:
        if args.against:
            comparison = compare_results(
                args.results,
                args.against,
                changed=args.changed,
                manifest=args.manifest,
                shard=shard,
                index_dir=args.index_dir,
                on_progress=progress,
            )
            state = comparison.current
        else:
            state = job_state(
                args.results,
                args.manifest,
                shard=shard,
                index_dir=args.index_dir,
                on_progress=progress,
            )
        if args.report:
            try:
                write_report(args.report, state, comparison, sources=_sources(args, shard))
            except OSError as exc:
                raise UsageError(f"--report {args.report}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        print("\nfacematch-async summary: interrupted", file=sys.stderr)
        return EXIT_ABORTED
    except (OSError, ValueError, csv.Error) as exc:  # unreadable, another format, no header
        raise UsageError(_reason(exc)) from None
    print(state.format())
    if comparison is not None:
        print(comparison.format())
    if args.report:
        print(f"report: {args.report}")
    sys.stdout.flush()
    return _exit_code(state)


def _reason(exc: Exception) -> str:
    """One line for what could not be read (or written)."""
    if isinstance(exc, IndexStorageError | ValueError | csv.Error):
        return str(exc)  # names the file, or the folder
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot use {exc.filename}: {exc.strerror or exc}"
    return f"cannot read: {exc}"


def _sources(args: argparse.Namespace, shard: tuple[int, int] | None) -> dict[str, str]:
    sources = {"results": ", ".join(args.results)}
    if args.manifest:
        sources["manifest"] = args.manifest
    if shard:
        sources["shard"] = f"{shard[0]}/{shard[1]}"
    if args.against:
        sources["previous decisions"] = args.against
    return sources


def _exit_code(state: JobState) -> int:
    for line in state.advice():
        print(f"facematch-async summary: {line}", file=sys.stderr)
    if state.unreadable:  # a file in another format, or garbage: not a complete picture
        print(
            f"facematch-async summary: {state.unreadable} line(s) are not results "
            "(a file in another format? see --help)",
            file=sys.stderr,
        )
    return EXIT_OK if state.complete else EXIT_PAIRS_FAILED
