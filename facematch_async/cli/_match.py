"""The ``facematch-async match`` command: one pair, the decision as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from facematch_async.cli._common import (
    EXIT_OK,
    EXIT_PAIRS_FAILED,
    add_connection_arguments,
    client_options,
    make_client,
)

__all__ = ["add_match_parser", "run_match"]


def add_match_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Register ``match`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "match",
        allow_abbrev=False,  # else --client-secret would pass as --client-secret-file
        help="match two images and print the result as JSON",
        description="Ask the API whether two images show the same person; prints JSON. "
        "Exit codes: 0 a decision (match or no_match), 1 the call failed (the error as one "
        "line on stderr: no face, a bad image, refused credentials, the API unreachable), "
        "2 usage.",
    )
    parser.add_argument("file_a", help="first image (JPEG or PNG), e.g. the selfie")
    parser.add_argument("file_b", help="second image, e.g. the ID document")
    parser.add_argument("--api-version", choices=("v1", "v2"), default="v1")
    add_connection_arguments(parser)
    parser.set_defaults(func=run_match)


def run_match(args: argparse.Namespace) -> int:
    """``facematch-async match``: 0 with a decision, 1 on an error (printed as JSON)."""
    from facematch_async import FaceMatchError
    from facematch_async._responses import redact

    options = client_options(args)

    async def call() -> int:
        async with make_client(api_version=args.api_version, **options) as client:
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
