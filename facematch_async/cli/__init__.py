"""The ``facematch-async`` command: ``match``, ``batch``, ``sandbox`` and ``summary``.

Credentials never travel as flags (flags show in ``ps``): the client secret comes from
``$DEEPVUE_CLIENT_SECRET``, a file (``--client-secret-file``), or a prompt on a terminal.

Exit codes (``batch``; ``match`` uses 0, 1 and 2):

* 0: every pair has a decision (``match``, ``no_match`` or ``no_face``)
* 1: some pairs ended as ``error`` (and, for ``--dry-run``, some would)
* 2: usage: bad arguments, missing credentials, results file already present
* 3: the batch stopped because every further pair would fail: the credentials were
  refused, or the rate-limit store cannot be used; resume once fixed
* 69: the API looks down (many pairs in a row without a connection or with 5xx); resume
  later
* 74: a disk problem stopped the batch: the results file or the on-disk pair index
  cannot be written (a full disk, a file-size limit); every line written is intact, resume
  once fixed
* 75: ``--stop-at-quota`` stopped at the daily quota (resume tomorrow)
* 130: interrupted (Ctrl-C / SIGTERM); resume with the printed command
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from facematch_async._version import __version__
from facematch_async.cli._batch import add_batch_parser
from facematch_async.cli._common import EXIT_USAGE, UsageError
from facematch_async.cli._match import add_match_parser
from facematch_async.cli._sandbox import add_sandbox_parser
from facematch_async.cli._summary import add_summary_parser

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser; each subcommand sets ``func(args) -> int``."""
    parser = argparse.ArgumentParser(
        prog="facematch-async",
        description="Deepvue Face Match: client, batch runner and offline sandbox.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)

    add_match_parser(subparsers)
    add_batch_parser(subparsers)
    add_sandbox_parser(subparsers)
    add_summary_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # so that a stopped batch can print the command that resumes it
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"facematch-async {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `... | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141  # 128 + SIGPIPE, as a shell reports it
    return code
