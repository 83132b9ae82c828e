"""``facematch-async summary``: shards' results files together (a thin caller of
:func:`facematch_async.batch._combine.summarize`).

Exit codes: 0 every manifest pair has exactly one line (or, without a manifest, no pair is
in two files), 1 some are missing or in more than one file, or some lines are not results,
2 usage.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from facematch_async.batch._combine import summarize
from facematch_async.batch._manifest import is_url
from facematch_async.cli._common import EXIT_OK, EXIT_PAIRS_FAILED, UsageError

__all__ = ["add_summary_parser", "run_summary"]


def add_summary_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``summary`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "summary",
        help="combine shards' results files; with --manifest, list missing pairs",
        description=(
            "Combined counts per status and sub_code and latency percentiles across results "
            "files (e.g. one per shard); with --manifest, the pairs with no line in any file. "
            "Pairs with lines in more than one file are always listed. Exit codes: 0 complete, "
            "1 pairs missing or repeated (or lines that are not results), 2 usage."
        ),
    )
    parser.add_argument("results", nargs="+", help="results files (JSONL, or CSV by suffix)")
    parser.add_argument("--manifest", help="the manifest the shards came from")
    parser.set_defaults(func=run_summary)
    return parser


def run_summary(args: argparse.Namespace) -> int:
    """``facematch-async summary``: prints the report; 0 complete, 1 pairs missing/repeated."""
    for path in args.results:
        if Path(path).is_dir():
            raise UsageError(f"{path}: is a directory, not a results file")
        if not Path(path).is_file():
            raise UsageError(f"{path}: no such file")
    if args.manifest and not is_url(args.manifest) and not Path(args.manifest).exists():
        raise UsageError(f"{args.manifest}: no such manifest")
    try:
        summary = summarize(args.results, args.manifest)
    except (OSError, ValueError, csv.Error) as exc:  # a manifest without its header, say
        raise UsageError(f"cannot read: {exc}") from None
    print(summary.format())
    sys.stdout.flush()
    if summary.unreadable:  # a file in another format, or garbage: not a complete picture
        print(
            f"facematch-async summary: {summary.unreadable} line(s) are not results "
            "(a file in another format? see --help)",
            file=sys.stderr,
        )
        return EXIT_PAIRS_FAILED
    return EXIT_OK if summary.complete else EXIT_PAIRS_FAILED
