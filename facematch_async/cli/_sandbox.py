"""The ``facematch-async sandbox`` subcommand."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys

from facematch_async.sandbox._choice import ENGINE_NAMES
from facematch_async.sandbox._config import SandboxConfig
from facematch_async.sandbox._random_faults import FaultConfig
from facematch_async.sandbox._ratelimit import PLANS
from facematch_async.sandbox._server import serve
from facematch_async.sandbox._unknowns import (
    PESSIMISTIC_NULL_CONFIDENCE,
    PESSIMISTIC_PLAN,
    PESSIMISTIC_REVOKE_RATE,
    PESSIMISTIC_TOKEN_TTL,
    PESSIMISTIC_VERDICT_STATUSES,
)

__all__ = ["add_sandbox_parser"]


def add_sandbox_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``sandbox`` on ``subparsers``; its ``func(args)`` runs the server."""
    parser = subparsers.add_parser(
        "sandbox",
        help="run a local Deepvue-compatible server (dlib face recognition with the face extra)",
        description="Run a local Deepvue-compatible Face Match server for tests and demos.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (%(default)s)")
    parser.add_argument(
        "--port", type=_port, default=8080, help="TCP port, 0 for any free one (%(default)s)"
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
        default=None,
        metavar="SECONDS",
        help=f"access-token lifetime (86400; {PESSIMISTIC_TOKEN_TTL:g} with --pessimistic)",
    )
    parser.add_argument(
        "--inactive",
        action="store_true",
        help="answer 400 'Inactive client_id' to everything from the client (authorize, and "
        "facematch with its key or a token)",
    )
    parser.add_argument(
        "--verdict-status",
        type=_statuses,
        default=None,
        metavar="STATUS[,STATUS...]",
        help="HTTP status of NO_FACE_FOUND / UNSUPPORTED_FILE_FORMAT answers; several are "
        "taken in turn (400; "
        f"{','.join(map(str, PESSIMISTIC_VERDICT_STATUSES))} with --pessimistic)",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINE_NAMES,
        default="auto",
        help="face engine: 'auto' is dlib (real face recognition) when the face extra is "
        "installed, else 'test'; 'dlib' insists on it; 'test' matches by fm-identity tag or "
        "exact bytes and does NOT recognise faces. The choice is printed on stderr "
        "(%(default)s)",
    )
    modes = parser.add_argument_group("production's unknowns (see the README's table)")
    modes.add_argument(
        "--pessimistic",
        action="store_true",
        help="every unknown at its least forgiving plausible value at once: the plan's rate "
        f"limit ({PESSIMISTIC_PLAN} unless --rate-limit), v1 confidence null in about "
        f"{PESSIMISTIC_NULL_CONFIDENCE * 100:.0f}%% of successes, strict uploads, verdict statuses "
        "in turn, a confidence scale of the run's own, short-lived tokens and about "
        f"{PESSIMISTIC_REVOKE_RATE * 100:.0f}%% of calls with their token revoked; flags given "
        "explicitly win, and --seed repeats a run's draws",
    )
    modes.add_argument(
        "--null-confidence",
        action="store_true",
        help='answer v1 successes with "confidence": null, as the vendor\'s v1 example does',
    )
    modes.add_argument(
        "--strict-uploads",
        action="store_true",
        help="answer UNSUPPORTED_FILE_FORMAT to a file part whose name or Content-Type is not "
        "JPEG/PNG (PDF too on v2), e.g. Node's 'blob' or application/octet-stream",
    )
    modes.add_argument(
        "--read-timeout",
        type=_read_timeout,
        default=30.0,
        metavar="SECONDS",
        help="close a connection that has not sent its headers within this many seconds, or "
        "whose body goes quiet that long between two reads (408; a steady slow upload is "
        "never cut); 0 waits forever (%(default)s)",
    )
    limits = parser.add_argument_group("rate limits (per API key, sliding windows, facematch)")
    limits.add_argument(
        "--rate-limit",
        default=None,
        metavar="SPEC",
        help=f"a plan ({', '.join(PLANS)}), a spec such as '10/s,300/min', or 'none' (no "
        f"limit; {PESSIMISTIC_PLAN} with --pessimistic)",
    )
    limits.add_argument(
        "--retry-after",
        action="store_true",
        help="send Retry-After with 429s (Deepvue documents none)",
    )
    faults = parser.add_argument_group("random faults (facematch routes; rates are 0..1)")
    faults.add_argument(
        "--latency",
        type=_latency,
        default=0.0,
        metavar="SECONDS|LOW-HIGH",
        help="added latency, fixed or uniformly random, e.g. 0.2 or 0.1-0.5",
    )
    for flag, what in (
        ("--error-rate-500", "answer 500 Internal Server Error"),
        ("--error-rate-503", "answer 503 Source Unavailable"),
        ("--html-502-rate", "answer 502 with a proxy's HTML page"),
        ("--drop-rate", "close the connection without answering"),
        ("--stall-rate", "stall for --stall-seconds before answering"),
        ("--rate-429-burst", "start a burst of --burst-length 429s"),
    ):
        faults.add_argument(flag, type=_rate, default=0.0, metavar="RATE", help=what)
    faults.add_argument(
        "--revoke-rate",
        type=_rate,
        default=None,
        metavar="RATE",
        help="revoke the request's token (403 Not a valid token) "
        f"(0; {PESSIMISTIC_REVOKE_RATE} with --pessimistic)",
    )
    faults.add_argument(
        "--stall-seconds", type=float, default=30.0, metavar="SECONDS", help="(%(default)s)"
    )
    faults.add_argument(
        "--burst-length", type=int, default=3, metavar="N", help="429s per burst (%(default)s)"
    )
    faults.add_argument(
        "--faults-on-authorize",
        action="store_true",
        help="inject faults on /v1/authorize too",
    )
    faults.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed for repeatable faults (and --pessimistic's draws: its confidence scale, "
        "nulls and revocations; it picks one and prints it without)",
    )
    parser.set_defaults(func=run_sandbox)
    return parser


