"""What the commands share: exit codes, usage errors, the connection arguments, the secret."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from facematch_async.batch import ExitCode

if TYPE_CHECKING:
    from facematch_async import FaceMatchClient

__all__ = [
    "EXIT_ABORTED",
    "EXIT_CREDENTIALS",
    "EXIT_IO",
    "EXIT_OK",
    "EXIT_PAIRS_FAILED",
    "EXIT_QUOTA",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "UsageError",
    "add_connection_arguments",
    "client_options",
    "logging_to_stderr",
    "make_client",
    "read_secret",
]

# The job's exit codes (one source: facematch_async.batch.ExitCode), by the names the
# commands use.
EXIT_OK = ExitCode.OK
EXIT_PAIRS_FAILED = ExitCode.PAIRS_FAILED
EXIT_USAGE = ExitCode.USAGE
EXIT_CREDENTIALS = ExitCode.CREDENTIALS
EXIT_UNAVAILABLE = ExitCode.UNAVAILABLE
EXIT_IO = ExitCode.IO
EXIT_QUOTA = ExitCode.QUOTA
EXIT_ABORTED = ExitCode.INTERRUPTED


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


def make_client(**options: Any) -> FaceMatchClient:
    """A client from the options and the environment; a bad setting (``$DEEPVUE_RATE_LIMIT``,
    ``$DEEPVUE_RATE_LIMIT_STORE``, ...) is a usage error, never a traceback."""
    from facematch_async import FaceMatchClient

    try:
        return FaceMatchClient(**options)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


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


@contextlib.contextmanager
def logging_to_stderr(command: str, level: str) -> Iterator[None]:
    """While the block runs, show the library's log lines of ``level`` and above on stderr,
    each prefixed with the command's name (a line the project wrote, never a dependency's);
    the logger is left as it was after (``main()`` may run again in one process)."""
    library = logging.getLogger("facematch_async")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"facematch-async {command}: %(message)s"))
    handler.setLevel(level)
    before = library.level
    library.addHandler(handler)
    if library.getEffectiveLevel() > handler.level:
        library.setLevel(level)
    try:
        yield
    finally:
        library.removeHandler(handler)
        library.setLevel(before)
