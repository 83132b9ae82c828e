"""The ``facematch-async sandbox`` subcommand."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys

from facematch_async.sandbox._config import SandboxConfig
from facematch_async.sandbox._server import serve

__all__ = ["add_sandbox_parser"]


def add_sandbox_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``sandbox`` on ``subparsers``; its ``func(args)`` runs the server."""
    parser = subparsers.add_parser(
        "sandbox",
        help="run a local Deepvue-compatible server (test engine, no face recognition)",
        description="Run a local Deepvue-compatible Face Match server for tests and demos.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (%(default)s)")
    parser.add_argument(
        "--port", type=int, default=8080, help="TCP port, 0 for any free one (%(default)s)"
    )
    parser.add_argument(
        "--client-id",
        default=os.environ.get("DEEPVUE_CLIENT_ID", "sandbox-client"),
        help="accepted client id (env DEEPVUE_CLIENT_ID, else sandbox-client)",
    )
    parser.add_argument(
        "--client-secret",
        default=os.environ.get("DEEPVUE_CLIENT_SECRET", "sandbox-secret"),
        help="accepted client secret (env DEEPVUE_CLIENT_SECRET, else sandbox-secret)",
    )
    parser.add_argument(
        "--token-ttl",
        type=float,
        default=86400.0,
        metavar="SECONDS",
        help="access-token lifetime (%(default)s)",
    )
    parser.add_argument(
        "--inactive", action="store_true", help="answer 400 'Inactive client_id' to everything"
    )
    parser.add_argument(
        "--verdict-status",
        type=int,
        default=400,
        metavar="STATUS",
        help="HTTP status of NO_FACE_FOUND / UNSUPPORTED_FILE_FORMAT answers (%(default)s)",
    )
    parser.set_defaults(func=run_sandbox)
    return parser


def run_sandbox(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; returns the exit code."""
    try:
        config = SandboxConfig(
            client_id=args.client_id,
            client_secret=args.client_secret,
            token_ttl=args.token_ttl,
            inactive=args.inactive,
            verdict_status=args.verdict_status,
        )
    except ValueError as exc:
        print(f"facematch-async sandbox: {exc}", file=sys.stderr)
        return 2
    try:
        # KeyboardInterrupt only escapes where serve() could not install its signal handlers.
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(config, args.host, args.port))
    except OSError as exc:  # e.g. the port is taken
        print(f"facematch-async sandbox: {exc}", file=sys.stderr)
        return 1
    return 0
