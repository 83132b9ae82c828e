"""The ``facematch-async`` command: ``match``, ``batch`` and ``sandbox``.

Credentials never travel as flags (flags show in ``ps``): the client secret comes from
``$DEEPVUE_CLIENT_SECRET``, a file (``--client-secret-file``), or a prompt on a terminal.

Exit codes (``batch``; ``match`` uses 0, 1 and 2):

* 0: every pair has a decision (``match``, ``no_match`` or ``no_face``)
* 1: some pairs ended as ``error`` (and, for ``--dry-run``, some would)
* 2: usage: bad arguments, missing credentials, results file already present
* 3: the batch stopped because every further pair would fail: the credentials were
  refused, or the API looks down (many pairs in a row without a connection or with 5xx);
  resume once fixed
* 74: a disk problem stopped the batch: the results file or the on-disk pair index
  cannot be written (a full disk, a file-size limit); every line written is intact, resume
  once fixed
* 75: ``--stop-at-quota`` stopped at the daily quota (resume tomorrow)
* 130: interrupted (Ctrl-C / SIGTERM); resume with the printed command
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from facematch_async import __version__

__all__ = [
    "EXIT_ABORTED",
    "EXIT_CREDENTIALS",
    "EXIT_IO",
    "EXIT_OK",
    "EXIT_PAIRS_FAILED",
    "EXIT_QUOTA",
    "EXIT_USAGE",
    "add_connection_arguments",
    "build_parser",
    "main",
    "read_secret",
]

EXIT_OK = 0
EXIT_PAIRS_FAILED = 1
EXIT_USAGE = 2
EXIT_CREDENTIALS = 3
EXIT_IO = 74  # EX_IOERR: the results file or the index cannot be written
EXIT_QUOTA = 75  # EX_TEMPFAIL: try again later
EXIT_ABORTED = 130  # 128 + SIGINT, as shells report it


class UsageError(Exception):
    """A problem with the command line or the environment (exit code 2)."""


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--base-url``, ``--client-id``, ``--client-secret-file``, timeouts and retries."""
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--base-url",
        default=os.environ.get("DEEPVUE_BASE_URL"),
        help="API base URL (env DEEPVUE_BASE_URL, else production)",
    )
    group.add_argument(
        "--client-id",
        default=os.environ.get("DEEPVUE_CLIENT_ID"),
        help="Deepvue client id (env DEEPVUE_CLIENT_ID)",
    )
    group.add_argument(
        "--client-secret-file",
        metavar="PATH",
        help="read the client secret from this file (else env DEEPVUE_CLIENT_SECRET, else a "
        "prompt on a terminal); there is deliberately no flag for the secret itself",
    )
    group.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per attempt (%(default)s)"
    )
    group.add_argument("--max-retries", type=int, default=2, help="retries per call (%(default)s)")
    group.add_argument(
        "--image-read-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="an image file not read within this long (a stuck network mount) is that pair's "
        "ImageReadError (%(default)s)",
    )


def read_secret(args: argparse.Namespace) -> str:
    """The client secret: from ``--client-secret-file``, the environment, or a prompt.

    Raises:
        UsageError: none of them gave one.
    """
    if args.client_secret_file:
        try:
            with open(args.client_secret_file, encoding="utf-8") as file:
                secret = file.readline().strip()
        except OSError as exc:
            raise UsageError(f"cannot read --client-secret-file: {exc.strerror}") from None
        if not secret:
            raise UsageError("--client-secret-file is empty")
        return secret
    secret = os.environ.get("DEEPVUE_CLIENT_SECRET", "")
    if secret:
        return secret
    if sys.stdin.isatty():
        secret = getpass.getpass("Deepvue client secret: ")
        if secret:
            return secret
    raise UsageError(
        "no client secret: set DEEPVUE_CLIENT_SECRET or pass --client-secret-file PATH"
    )


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``FaceMatchClient`` from the connection arguments."""
    if not args.client_id:
        raise UsageError("no client id: set DEEPVUE_CLIENT_ID or pass --client-id")
    if args.max_retries < 0 or args.timeout <= 0 or not args.image_read_timeout > 0:
        raise UsageError("--max-retries must be >= 0, --timeout and --image-read-timeout > 0")
    return {
        "client_id": args.client_id,
        "client_secret": read_secret(args),
        "base_url": args.base_url,
        "timeout": args.timeout,
        "max_retries": args.max_retries,
        "image_read_timeout": args.image_read_timeout,
    }


def _add_match_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = subparsers.add_parser(
        "match",
        allow_abbrev=False,  # else --client-secret would pass as --client-secret-file
        help="match two images and print the result as JSON",
        description="Ask the API whether two images show the same person; prints JSON.",
    )
    parser.add_argument("file_a", help="first image (JPEG or PNG), e.g. the selfie")
    parser.add_argument("file_b", help="second image, e.g. the ID document")
    parser.add_argument("--api-version", choices=("v1", "v2"), default="v1")
    add_connection_arguments(parser)
    parser.set_defaults(func=run_match)


def run_match(args: argparse.Namespace) -> int:
    """``facematch-async match``: 0 with a decision, 1 on an error (printed as JSON)."""
    from facematch_async import FaceMatchClient, FaceMatchError
    from facematch_async._responses import redact

    options = client_options(args)

    async def call() -> int:
        async with FaceMatchClient(api_version=args.api_version, **options) as client:
            try:
                result = await client.match(args.file_a, args.file_b)
            except Exception as error:  # a JSON error and one line, never a traceback
                if isinstance(error, FaceMatchError):
                    message, line = error.message, str(error)
                else:  # a bug: still no traceback, and no secret its text might quote
                    message = redact(str(error), client._secrets())
                    line = f"{message} (unexpected; please report it)"
                body: dict[str, Any] = {
                    "error": {
                        "type": type(error).__name__,
                        "message": message,
                        "sub_code": getattr(error, "sub_code", None),
                        "status_code": getattr(error, "status_code", None),
                        "transaction_id": getattr(error, "transaction_id", None),
                    }
                }
                print(json.dumps(body, indent=2))
                print(f"facematch-async match: {type(error).__name__}: {line}", file=sys.stderr)
                return EXIT_PAIRS_FAILED
        body = {  # the same name: a decision or the error above, never both
            "match": result.match,
            "confidence": result.confidence,
            "sub_code": result.sub_code,
            "message": result.message,
            "transaction_id": result.transaction_id,
        }
        print(json.dumps(body, indent=2))
        return EXIT_OK

    return asyncio.run(call())


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser; each subcommand sets ``func(args) -> int``."""
    parser = argparse.ArgumentParser(
        prog="facematch-async",
        description="Deepvue Face Match: client, batch runner and offline sandbox.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)

    from facematch_async.batch._cli import add_batch_parser
    from facematch_async.sandbox._cli import add_sandbox_parser

    _add_match_parser(subparsers)
    add_batch_parser(subparsers)
    add_sandbox_parser(subparsers)
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
    return code


if __name__ == "__main__":  # pragma: no cover
    # `python -m facematch_async.cli` runs this file as __main__, a second copy of the
    # module whose UsageError the subcommands do not raise: run the package's own copy.
    from facematch_async.cli import main as package_main

    sys.exit(package_main())
