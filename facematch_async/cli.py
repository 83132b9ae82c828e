"""The ``facematch-async`` command: ``sandbox`` (and, later, ``match`` and ``batch``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from facematch_async import __version__


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser; each subcommand sets ``func(args) -> int``."""
    parser = argparse.ArgumentParser(
        prog="facematch-async",
        description="Deepvue Face Match: client, batch runner and offline sandbox.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)

    from facematch_async.sandbox._cli import add_sandbox_parser

    add_sandbox_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
