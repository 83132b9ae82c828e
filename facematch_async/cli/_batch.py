"""The ``facematch-async batch`` command: manifest in, results file out, resumable."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from facematch_async import (
    BatchRunner,
    BatchSummary,
    FaceMatchClient,
    PacingStoreError,
    RateLimiter,
    ResultsFile,
    Window,
    parse_rate_limit,
    read_manifest,
    redact_url,
)
from facematch_async.batch import (
    ExitCode,
    IndexStorageError,
    JobProgress,
    JobResult,
    PairSpec,
    ResultsFileError,
    ScanProgress,
    check_manifest,
    job_state,
    resolve_shard,
    run_job,
    shard_filter,
    write_report,
)
from facematch_async.batch._manifest import is_url, scan_manifest
from facematch_async.batch._progress import Progress, format_duration
from facematch_async.cli._common import (
    UsageError,
    add_connection_arguments,
    client_options,
    logging_to_stderr,
    make_client,
)

__all__ = ["add_batch_parser", "run_batch"]


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
            "2 usage, 3 stopped: credentials refused or the rate-limit store unusable, "
            "69 stopped: the API unavailable (resume later), 74 stopped: the results file or "
            "the index cannot be written (disk full), 75 stopped at the daily quota, "
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
        "--report",
        metavar="HTML",
        help="at the end, write the results file's report (against the manifest) to this "
        "self-contained HTML file",
    )
    parser.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default="WARNING",
        help="what the library logs on stderr: INFO shows each 429, retry and pause (%(default)s)",
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


def _check_out_folder(path: str) -> None:
    folder = Path(path).parent
    if not folder.is_dir():
        raise UsageError(f"--out {path}: the folder {folder} does not exist")
    if Path(path).is_dir():
        raise UsageError(f"--out {path}: is a directory, not a file")


def run_batch(args: argparse.Namespace) -> int:
    """``facematch-async batch``; returns the exit code (see :class:`ExitCode`)."""
    with logging_to_stderr("batch", args.log_level):
        return _batch(args)


def _batch(args: argparse.Namespace) -> int:
    try:
        shard = resolve_shard(args.shard)
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
    if args.out:
        _check_out_folder(args.out)
    try:
        manifest = read_manifest(args.manifest, root=args.root, confined=not args.no_root)
        specs = shard_filter(manifest, shard)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    try:
        if args.dry_run:
            return asyncio.run(_dry_run(args, specs, windows))
        options = client_options(args)
        return asyncio.run(_run(args, specs, windows, options, shard))
    except IndexStorageError as exc:  # before any pair was sent, or a dry run
        print(f"facematch-async batch: {exc}", file=sys.stderr)
        return ExitCode.IO
    except ValueError as exc:  # a CSV without its header; not a results file of --format
        raise UsageError(str(exc)) from None


async def _dry_run(
    args: argparse.Namespace, specs: Iterator[PairSpec], windows: tuple[Window, ...]
) -> int:
    known = ResultsFile(args.out, args.format, index_dir=args.index_dir) if args.out else None
    client = FaceMatchClient.offline(image_read_timeout=args.image_read_timeout)
    progress = Progress(BatchSummary(), None, sys.stderr, interactive=False)
    try:
        if known is not None:
            known.load()  # read only: a dry run changes nothing on disk
        check = await check_manifest(
            specs,
            client,
            skip=None
            if known is None
            else known.skip_rule(resume=args.resume, retry_failed=args.retry_failed),
            index_dir=args.index_dir,
            on_progress=lambda now: progress.say(
                f"checked {now.checked} pairs so far...", every=args.progress_interval
            ),
        )
    except ResultsFileError as exc:  # an unreadable --out
        raise UsageError(str(exc)) from None
    finally:
        if known is not None:
            known.close(compact=False)
    print(check.format())
    limiter = RateLimiter(windows, reserve=args.reserve)  # the batch takes only its share
    rate = ",".join(map(str, limiter.effective_windows())) or "no limit"
    if args.reserve:
        rate += f" (--reserve {args.reserve:.0%} of {','.join(map(str, windows))})"
    estimate = format_duration(limiter.estimate(check.ready))
    print(f"at {rate}: about {estimate} for {check.ready} requests")
    return ExitCode.PAIRS_FAILED if check.failing else ExitCode.OK


async def _run(
    args: argparse.Namespace,
    specs: Iterator[PairSpec],
    windows: tuple[Window, ...],
    options: dict[str, Any],
    shard: tuple[int, int] | None,
) -> int:
    summary = BatchSummary()
    progress = Progress(
        summary, None, sys.stderr, interactive=sys.stderr.isatty(), interval=args.progress_interval
    )
    # The pairs of this shard, counted aside while the run goes (a bucket's manifest: none).
    counting = None if is_url(args.manifest) else asyncio.create_task(_count(args, shard))
    if counting is not None:
        counting.add_done_callback(lambda task: _set_total(progress, task))

    def show(now: JobProgress) -> None:
        progress.note = now.waiting or ""
        progress.tick(force=True)

    def reading(now: ScanProgress) -> None:
        progress.say(now.format(), every=0 if progress.interactive else args.progress_interval)

    # The client paces every attempt (with a store: shared with the key's other processes).
    options = {**options, "rate_limit": windows, "rate_limit_store": args.rate_limit_store}
    async with make_client(**options) as client:
        runner = BatchRunner(
            client,
            concurrency=args.concurrency,
            # The client's own, else none: never the runner's default plan.
            rate_limit=client.rate_limiter,
            stop_at_quota=args.stop_at_quota,
            index_dir=args.index_dir,
            reserve=args.reserve,
        )
        if client.rate_limiter is not None:
            try:
                await client.rate_limiter.start()  # a shared store: reachable now, or say so
            except PacingStoreError as error:
                print(f"facematch-async batch: {error}", file=sys.stderr)
                return ExitCode.CREDENTIALS
        try:
            result = await run_job(
                runner,
                specs,
                args.out,
                resume=args.resume,
                retry_failed=args.retry_failed,
                fmt=args.format,
                grace=args.grace,
                on_outcome=lambda _: progress.tick(),
                on_progress=show,
                progress_interval=progress.interval,
                summary=summary,
                manifest=args.manifest,
                shard=shard,
                on_read=reading,
            )
        except FileExistsError:
            raise UsageError(
                f"{args.out} already holds results: pass --resume to continue it, "
                "--retry-failed to re-run its errors, or choose another --out"
            ) from None
        except ResultsFileError as exc:  # refused on opening (another run holds it, say)
            raise UsageError(str(exc)) from None
        finally:
            if counting is not None:
                counting.cancel()
            progress.close()
    _report(args, result, windows, shard)
    return result.exit_code


async def _count(args: argparse.Namespace, shard: tuple[int, int] | None) -> int:
    """The pairs of the manifest (this shard's part), in a worker thread."""
    return await asyncio.to_thread(
        lambda: sum(1 for _ in shard_filter(scan_manifest(args.manifest), shard))
    )


def _set_total(progress: Progress, task: asyncio.Task[int]) -> None:
    if not task.cancelled() and task.exception() is None:
        progress.total = task.result()


def _report(
    args: argparse.Namespace,
    result: JobResult,
    windows: tuple[Window, ...],
    shard: tuple[int, int] | None,
) -> None:
    """This run's counts, then the file's truth against the manifest, then what to do."""
    print("this run: " + result.summary.format())
    state = result.state
    if state is not None:
        part = f" (shard {shard[0]}/{shard[1]})" if shard else ""
        print(
            f"{args.out} against the manifest{part}: {state.decided} decided, "
            f"{state.final_errors} final errors, {state.to_run} still to run "
            f"({state.retryable} after transient errors, {state.missing or 0} without a line)"
        )
    message = result.message()
    if message is not None and not result.interrupted:
        print(f"\nfacematch-async batch: {message}", file=sys.stderr)
    if result.exit_code == ExitCode.IO:
        print(
            f"The lines written to {args.out} before are intact (a torn last one is cut off on "
            "resume); pairs without a line run again.",
            file=sys.stderr,
        )
    if args.report:
        _write_report(args, windows, shard)
    if result.exit_code == ExitCode.CREDENTIALS:
        print("Fix the credentials or the store, then resume with:", file=sys.stderr)
    elif result.resumable:
        left = result.left if result.left is not None else result.unrecorded
        print(f"{left} pair(s) still to run. Resume with:", file=sys.stderr)
    elif state is not None and state.final_errors:
        print(
            f"{state.final_errors} pair(s) failed for good (a bad image or row): fix the input, "
            "then run again with --retry-failed",
            file=sys.stderr,
        )
        return
    else:
        return
    print(f"  {_resume_command(args)}", file=sys.stderr)
    if "***" in _resume_command(args):
        print("  (type the store's password where *** stands)", file=sys.stderr)


def _write_report(
    args: argparse.Namespace, windows: tuple[Window, ...], shard: tuple[int, int] | None
) -> None:
    """The HTML report of the file against the manifest, with this run's settings."""
    settings = {
        "plan": ",".join(map(str, windows)) or "none",
        "reserve": f"{args.reserve:.0%}",
        "shard": f"{shard[0]}/{shard[1]}" if shard else "all",
        "base URL": args.base_url or "production",
    }
    try:
        state = job_state(args.out, args.manifest, shard=shard, index_dir=args.index_dir)
        path = write_report(
            args.report,
            state,
            settings=settings,
            sources={"results": args.out, "manifest": args.manifest},
        )
    except (OSError, ValueError) as exc:
        print(f"facematch-async batch: cannot write the report: {exc}", file=sys.stderr)
        return
    print(f"report: {path}", file=sys.stderr)
