"""The bulk job as one library call: what ``facematch-async batch --out`` does, for a Python
job, a scheduler's task or the CLI alike.

:func:`run_job` runs :meth:`BatchRunner.run_to_file` under the signals a scheduler sends
(SIGTERM, then SIGKILL after its grace period; Ctrl-C on a terminal): the first stops
dispatching and gives the pairs in flight ``grace`` seconds, the second abandons them. It
never raises for what a job meets at run time (refused credentials, a lost store, a full
disk): it answers with a :class:`JobResult` whose :class:`ExitCode` a scheduler understands.

```python
async with FaceMatchClient(rate_limit="business") as client:
    runner = BatchRunner(client, concurrency=32, stop_at_quota=True)
    result = await run_job(runner, read_manifest("pairs.csv"), "out.jsonl", resume=True)
sys.exit(result.exit_code)
```
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import os
import signal
import time
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from facematch_async.batch._index import IndexStorageError
from facematch_async.batch._outcome import PairOutcome
from facematch_async.batch._runner import BatchRunner, PairInput, StopReason
from facematch_async.batch._scan import ScanProgress
from facematch_async.batch._sink import ResultFormat, ResultsFileError
from facematch_async.batch._state import JobState
from facematch_async.batch._summary import BatchSummary
from facematch_async.errors import AuthenticationError, PacingStoreError

__all__ = ["ExitCode", "JobProgress", "JobResult", "run_job"]

logger = logging.getLogger("facematch_async")


class ExitCode(enum.IntEnum):
    """How a job ended, as a process exit code a scheduler can act on (``sys.exit(code)``).

    Kubernetes' ``podFailurePolicy`` (``deploy/kubernetes/``) maps them to: fail the job
    (``USAGE``, ``CREDENTIALS``), fail this shard without a restart (``PAIRS_FAILED``,
    ``QUOTA``), restart with a backoff (``UNAVAILABLE``, ``IO``, ``INTERRUPTED``).
    """

    OK = 0
    """Every pair has a decision (match, no_match, no_face)."""
    PAIRS_FAILED = 1
    """Every pair ended, some with a final error (a bad image or row): fix the input, then
    ``--retry-failed``."""
    USAGE = 2
    """Bad arguments or settings, missing credentials, a results file that is not ours."""
    CREDENTIALS = 3
    """The credentials were refused, or the rate-limit store cannot be used."""
    UNAVAILABLE = 69
    """Pairs are left after transient failures (the API down, timeouts, 5xx, 429 after
    every retry): a plain resume sends them again. (``EX_UNAVAILABLE``)"""
    IO = 74
    """The results file or the on-disk index cannot be written (a full disk). (``EX_IOERR``)"""
    QUOTA = 75
    """The daily quota is used up: resume after it resets. (``EX_TEMPFAIL``)"""
    INTERRUPTED = 130
    """Stopped by SIGINT or SIGTERM; resume to finish."""


@dataclass(frozen=True)
class JobProgress:
    """A job's progress now, for a progress line or a metrics exporter.

    Attributes:
        summary: This run's counts so far (outcomes, skipped pairs, latency).
        in_flight: Pairs sent or waiting to be sent now.
        waiting: Why nothing goes out, or slower than the plan, when so (a 429's pause, a
            full window, the daily quota, a lost store): see :class:`PacingStatus`.
    """

    summary: BatchSummary
    in_flight: int
    waiting: str | None


@dataclass
class JobResult:
    """How a job ended.

    Attributes:
        exit_code: What the process should exit with: the results file's truth
            (:attr:`JobState.exit_code`: 0 every pair decided, 1 final errors, 69 pairs still
            to run), unless the run itself stopped for a reason of its own (interrupted,
            the daily quota, refused credentials, a disk error).
        summary: This run's counts (outcomes written, pairs skipped, latency).
        state: The results file against the manifest at the end (``None`` when it could
            not be told): decided, final errors, pairs still to run.
        stop_reason: Why the runner stopped early (see :attr:`BatchRunner.stop_reason`).
        interrupted: A signal stopped it.
        error: What stopped it, when something did: refused credentials, a lost store,
            a disk error (its message is one line, safe to print).
        unrecorded: Pairs started but left without a line (a resume runs them).
    """

    @property
    def left(self) -> int | None:
        """Pairs a plain resume would send (``None`` when unknown: no manifest given)."""
        if self.state is None or not self.state.has_manifest:
            return None
        return self.state.to_run

    exit_code: ExitCode
    summary: BatchSummary
    state: JobState | None = None
    stop_reason: StopReason | None = None
    interrupted: bool = False
    error: BaseException | None = None
    unrecorded: int = 0

    def message(self) -> str | None:
        """Why the job stopped before the end, in one line (``None`` when it did not)."""
        error, code = self.error, self.exit_code
        if code == ExitCode.IO:
            return f"{error}; stopped"
        if code == ExitCode.CREDENTIALS and isinstance(error, PacingStoreError):
            return f"{error}; stopped"
        if code == ExitCode.CREDENTIALS and error is not None:
            return f"credentials refused, stopped: {error}"
        if code == ExitCode.UNAVAILABLE and self.stop_reason == "unavailable":
            last = type(error).__name__ if error is not None else "a transient error"
            return (
                "the API or the image store seems unavailable (too many pairs in a row "
                f"failed transiently, the last with {last}); stopped"
            )
        if code == ExitCode.QUOTA:
            return (
                "the daily quota is used up, or the API kept answering 429 after every round "
                "of waiting; stopped"
            )
        if code == ExitCode.INTERRUPTED:
            return "interrupted; stopped"
        if code == ExitCode.UNAVAILABLE:  # the file holds transient errors or unrun pairs
            return "pairs are still to run (transient errors, or not reached yet)"
        return None

    @property
    def resumable(self) -> bool:
        """Whether a plain resume has pairs to send."""
        if self.left is not None:
            return self.left > 0
        return self.exit_code in (
            ExitCode.UNAVAILABLE,
            ExitCode.IO,
            ExitCode.QUOTA,
            ExitCode.INTERRUPTED,
            ExitCode.CREDENTIALS,
        )


async def run_job(
    runner: BatchRunner,
    pairs: Iterable[PairInput] | AsyncIterable[PairInput],
    out: str | Path,
    *,
    resume: bool = False,
    retry_failed: bool = False,
    fmt: ResultFormat | None = None,
    grace: float = 30.0,
    handle_signals: bool = True,
    on_outcome: Callable[[PairOutcome], object] | None = None,
    on_progress: Callable[[JobProgress], object] | None = None,
    progress_interval: float = 30.0,
    summary: BatchSummary | None = None,
    manifest: str | os.PathLike[str] | None = None,
    shard: tuple[int, int] | None = None,
    on_read: Callable[[ScanProgress], object] | None = None,
) -> JobResult:
    """Run ``pairs`` into the results file ``out`` (see :meth:`BatchRunner.run_to_file`)
    and say how the job ended.

    Args:
        runner: The runner (its client paces, retries and shares the quota).
        pairs: As for :meth:`BatchRunner.run`.
        out: The results file.
        resume: Continue the file; ``retry_failed``: run again the pairs whose last line is
            an error (both as for :meth:`BatchRunner.run_to_file`).
        fmt: ``"jsonl"`` or ``"csv"`` (default: by the suffix).
        grace: On the first SIGINT or SIGTERM, seconds the pairs in flight may take before
            they are abandoned (a second signal abandons them at once).
        handle_signals: Install the SIGINT and SIGTERM handlers on the running loop for the
            job's life (only in the main thread; a host application may handle them itself
            and call :meth:`BatchRunner.stop`).
        on_outcome: Called with each outcome after its line is written.
        on_progress: Called with a :class:`JobProgress` as the job starts, then every
            ``progress_interval`` seconds.
        summary: Count into this summary (one a progress display reads) instead of a new one.
        manifest: The manifest ``pairs`` came from (``shard``'s part of it): the exit code
            and :attr:`JobResult.state` then count its pairs that have no line too.
        shard: The ``(k, n)`` part of ``manifest`` this job runs.
        on_read: Called with a :class:`ScanProgress` while a long results file is read.

    Raises:
        FileExistsError: ``out`` holds results and neither ``resume`` nor ``retry_failed``
            was given (nothing was sent).
        ResultsFileError: ``out`` cannot be opened (nothing was sent); a disk that fills up
            later is :attr:`ExitCode.IO` instead.
        ValueError: ``out`` is not a results file of that format.
    """
    summary = BatchSummary() if summary is None else summary
    interrupted = 0

    def on_signal() -> None:
        nonlocal interrupted
        interrupted += 1
        if interrupted == 1:
            logger.warning(
                "stopping: %d pair(s) in flight get up to %g s to finish (interrupt again to "
                "abandon them)",
                runner.in_flight,
                grace,
            )
            runner.stop(grace=grace)
        else:
            runner.cancel()

    async def report() -> None:
        # At the start, every interval, and at once when the batch starts or stops waiting
        # (for a window, a pause, the quota): a log never looks hung.
        assert on_progress is not None
        said: str | None = ""
        last = -math.inf
        await asyncio.sleep(min(1.0, progress_interval))  # the file opened (or refused) first
        while True:
            waiting = runner.waiting_reason()
            now = time.monotonic()
            # A change of what it waits for, not of the countdown, is news.
            what = None if waiting is None else waiting.split(":", 1)[0]
            if what != said or now - last >= progress_interval:
                summary.skipped = runner.skipped
                on_progress(JobProgress(summary, runner.in_flight, waiting))
                said, last = what, now
            await asyncio.sleep(min(1.0, progress_interval))

    error: BaseException | None = None
    code: ExitCode | None = None
    reporter = None if on_progress is None else asyncio.create_task(report())
    with _signals_to(on_signal) if handle_signals else contextlib.nullcontext():
        try:
            await runner.run_to_file(
                pairs,
                out,
                resume=resume,
                retry_failed=retry_failed,
                fmt=fmt,
                on_outcome=on_outcome,
                summary=summary,
                manifest=manifest,
                shard=shard,
                on_read=on_read,
            )
        except FileExistsError:
            raise  # results there, and no resume: nothing was sent
        except ResultsFileError as exc:
            if runner.summary is None and not exc.disk_full:
                raise  # refused on opening: nothing was sent
            error, code = exc, ExitCode.IO
        except (IndexStorageError, OSError) as exc:  # a full index folder, a lost mount
            error, code = exc, ExitCode.IO
        except (AuthenticationError, PacingStoreError) as exc:
            error, code = exc, ExitCode.CREDENTIALS
        finally:
            if reporter is not None:
                reporter.cancel()
    summary.skipped = runner.skipped
    if code is None:
        code = _exit_code(runner, summary, interrupted > 0)
        if code == ExitCode.UNAVAILABLE:
            error = runner.outage_error
        elif code in (ExitCode.OK, ExitCode.PAIRS_FAILED) and runner.state is not None:
            code = ExitCode(runner.state.exit_code)  # the file's truth, not this run's
    return JobResult(
        exit_code=code,
        summary=summary,
        state=runner.state,
        stop_reason=runner.stop_reason,
        interrupted=interrupted > 0,
        error=error,
        unrecorded=runner.unrecorded,
    )


def _exit_code(runner: BatchRunner, summary: BatchSummary, interrupted: bool) -> ExitCode:
    if interrupted:
        return ExitCode.INTERRUPTED
    if runner.stop_reason == "quota":
        return ExitCode.QUOTA
    if runner.stop_reason == "unavailable":
        return ExitCode.UNAVAILABLE
    if runner.stop_reason in ("credentials", "stopped"):
        return ExitCode.CREDENTIALS if runner.fatal_error is not None else ExitCode.INTERRUPTED
    return ExitCode.PAIRS_FAILED if summary.statuses.get("error") else ExitCode.OK


@contextlib.contextmanager
def _signals_to(handler: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``handler`` on the running loop while the block runs."""
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, handler)
            handled.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # Windows, not the main thread
            pass
    try:
        yield
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