def _latency(text: str) -> float | tuple[float, float]:
    """``"0.2"`` or ``"0.1-0.5"``."""
    low, dash, high = text.partition("-")
    try:
        return (float(low), float(high)) if dash else float(low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS or LOW-HIGH, got {text!r}") from None


def _port(text: str) -> int:
    """A TCP port, 0 to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return port


def _read_timeout(text: str) -> float | None:
    """Positive seconds, or 0 for none."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < math.inf:  # NaN and infinity too
        raise argparse.ArgumentTypeError(f"expected seconds (0 for none), got {text!r}")
    return seconds or None


def _statuses(text: str) -> int | tuple[int, ...]:
    """``"400"`` or ``"400,200,422"``."""
    try:
        found = tuple(int(part) for part in text.split(","))
    except ValueError:
        found = ()
    if not found or not all(100 <= status <= 599 for status in found):
        raise argparse.ArgumentTypeError(f"expected HTTP statuses such as 400,200, got {text!r}")
    return found[0] if len(found) == 1 else found


def _rate(text: str) -> float:
    """A probability between 0 and 1."""
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not 0 <= rate <= 1:
        raise argparse.ArgumentTypeError(f"expected a rate between 0 and 1, got {text!r}")
    return rate


def _revoke_rate(args: argparse.Namespace) -> float:
    """--revoke-rate as given, else --pessimistic's."""
    if args.revoke_rate is not None:
        return float(args.revoke_rate)
    return PESSIMISTIC_REVOKE_RATE if args.pessimistic else 0.0


def _faults(args: argparse.Namespace) -> FaultConfig | None:
    """The random faults the flags ask for; ``None`` when they ask for none."""
    paths = ("/v1/facematch", "/v2/facematch")
    faults = FaultConfig(
        latency=args.latency,
        error_rate_500=args.error_rate_500,
        error_rate_503=args.error_rate_503,
        html_502_rate=args.html_502_rate,
        drop_rate=args.drop_rate,
        stall_rate=args.stall_rate,
        stall_seconds=args.stall_seconds,
        rate_429_burst=args.rate_429_burst,
        burst_length=args.burst_length,
        revoke_rate=_revoke_rate(args),
        seed=args.seed,
        paths=(*paths, "/v1/authorize") if args.faults_on_authorize else paths,
    )
    return None if faults.summary() == "none" else faults


def _config(args: argparse.Namespace) -> SandboxConfig:
    """The sandbox the flags ask for; with --pessimistic, the flags given win over its values.

    Raises:
        ValueError: the flags make no valid configuration.
    """
    fields = {
        "inactive": args.inactive,
        "engine": args.engine,
        "retry_after": args.retry_after,
        "faults": _faults(args),
        "read_timeout": args.read_timeout,
    }
    given = {
        "token_ttl": args.token_ttl,
        "verdict_status": args.verdict_status,
        "rate_limit": args.rate_limit,
        "null_confidence": args.null_confidence or None,  # store_true flags: on, or not told
        "strict_uploads": args.strict_uploads or None,
    }
    fields.update((name, value) for name, value in given.items() if value is not None)
    if args.pessimistic:
        return SandboxConfig.pessimistic(
            args.client_id, args.client_secret, seed=args.seed, **fields
        )
    return SandboxConfig(args.client_id, args.client_secret, **fields)


def run_sandbox(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; returns the exit code."""
    try:
        config = _config(args)
    except ValueError as exc:
        print(f"facematch-async sandbox: {exc}", file=sys.stderr)
        return 2
    try:
        # KeyboardInterrupt only escapes where serve() could not install its signal handlers.
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(config, args.host, args.port))
    except ModuleNotFoundError as exc:  # --engine dlib without the face extra
        print(f"facematch-async sandbox: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        print(f"facematch-async sandbox: {exc}", file=sys.stderr)
        return 1
    return 0
