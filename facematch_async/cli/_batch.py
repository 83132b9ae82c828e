"""The ``facematch-async batch`` command: manifest in, results file out, resumable."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from facematch_async._images import DEFAULT_MAX_IMAGE_BYTES, check_pair
from facematch_async._pacing import effective_windows, redact_url
from facematch_async._ratelimit import RateLimiter, Window, parse_rate_limit
from facematch_async.batch._index import IndexStorageError, KeyIndex, key_hash
from facematch_async.batch._manifest import ManifestProblem, PairSpec, is_url, read_manifest
from facematch_async.batch._progress import Progress, format_duration
from facematch_async.batch._runner import BatchRunner
from facematch_async.batch._sink import ResultsFile, ResultsFileError
from facematch_async.batch._summary import BatchSummary
from facematch_async.cli._common import (
    EXIT_ABORTED,
    EXIT_CREDENTIALS,
    EXIT_IO,
    EXIT_OK,
    EXIT_PAIRS_FAILED,
    EXIT_QUOTA,
    UsageError,
    add_connection_arguments,
    client_options,
    make_client,
)
from facematch_async.errors import ImageError

__all__ = ["add_batch_parser", "run_batch", "shard_filter"]


def add_batch_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``batch`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "batch",
        allow_abbrev=False,  # else --client-secret would pass as --client-secret-file
        help="match every pair of a manifest, resumably, within the plan's rate limits",
        description=(
            "Match every pair of a manifest (CSV or JSONL with pair_id,file_a,file_b, or a "
            "folder of <pair_id>/ folders holding two images). One line per pair is appended "
            "to --out as it finishes. Exit codes: 0 all decided, 1 some pairs errored, "
            "2 usage, 3 stopped: credentials refused or API unavailable, 74 stopped: the "
            "results file or the index cannot be written (disk full), 75 stopped at quota, "
            "130 interrupted."
        ),
    )
    parser.add_argument(
        "manifest",
        help="pairs.csv, pairs.jsonl, or a folder of pair folders: a path or a URL (s3://...)",
    )
    parser.add_argument("--out", help="results file (required unless --dry-run)")
    parser.add_argument(
        "--format", choices=("jsonl", "csv"), help="results format (default: by --out suffix)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="pairs in flight at once (%(default)s)"
    )
    parser.add_argument(
        "--rate-limit",
        # An empty DEEPVUE_RATE_LIMIT is unset (business), not "no limit".
        default=os.environ.get("DEEPVUE_RATE_LIMIT", "").strip() or "business",
        help="plan (starter, business, growth, enterprise), a spec like "
        "'10/s,300/min,20000/day', or 'none' (env DEEPVUE_RATE_LIMIT, else %(default)s)",
    )
    parser.add_argument(
        "--rate-limit-store",
        metavar="URL",
        default=os.environ.get("DEEPVUE_RATE_LIMIT_STORE"),
        help="redis://host:6379/0: share the key's windows with every process (any machine, "
        "any shard, the live service) naming the same Redis and client id "
        "(env DEEPVUE_RATE_LIMIT_STORE)",
    )
    parser.add_argument(
        "--reserve",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="leave this share of every window to the key's other callers, e.g. the live "
        "onboarding service: 25%% or 0.25 (default 0)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="skip pairs that already have a line in --out"
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="re-run pairs whose last outcome in --out is 'error' (add --resume to also run "
        "pairs not yet done)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check every pair locally (files, formats, sizes, duplicates) without a network "
        "call, and estimate the run time",
    )
    parser.add_argument(
        "--stop-at-quota",
        action="store_true",
        help="stop cleanly (exit 75) when the daily quota is used up, instead of waiting",
    )
    parser.add_argument(
        "--shard",
        metavar="K/N",
        help="only the pairs whose pair_id hashes to shard K of N (1-based); 'auto' or "
        "'auto/N' takes K (and N) from the scheduler (Kubernetes, Slurm, AWS Batch)",
    )
    parser.add_argument(
        "--root",
        action="append",
        metavar="FOLDER_OR_URL",
        help="images must lie inside this folder or URL prefix (s3://bucket/kyc/); repeat for "
        "several (default: the manifest's own folder or prefix)",
    )
    parser.add_argument(
        "--no-root",
        action="store_true",
        help="read images wherever the rows point, on disk or in any bucket (a trusted "
        "manifest only)",
    )
    parser.add_argument(
        "--index-dir",
        metavar="DIR",
        help="where the on-disk pair index goes (a few bytes per pair; default: the temp "
        "folder, $TMPDIR)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on Ctrl-C, how long pairs in flight may finish (%(default)s)",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds between progress lines when not on a terminal (%(default)s)",
    )
    add_connection_arguments(parser)
    parser.set_defaults(func=run_batch)
    return parser


def _share(text: str) -> float:
    """``25%`` or ``0.25`` as a share from 0 to below 1."""
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a share like 25% or 0.25, not {text!r}"
        ) from None
    if not 0 <= share < 1:
        raise argparse.ArgumentTypeError(f"a share from 0 to below 100%, not {text!r}")
    return share


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    from facematch_async.batch._shard import resolve_shard  # K/N, auto, auto/N

    try:
        return resolve_shard(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def shard_filter(specs: Iterator[PairSpec], shard: tuple[int, int] | None) -> Iterator[PairSpec]:
    """Keep the pairs of shard ``k`` of ``n``: a stable hash of the key, so any machine agrees."""
    if shard is None:
        yield from specs
        return
    k, n = shard
    for spec in specs:
        if key_hash(spec.key) % n == k - 1:
            yield spec


def _count_rows(path: Path) -> int | None:
    """Rows in a CSV/JSONL manifest, for the ETA (a fast newline count)."""
    if path.is_dir():
        return None
    rows = 0
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            rows += chunk.count(b"\n")
    return rows - (0 if path.suffix.lower() in (".jsonl", ".ndjson", ".json") else 1)


def _resume_command(args: argparse.Namespace) -> str:
    """The command line again, with ``--resume``; a store URL's password shown as ``***``
    (type it again, or set ``DEEPVUE_RATE_LIMIT_STORE`` instead of the flag)."""
    argv = list(args.argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--rate-limit-store="):
            argv[i] = "--rate-limit-store=" + redact_url(arg.partition("=")[2])
        elif i and argv[i - 1] == "--rate-limit-store":
            argv[i] = redact_url(arg)
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join(["facematch-async", *argv])


_CHECK_AHEAD = 16
"""Pairs the dry run checks at once: as many as the run reads in one hop, so that a stuck
file delays its own pair, as in the run, and not every pair after it."""


async def _check_locally(
    specs: list[PairSpec], max_bytes: int, read_timeout: float
) -> list[ManifestProblem | None]:
    """What a run would refuse before any network call, for each pair: the very reads and
    checks ``match`` makes (``load_pair``: regular files only, size, magic bytes, end marker,
    the read deadline), so the two cannot disagree. The code is the one the run's summary
    counts the error under (``sub_code``, else its type)."""

    async def check(spec: PairSpec) -> ManifestProblem | None:
        try:
            await check_pair(*spec.images(), max_bytes=max_bytes, read_timeout=read_timeout)
        except ImageError as error:
            return ManifestProblem(error.sub_code or type(error).__name__, error.message)
        return None

    return await asyncio.gather(*(check(spec) for spec in specs))


def _dry_run(
    args: argparse.Namespace,
    specs: Iterator[PairSpec],
    results: ResultsFile | None,
    windows: tuple[Window, ...],
) -> int:
    skip = (
        None
        if results is None
        else results.skip_rule(resume=args.resume, retry_failed=args.retry_failed)
    )
    codes: Counter[str] = Counter()
    examples: list[str] = []
    counts = {"ready": 0, "skipped": 0}
    last_report = time.monotonic()

    def record(spec: PairSpec, problem: ManifestProblem | None) -> None:
        nonlocal last_report
        if problem is None:
            counts["ready"] += 1
        else:
            codes[problem.sub_code] += 1
            if len(examples) < 10:
                where = f"line {spec.line}" if spec.line else spec.pair_id
                examples.append(f"  {where}: {problem.sub_code}: {problem.message}")
        if time.monotonic() - last_report >= args.progress_interval:
            last_report = time.monotonic()
            checked = counts["ready"] + sum(codes.values())
            print(f"checked {checked} pairs so far...", file=sys.stderr, flush=True)

    async def check_all() -> None:
        seen = KeyIndex(args.index_dir)
        try:
            pending: list[PairSpec] = []
            for spec in specs:
                problem = spec.problem
                if spec.pair_id and not seen.add(spec.pair_id, spec.line):
                    problem = ManifestProblem(
                        "DUPLICATE_PAIR_ID", f"pair_id {spec.pair_id!r} repeated"
                    )
                key = PairSpec(spec.pair_id, None, None, spec.line, problem=problem).key
                if skip is not None and skip(key):
                    counts["skipped"] += 1
                    continue
                if problem is not None:
                    record(spec, problem)
                    continue
                pending.append(spec)
                if len(pending) >= _CHECK_AHEAD:
                    await check_pending(pending)
            await check_pending(pending)
        finally:
            seen.close()

    async def check_pending(pending: list[PairSpec]) -> None:
        problems = await _check_locally(pending, DEFAULT_MAX_IMAGE_BYTES, args.image_read_timeout)
        for spec, problem in zip(pending, problems, strict=True):
            record(spec, problem)
        pending.clear()

    asyncio.run(check_all())
    ready, skipped = counts["ready"], counts["skipped"]
    failing = sum(codes.values())
    print(
        f"{ready + failing} pairs to run ({skipped} already done): "
        f"{ready} ready, {failing} would fail"
    )
    for code, count in codes.most_common():
        print(f"  {code:<28}{count:>9}")
    if examples:
        print("first problems:")
        print("\n".join(examples))
    # With --reserve the batch takes only its share of every window.
    paced = effective_windows(windows, args.reserve) if args.reserve else windows
    rate = ",".join(map(str, paced)) or "no limit"
    if args.reserve:
        rate += f" (--reserve {args.reserve:.0%} of {','.join(map(str, windows))})"
    estimate = format_duration(RateLimiter(paced).estimate(ready))
    print(f"at {rate}: about {estimate} for {ready} requests")
    return EXIT_PAIRS_FAILED if failing else EXIT_OK


def _fatal(what: str, args: argparse.Namespace, left: str) -> None:
    """Say why the batch stopped, in one line, and how to resume it."""
    print(f"\nfacematch-async batch: {what}; stopped", file=sys.stderr)
    print(f"{left} Resume with:", file=sys.stderr)
    print(f"  {_resume_command(args)}", file=sys.stderr)


def _check_out_folder(path: str) -> None:
    folder = Path(path).parent
    if not folder.is_dir():
        raise UsageError(f"--out {path}: the folder {folder} does not exist")
    if Path(path).is_dir():
        raise UsageError(f"--out {path}: is a directory, not a file")


def run_batch(args: argparse.Namespace) -> int:
    """``facematch-async batch``; returns the exit code (see :mod:`facematch_async.cli`)."""
    shard = _parse_shard(args.shard)
    try:
        windows = parse_rate_limit(args.rate_limit)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if args.reserve and not windows:
        raise UsageError("--reserve leaves a share of the rate limit: give one (--rate-limit)")
    if args.rate_limit_store and not windows:
        raise UsageError("--rate-limit-store shares a rate limit: give one (--rate-limit)")
    if not args.out and not args.dry_run:
        raise UsageError("--out is required (or use --dry-run)")
    if args.index_dir is not None and not Path(args.index_dir).is_dir():
        raise UsageError(f"--index-dir {args.index_dir}: no such folder")
    try:
        manifest = read_manifest(args.manifest, root=args.root, confined=not args.no_root)
        specs = shard_filter(manifest, shard)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None

    try:
        if args.dry_run:
            return _dry_run_with_results(args, specs, windows)
        return _run_with_results(args, specs, windows, shard)
    except IndexStorageError as exc:
        # Before any pair was sent (the index of an existing results file), or a dry run.
        print(f"facematch-async batch: {exc}", file=sys.stderr)
        return EXIT_IO


def _dry_run_with_results(
    args: argparse.Namespace, specs: Iterator[PairSpec], windows: tuple[Window, ...]
) -> int:
    if args.out:
        _check_out_folder(args.out)
    known = ResultsFile(args.out, args.format, index_dir=args.index_dir) if args.out else None
    try:
        if known is not None:
            known.load()  # read only: a dry run changes nothing on disk
        return _dry_run(args, specs, known, windows)
    except (ValueError, ResultsFileError) as exc:  # a CSV without its header, an unreadable --out
        raise UsageError(str(exc)) from None
    finally:
        if known is not None:
            known.close(compact=False)


def _run_with_results(
    args: argparse.Namespace,
    specs: Iterator[PairSpec],
    windows: tuple[Window, ...],
    shard: tuple[int, int] | None,
) -> int:
    options = client_options(args)
    _check_out_folder(args.out)
    try:
        return asyncio.run(_run(args, specs, windows, options, shard))
    except ValueError as exc:  # a CSV without its header; not a results file of --format
        raise UsageError(str(exc)) from None


async def _run(
    args: argparse.Namespace,
    specs: Iterator[PairSpec],
    windows: tuple[Window, ...],
    options: dict[str, Any],
    shard: tuple[int, int] | None,
) -> int:
    from facematch_async import AuthenticationError, PacingStoreError
    from facematch_async._pacing import Pacer

    summary = BatchSummary()
    # A bucket's manifest: no ETA rather than read it twice.
    total = None if is_url(args.manifest) else _count_rows(Path(args.manifest))
    if total is not None and shard is not None:
        total = total // shard[1]
    progress = Progress(
        summary,
        total,
        sys.stderr,
        interactive=sys.stderr.isatty(),
        interval=args.progress_interval,
    )
    interrupted = 0
    loop = asyncio.get_running_loop()
    code = EXIT_OK
    disk_error: OSError | None = None

    # The client paces every attempt (with a store: shared with the key's other processes).
    options = {**options, "rate_limit": windows, "rate_limit_store": args.rate_limit_store}
    async with make_client(**options) as client:
        # Without a rate limit the runner must not fall back to its own default plan.
        unpaced: dict[str, Any] = {} if client.pacer is not None else {"rate_limit": None}
        runner = BatchRunner(
            client,
            concurrency=args.concurrency,
            stop_at_quota=args.stop_at_quota,
            index_dir=args.index_dir,
            reserve=args.reserve,
            **unpaced,
        )
        if isinstance(client.pacer, Pacer):
            try:
                await client.pacer.start()  # a shared store: reachable now, or say so
            except PacingStoreError as error:
                print(f"facematch-async batch: {error}", file=sys.stderr)
                return EXIT_CREDENTIALS

        def on_signal() -> None:
            nonlocal interrupted
            interrupted += 1
            if interrupted == 1:
                runner.stop(grace=args.grace)
                print(
                    f"\nstopping: {runner.in_flight} pair(s) in flight get up to {args.grace:g} s "
                    "to finish (interrupt again to abandon them)",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                runner.cancel()

        handled = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal)
                handled.append(sig)
            except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
                pass

        async def report() -> None:
            while True:
                await asyncio.sleep(progress.interval)
                summary.skipped = runner.skipped
                rate = getattr(client.pacer, "current_rate", None)
                notes = [runner.waiting_reason() or ""]
                if rate is not None:
                    notes.append(f"pacing at {rate:.1f}/s (adaptive, after 429s)")
                progress.note = " | ".join(note for note in notes if note)
                progress.tick()

        reporter = asyncio.create_task(report())
        try:
            await runner.run_to_file(
                specs,
                args.out,
                resume=args.resume,
                retry_failed=args.retry_failed,
                fmt=args.format,
                on_outcome=lambda _: progress.tick(),
                summary=summary,
            )
        except FileExistsError:
            raise UsageError(
                f"{args.out} already holds results: pass --resume to continue it, "
                "--retry-failed to re-run its errors, or choose another --out"
            ) from None
        except ResultsFileError as exc:
            if runner.summary is None and not exc.disk_full:  # refused on opening: nothing sent
                raise UsageError(str(exc)) from None
            disk_error = exc
        except AuthenticationError as error:
            print(
                f"\nfacematch-async batch: credentials refused, stopped: {error}", file=sys.stderr
            )
            code = EXIT_CREDENTIALS
        except PacingStoreError as error:
            print(f"\nfacematch-async batch: {error}; stopped", file=sys.stderr)
            code = EXIT_CREDENTIALS
        except IndexStorageError as exc:
            disk_error = exc
        except OSError as exc:  # the manifest became unreadable mid-run (a lost mount)
            disk_error = OSError(exc.errno, f"cannot read {args.manifest}: {exc.strerror}")
        finally:
            reporter.cancel()
            for sig in handled:
                loop.remove_signal_handler(sig)
            progress.close()

    summary.skipped = runner.skipped
    print(summary.format())
    if disk_error is not None:
        _fatal(
            str(disk_error),
            args,
            f"The lines written to {args.out} before are intact (a torn last one is cut off "
            "on resume); pairs without a line run again.",
        )
        return EXIT_IO
    if summary.statuses.get("error"):
        code = code or EXIT_PAIRS_FAILED
    if interrupted:
        code = EXIT_ABORTED
    elif runner.stop_reason == "unavailable":
        print(
            "the API seems unavailable (too many pairs in a row failed to connect or got 5xx); "
            "stopped",
            file=sys.stderr,
        )
        code = EXIT_CREDENTIALS
    elif runner.stop_reason == "quota":
        print(
            "the daily quota is used up, or the API kept answering 429 after every round of "
            "waiting; stopped (--stop-at-quota)",
            file=sys.stderr,
        )
        code = EXIT_QUOTA
    if code in (EXIT_ABORTED, EXIT_QUOTA, EXIT_CREDENTIALS):
        print(f"{runner.unrecorded} pair(s) were left for later. Resume with:", file=sys.stderr)
        print(f"  {_resume_command(args)}", file=sys.stderr)
    return code
