"""BatchRunner: match a stream of pairs at the allowed rate, with bounded work in flight.

```
pairs ──▶ producer task: dedupe (KeyIndex) ─ skip? ─ client.prepare_soon (one hop per 16 pairs)
                │                                            │ a free slot (Semaphore)
                │ manifest problems                          ▼ one task per pair
                ▼                                 client.send(prepared, request_id=pair key,
         outcome queue ◀─────────────────────────  reserve=, stop=, retry_policy=): one call,
                │                                  one answer (a result or a typed error)
                ▼
      run() yields outcomes as they complete; taking one frees its slot
```

The runner drives the client through its public seam only (``prepare_soon`` and ``send``)
and is never called back: every attempt-level decision (a slot of the key's windows, the
reserve, the pause a 429 imposes on every caller, backoff, the deadline, the daily quota)
is the client's, configured per call. The rate limit is the client's own ``rate_limit``
when it has one (shared with every other caller of that client, and through a store with
other processes), else a copy of the client paced with the runner's
(:meth:`FaceMatchClient.with_options`).
Every pair holds a slot from the moment it starts until its outcome is taken, so the
producer pulls the next pair only when one is free and the consumer keeps up: memory
depends on ``concurrency``, not on the number of pairs. Plain asyncio primitives, not
anyio's: their fast paths do not yield to the loop, which a pair would otherwise do four
times more, at a cost comparable to the rest of the runner's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Literal, TypeAlias

from facematch_async._client import FaceMatchClient, PreparedMatch, RateLimiter
from facematch_async._models import FaceMatchResult
from facematch_async._plans import Window, parse_rate_limit
from facematch_async._retry import is_retryable
from facematch_async.batch._index import KeyIndex
from facematch_async.batch._manifest import ManifestProblem, PairSpec
from facematch_async.batch._outcome import PairError, PairOutcome
from facematch_async.batch._scan import ScanProgress
from facematch_async.batch._sink import ResultFormat, ResultsFile, ResultsFileError
from facematch_async.batch._state import JobState
from facematch_async.batch._summary import BatchSummary
from facematch_async.errors import (
    AuthenticationError,
    CallStoppedError,
    ClientClosedError,
    FaceMatchError,
    InvalidTokenError,
    NoFaceFoundError,
    PacingStoreError,
    QuotaExceededError,
    RateLimitError,
)

__all__ = ["BatchRunner", "PairInput", "StopReason"]

logger = logging.getLogger("facematch_async")

PairInput: TypeAlias = PairSpec | tuple[str, str | Path, str | Path]
"""A pair for :meth:`BatchRunner.run`: a :class:`PairSpec` or ``(pair_id, file_a, file_b)``."""

StopReason: TypeAlias = Literal["stopped", "quota", "credentials", "unavailable"]


class _FromClient:
    """The default of ``BatchRunner(rate_limit=...)``: the client's, else ``"business"``."""


_FROM_CLIENT = _FromClient()
_READ_AHEAD = 16
"""Pairs whose images are read in one worker-thread hop, ahead of a free slot."""


def _discard(read: asyncio.Future[PreparedMatch]) -> None:
    """Let go of a read: cancelled if it is still pending, its error marked as seen if it
    failed (asyncio would log an error nobody retrieved as a bug)."""
    if not read.cancel() and not read.cancelled():
        read.exception()


def _as_spec(pair: PairInput) -> PairSpec:
    if isinstance(pair, PairSpec):
        return pair
    pair_id, file_a, file_b = pair
    if not all(isinstance(image, str | os.PathLike) for image in (file_a, file_b)):
        # A batch reads its images when a slot frees up: it takes paths and URLs only.
        problem = ManifestProblem(
            "MALFORMED_ROW", "file_a and file_b must be paths or URLs (bytes: use client.match)"
        )
        return PairSpec(str(pair_id), None, None, problem=problem)
    return PairSpec(str(pair_id), file_a, file_b)  # a path string becomes a Path; a URL stays


async def _aiter(pairs: Iterable[PairInput] | AsyncIterable[PairInput]) -> AsyncIterator[PairInput]:
    if isinstance(pairs, AsyncIterable):
        async for pair in pairs:
            yield pair
    else:
        # Reading the next manifest row is a small buffered read: cheap enough for the loop.
        for pair in pairs:
            yield pair


class BatchRunner:
    """Match many pairs with one client, within the plan's rate limits.

    ```python
    async with FaceMatchClient(...) as client:
        runner = BatchRunner(client, concurrency=32, rate_limit="business")
        async for outcome in runner.run(read_manifest("pairs.csv")):
            print(outcome.pair_id, outcome.status)
    ```

    Every pair ends as exactly one :class:`PairOutcome` (``match``, ``no_match``,
    ``no_face`` or ``error``); one bad pair never stops the batch. A pair is left
    *unrecorded* (no outcome, so a later resume runs it) only when the batch stops under it:
    rejected credentials, a used-up quota with ``stop_at_quota``, or :meth:`cancel`.

    Args:
        client: The client to call; the runner neither opens nor closes it.
        concurrency: The most pairs in flight at once (requests open, outcomes not yet
            taken). The images of up to 16 more pairs are read ahead, in one
            worker-thread hop, so that a freed slot is filled at once.
        rate_limit: When the client has no ``rate_limit`` of its own: a plan
            (``"starter"``, ``"business"``, ``"growth"``, ``"enterprise"``), a spec such as
            ``"10/s,300/min,20000/day"``, windows, a shared :class:`RateLimiter`, or
            ``None`` for no limit (default ``"business"``). A client with its own paces
            the batch with it (then this must be left out). The limiter is awaited before
            every HTTP attempt, retries included.
        stop_at_quota: When the daily window is used up, stop cleanly (``stop_reason ==
            "quota"``) instead of waiting for it to reopen.
        rate_limit_rounds: After the client's own retries, how many more times a pair that
            still met 429 is tried again (after the batch-wide pause) before it is an error.
        outage_threshold: After this many pairs in a row fail with a transient error (no
            connection, timeout, 500/502/503/504) even after the client's retries, the API is
            taken to be down: the run stops (``stop_reason == "unavailable"``), leaving the
            pair that tripped it unrecorded, rather than marking the rest of the manifest as
            errors. ``None`` never stops.
        index_dir: Where the duplicate-id index file goes (default: the temp folder).
        max_pause: The longest batch-wide pause a 429's ``Retry-After`` may impose
            (default: the client's ``retry_policy.max_retry_after``, 60 s). A longer one
            (``999999``, ``inf``) is taken as the daily quota: with ``stop_at_quota`` the run
            stops; else it waits, at most the plan's day window, logging why and until when
            (:meth:`waiting_reason`).
        deadline: Seconds each pair's call may take in all (see ``FaceMatchClient``'s
            ``deadline``); default none, whatever the client's default.
        reserve: The share of every window (0 to below 1, e.g. ``0.25``) this batch leaves
            to the key's other callers (the live onboarding service): the batch uses at most
            the rest, while direct ``client.match`` calls may use the whole window. Shared
            across processes with the client's ``rate_limit_store``. Default 0.

    Attributes:
        client: The client the pairs are sent with: the one given, or a copy of it paced
            with ``rate_limit`` (:meth:`FaceMatchClient.with_options`).
        retry_policy: The rules each pair's call follows: the client's, with
            ``rate_limit_rounds``, ``max_pause`` and ``stop_at_quota`` (``wait_for_quota``).
        state: The results file's truth at the end of the last :meth:`run_to_file`
            (against its ``manifest``, when given): decided, final errors, still to run.
        stop_reason: ``None`` while running or after a complete run; ``"stopped"``
            (:meth:`stop`), ``"quota"``, ``"credentials"`` or ``"unavailable"`` when the
            run ended early.
        unrecorded: Pairs started but left without an outcome (see above); once stopping,
            a pair in flight sends no further attempt: a pair waiting for the rate limiter
            or for a retry's backoff is released at once, so a stop never waits on a
            rate-limit pause.
        skipped: Pairs the ``skip`` predicate of :meth:`run` passed over.
    """

    def __init__(
        self,
        client: FaceMatchClient,
        concurrency: int = 32,
        rate_limit: str | tuple[Window, ...] | RateLimiter | _FromClient | None = _FROM_CLIENT,
        stop_at_quota: bool = False,
        *,
        rate_limit_rounds: int = 5,
        outage_threshold: int | None = 20,
        index_dir: str | Path | None = None,
        max_pause: float | None = None,
        deadline: float | None = None,
        reserve: float = 0.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if client.rate_limiter is not None:
            same = isinstance(rate_limit, str | tuple) and (
                parse_rate_limit(rate_limit) == client.rate_limiter.windows
            )
            if not (rate_limit is _FROM_CLIENT or rate_limit is client.rate_limiter or same):
                raise ValueError(
                    "the client paces every call with its own rate_limit "
                    f"({client.rate_limiter!r}): leave the runner's out"
                )
        else:
            if isinstance(rate_limit, _FromClient):
                rate_limit = "business"
            # Even without windows, a limiter: a 429 then pauses the whole batch.
            limiter = rate_limit if isinstance(rate_limit, RateLimiter) else RateLimiter(rate_limit)
            client = client.with_options(rate_limit=limiter)
        if not 0 <= reserve < 1:
            raise ValueError(f"reserve must be a share from 0 to below 1, not {reserve!r}")
        if reserve and client.rate_limiter is None:
            raise ValueError("reserve leaves a share of a rate limit: give one")
        self.client = client
        self.concurrency = concurrency
        self.reserve = reserve
        self.stop_at_quota = stop_at_quota
        self.outage_threshold = outage_threshold
        self.index_dir = index_dir
        policy = client.retry_policy
        self.retry_policy = dataclasses.replace(
            policy,
            rate_limit_rounds=rate_limit_rounds,
            max_retry_after=policy.max_retry_after if max_pause is None else max_pause,
            wait_for_quota=not stop_at_quota,
        )
        # A batch keeps its own rules: no deadline per pair unless asked (not the client's).
        self.deadline = math.inf if deadline is None else deadline
        self._stopping = asyncio.Event()  # set when the batch stops: waiting pairs give up
        self._rate_limited_before = 0
        self._transient_streak = 0
        self.stop_reason: StopReason | None = None
        self.fatal_error: FaceMatchError | None = None
        self.outage_error: FaceMatchError | None = None  # the last of the failures in a row
        self.unrecorded = 0
        self.skipped = 0
        self.in_flight = 0
        self._tasks: set[asyncio.Task[bool]] = set()
        self.summary: BatchSummary | None = None
        self.state: JobState | None = None
        self._crash: BaseException | None = None

    def stop(self, grace: float | None = None) -> None:
        """Stop dispatching new pairs; those in flight finish and are reported.

        Pairs that are only waiting (for the rate limiter, or a retry's backoff) can send
        nothing before the wait ends: they are released at once and stay unrecorded.

        Args:
            grace: Seconds the pairs still sending may take before they are abandoned
                (:meth:`cancel`); ``None`` waits for them. What the CLI does on Ctrl-C or
                SIGTERM: ``loop.add_signal_handler(signal.SIGTERM, runner.stop, 30)``.
        """
        if self.stop_reason is None:
            self.stop_reason = "stopped"
        self._stopping.set()
        if grace is not None:
            asyncio.get_running_loop().call_later(grace, self.cancel)

    @property
    def rate_limited(self) -> int:
        """429 answers the rate limiter heard since this run started (from every caller
        that shares it: the batch's pairs, and the client's other calls)."""
        limiter = self.client.rate_limiter
        return 0 if limiter is None else limiter.rate_limited - self._rate_limited_before

    def waiting_reason(self) -> str | None:
        """Why the batch sends nothing now, or slower than the plan, for a progress line
        (``None`` when it sends at the plan's pace)."""
        limiter = self.client.rate_limiter
        return None if limiter is None else limiter.status().describe()

    def cancel(self) -> None:
        """Stop dispatching and abandon the pairs in flight (they stay unrecorded)."""
        self.stop()
        for task in self._tasks:
            task.cancel()

    def _halt(self, reason: StopReason) -> None:
        if self.stop_reason in (None, "stopped"):
            self.stop_reason = reason
        self._stopping.set()

    async def run(
        self,
        pairs: Iterable[PairInput] | AsyncIterable[PairInput],
        *,
        skip: Callable[[str], bool] | None = None,
    ) -> AsyncGenerator[PairOutcome, None]:
        """Match ``pairs`` and yield each outcome as it completes (not in input order).

        Pairs are pulled lazily: the next one is taken only when a slot is free. A pair id
        seen before in this run is an ``error`` (``DUPLICATE_PAIR_ID``) for the later row.

        Args:
            pairs: :class:`PairSpec` items (see :func:`read_manifest`) or
                ``(pair_id, file_a, file_b)`` tuples, from an iterable or async iterable.
                Leaving the loop early (``break``, then ``aclose()``, or
                ``contextlib.aclosing``) stops the run and abandons the pairs in flight.
            skip: Called with each pair's key after duplicate detection; ``True`` passes it
                over without an outcome (how ``--resume`` skips finished pairs).

        Raises:
            AuthenticationError: the credentials were refused. Raised after the outcomes of
                the pairs already in flight; no further pair was started.
            ClientClosedError: the client was closed during the run (likewise).
        """
        self.stop_reason = None
        self.fatal_error = None
        self._transient_streak = 0
        self._crash = None
        self._stopping = asyncio.Event()
        limiter = self.client.rate_limiter
        self._rate_limited_before = 0 if limiter is None else limiter.rate_limited
        # Unbounded, yet never longer than ``concurrency``: each outcome in it holds a slot.
        outcomes: asyncio.Queue[PairOutcome | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.concurrency)
        producer = asyncio.create_task(self._produce(pairs, outcomes, slots, skip))
        try:
            while (outcome := await outcomes.get()) is not None:
                slots.release()
                yield outcome
            await producer
        finally:
            if not producer.done():  # the consumer stopped early
                self.cancel()
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer
        if self._crash is not None:
            raise self._crash
        if self.fatal_error is not None:
            raise self.fatal_error

    async def run_to_file(
        self,
        pairs: Iterable[PairInput] | AsyncIterable[PairInput],
        path: str | Path,
        *,
        resume: bool = False,
        retry_failed: bool = False,
        fmt: ResultFormat | None = None,
        on_outcome: Callable[[PairOutcome], object] | None = None,
        summary: BatchSummary | None = None,
        manifest: str | os.PathLike[str] | None = None,
        shard: tuple[int, int] | None = None,
        on_read: Callable[[ScanProgress], object] | None = None,
    ) -> BatchSummary:
        """Match ``pairs`` into a results file, resumably: ``batch --out PATH`` in Python.

        Each outcome is appended and flushed as one line when it completes, so a crash
        (even ``kill -9``) loses only the pairs in flight. With ``resume`` a torn last line
        is cut off (its bytes kept in ``PATH.removed``), pairs that already have a line are
        skipped, and the requests of the last day count against the daily window; with
        ``retry_failed`` pairs whose last line is an ``error`` run again. At the end the file
        is compacted to one line per pair (atomically). The summary so far is also in
        :attr:`summary`, for a run that raised; the file's truth, in :attr:`state`.

        The file belongs to one run at a time: a second one (another process, or another
        ``run_to_file`` here) is refused at once, naming the holder. A long file is read in
        a worker thread: the event loop (signals, other tasks) runs meanwhile.

        ```python
        runner = BatchRunner(client, rate_limit="growth", stop_at_quota=True)
        summary = await runner.run_to_file(read_manifest("pairs.csv"), "out.jsonl", resume=True)
        print(summary.format(), runner.stop_reason)  # "quota": run it again tomorrow
        ```

        Args:
            pairs: As for :meth:`run`.
            path: The results file (``.csv`` for CSV, else JSONL; or ``fmt``).
            resume: Continue the file; without it (or ``retry_failed``) the file must be
                absent or empty.
            retry_failed: Run again the pairs whose last outcome is an error.
            fmt: ``"jsonl"`` or ``"csv"`` (default: by the suffix).
            on_outcome: Called with each outcome after its line is written (progress).
            summary: Count into this summary (one a progress display reads, say) rather
                than a new one.
            manifest: The manifest ``pairs`` came from (its ``shard`` part): at the end,
                :attr:`state` counts its pairs that have no line too.
            shard: The ``(k, n)`` part of ``manifest`` this run is given.
            on_read: Called now and then with a :class:`ScanProgress` while a long file is
                read on a resume.

        Returns:
            Counts per status and ``sub_code``, latency quantiles, pairs skipped.

        Raises:
            FileExistsError: the file holds results and neither ``resume`` nor
                ``retry_failed`` was given.
            ResultsFileError: the file cannot be opened, read or written (a directory, a
                missing folder, a full disk). Lines written before are intact; the run
                stops at once and a resume runs the rest.
            IndexStorageError: the on-disk index cannot be written (``index_dir`` full).
            AuthenticationError: the credentials were refused (after the pairs in flight).
            ValueError: the file is not a results file of that format.
        """
        self.summary = None
        results = ResultsFile(path, fmt, index_dir=self.index_dir)
        # The longest window's worth of the last day's requests seeds the limiter.
        limiter = self.client.rate_limiter
        windows = () if limiter is None else limiter.windows
        seed = max((window.limit for window in windows), default=0)
        self.state = None
        sent_before = self.client.requests_sent
        await results.open_async(
            resume=resume or retry_failed, seed_limit=seed, on_progress=on_read
        )
        try:
            if results.repaired:
                logger.warning(
                    "%s: cut off a torn last line (its pair runs again; the bytes are kept in %s)",
                    path,
                    results.removed_path,
                )
            if results.unreadable:
                logger.warning(
                    "%s: skipped %d line(s) that are not results (their pairs run again); "
                    "they move to %s at the end",
                    path,
                    results.unreadable,
                    results.removed_path,
                )
            if limiter is not None:
                offset = time.monotonic() - time.time()  # the file holds wall-clock times
                limiter.seed(sorted(stamp + offset for stamp in results.recent))
            summary = self.summary = BatchSummary() if summary is None else summary
            outcomes = self.run(
                pairs, skip=results.skip_rule(resume=resume, retry_failed=retry_failed)
            )
            async with contextlib.aclosing(outcomes):
                async for outcome in outcomes:
                    try:
                        results.write(outcome)
                    except ResultsFileError:
                        # Nothing more can be recorded: stop now, so that no further pair is
                        # sent only to be lost; the pairs in flight run again on resume.
                        self.cancel()
                        raise
                    summary.add(outcome)
                    summary.skipped = self.skipped
                    if on_outcome is not None:
                        on_outcome(outcome)
            return summary
        finally:
            if self.summary is not None:  # also for a run that raised
                self.summary.skipped = self.skipped
                self.summary.sent = self.client.requests_sent - sent_before
            try:
                # The file's truth, from its own index: decided, final errors, still to run.
                self.state = await results.job_state_async(manifest, shard=shard)
            except (OSError, ValueError) as exc:  # the manifest became unreadable
                logger.warning("the results file's state against %s is unknown: %s", manifest, exc)
            try:
                results.close()
            except ResultsFileError as exc:  # complete as it is: readers take the last line
                logger.warning("%s; the next run compacts it", exc)

    async def _produce(
        self,
        pairs: Iterable[PairInput] | AsyncIterable[PairInput],
        outcomes: asyncio.Queue[PairOutcome | None],
        slots: asyncio.Semaphore,
        skip: Callable[[str], bool] | None,
    ) -> None:
        seen = KeyIndex(self.index_dir)
        # Rows of a plain iterable (a manifest) are pulled a few at a time so that their
        # images are read in one worker-thread hop; an async source may be slow to yield
        # its next pair, so each of its pairs goes as soon as it comes.
        read_ahead = 1 if isinstance(pairs, AsyncIterable) else min(_READ_AHEAD, self.concurrency)
        source_error: Exception | None = None
        ready: list[PairSpec] = []  # pairs read from the source, not yet dispatched
        try:
            try:
                await self._pull(pairs, seen, read_ahead, ready, outcomes, slots, skip)
            except Exception as error:  # the source (or the index) broke: no further pair
                source_error = error
                if ready and self.stop_reason is None:
                    await self._dispatch(ready, slots, outcomes)  # those read ahead still run
            while self._tasks:  # the pairs in flight
                await asyncio.wait(self._tasks)
        finally:
            # Cancelled (the consumer left) or failed: the pairs in flight are abandoned.
            for task in self._tasks:
                task.cancel()
            while self._tasks:
                await asyncio.wait(self._tasks)
            seen.close()
            outcomes.put_nowait(None)
        if source_error is not None:
            raise source_error

    async def _pull(
        self,
        pairs: Iterable[PairInput] | AsyncIterable[PairInput],
        seen: KeyIndex,
        read_ahead: int,
        ready: list[PairSpec],
        outcomes: asyncio.Queue[PairOutcome | None],
        slots: asyncio.Semaphore,
        skip: Callable[[str], bool] | None,
    ) -> None:
        """Take pairs from the source and dispatch them ``read_ahead`` at a time; ``ready``
        holds those taken but not yet dispatched."""
        async for pair in _aiter(pairs):
            if self.stop_reason is not None:
                return
            spec = _as_spec(pair)
            # Problem rows register their id too: one outcome per id, whatever happens.
            if spec.pair_id and not seen.add(spec.pair_id, spec.line):
                first = seen.get(spec.pair_id)
                where = f" (first on line {first[0]})" if first and first[0] else ""
                problem = ManifestProblem(
                    "DUPLICATE_PAIR_ID", f"pair_id {spec.pair_id!r} seen before{where}"
                )
                spec = PairSpec(spec.pair_id, None, None, spec.line, spec.extra, problem)
            key = spec.key
            if skip is not None and skip(key):
                self.skipped += 1
                continue
            if spec.problem is not None:
                await slots.acquire()  # its outcome holds a slot like any other
                error = PairError.from_problem(spec.problem)
                outcomes.put_nowait(self._outcome(spec, "error", error))
                continue
            ready.append(spec)
            if len(ready) >= read_ahead:
                batch = ready.copy()
                ready.clear()
                if not await self._dispatch(batch, slots, outcomes):
                    return
        batch = ready.copy()
        ready.clear()
        await self._dispatch(batch, slots, outcomes)

    async def _dispatch(
        self,
        specs: list[PairSpec],
        slots: asyncio.Semaphore,
        outcomes: asyncio.Queue[PairOutcome | None],
    ) -> bool:
        """Start reading the images of ``specs`` (one hop), then start each pair as a slot
        frees up; ``False`` when the batch began stopping first (the rest never start)."""
        reads = [self._start_read(spec) for spec in specs]  # in one turn: they share a hop
        started = 0
        try:
            for spec, read in zip(specs, reads, strict=True):
                await slots.acquire()
                if self.stop_reason is not None:
                    slots.release()
                    return False
                task = asyncio.create_task(self._run_pair(spec, read, outcomes))
                self.in_flight += 1
                self._tasks.add(task)
                task.add_done_callback(functools.partial(self._pair_done, slots, read))
                started += 1
            return True
        finally:
            for read in reads[started:]:
                _discard(read)  # never started (stopping, or cancelled): drop its bytes

    def _pair_done(
        self,
        slots: asyncio.Semaphore,
        read: asyncio.Future[PreparedMatch],
        task: asyncio.Task[bool],
    ) -> None:
        """A pair's task ended, however it ended (a task cancelled before its first step
        runs none of its code, so this is where the pair is accounted for)."""
        self._tasks.discard(task)
        self.in_flight -= 1
        _discard(read)
        crash = None if task.cancelled() else task.exception()
        if task.cancelled() or crash is not None or not task.result():
            self.unrecorded += 1  # no outcome: cancel(), the consumer left, or stopping
            slots.release()  # a recorded pair's slot is freed when its outcome is taken
        if crash is not None and self._crash is None:
            # A bug, not a pair's failure (those are outcomes): end the run with it.
            self._crash = crash
            self.cancel()

    def _start_read(self, spec: PairSpec) -> asyncio.Future[PreparedMatch]:
        """Start reading a pair's images: pairs started in one turn share a hop."""
        return self.client.prepare_soon(*spec.images())  # confined to the manifest's roots

    def _outcome(
        self,
        spec: PairSpec,
        status: Literal["match", "no_match", "no_face", "error"],
        error: PairError | None = None,
        *,
        result: FaceMatchResult | None = None,
        attempts: int = 0,
        latency: float | None = None,
    ) -> PairOutcome:
        return PairOutcome(
            pair_id=spec.pair_id,
            status=status,
            result=result,
            error=error,
            attempts=attempts,
            latency=latency,
            line=spec.line,
            extra=spec.extra,
            finished_at=time.time(),
            key=spec.key,
        )

    async def _run_pair(
        self,
        spec: PairSpec,
        read: asyncio.Future[PreparedMatch],
        outcomes: asyncio.Queue[PairOutcome | None],
    ) -> bool:
        """Match one pair and queue its outcome; whether it has one (see ``_pair_done``)."""
        outcome = await self._match(spec, read)
        if outcome is None:
            return False
        outcomes.put_nowait(outcome)  # its slot is freed when it is taken
        return True

    def _outage(self, error: FaceMatchError) -> bool:
        """Count a transient failure; whether the run should stop as the API seems down."""
        self._transient_streak += 1
        if self.outage_threshold is None or self._transient_streak < self.outage_threshold:
            return False
        self.outage_error = error
        if self.stop_reason != "unavailable":
            logger.error(
                "%d pairs in a row failed transiently, stopping the batch: %r",
                self._transient_streak,
                error,
            )
        self._halt("unavailable")
        return True

    async def _match(
        self, spec: PairSpec, read: asyncio.Future[PreparedMatch]
    ) -> PairOutcome | None:
        """One pair, one call: its outcome, or ``None`` when the batch stops under it."""
        status: Literal["no_face", "error"]
        outcome_error: FaceMatchError
        try:
            prepared = await read  # read ahead; a read error is raised here, as match would
            result = await self.client.send(
                prepared,
                request_id=spec.key,
                deadline=self.deadline,
                reserve=self.reserve or None,
                stop=self._stopping,
                retry_policy=self.retry_policy,
            )
        except CallStoppedError:
            return None  # stopping: sent nothing more, left for a resume
        except QuotaExceededError:
            self._halt("quota")
            return None
        except RateLimitError as error:
            if self.stop_at_quota and error.status_code == 429:
                # Still refused after every round: most likely the server's daily quota
                # (used by another client of the key, say). Stop rather than fail pairs.
                self._halt("quota")
                return None
            status, outcome_error = "error", error
        except NoFaceFoundError as error:
            status, outcome_error = "no_face", error
        except InvalidTokenError as error:
            # Refused again after its renewal and every round: not a credentials problem
            # (authorize works), so record the pair and never stop the batch for it.
            status, outcome_error = "error", error
        except (AuthenticationError, ClientClosedError, PacingStoreError) as error:
            # Every later pair would fail alike: stop, and leave this one for a resume.
            if self.fatal_error is None:
                self.fatal_error = error
                logger.error("stopping the batch: %r", error)
            self._halt("credentials" if isinstance(error, AuthenticationError) else "stopped")
            return None
        except FaceMatchError as error:
            if is_retryable(error):
                if self._outage(error):
                    return None
            elif error.status_code is not None:
                self._transient_streak = 0  # the API answered: it is up
            status, outcome_error = "error", error
        except Exception as error:  # one bad pair never stops the batch
            logger.exception("pair %r failed unexpectedly", spec.pair_id)
            return self._outcome(spec, "error", PairError.from_exception(error))
        else:
            self._transient_streak = 0
            return self._outcome(
                spec,
                "match" if result.match else "no_match",
                result=result,
                attempts=result.attempts,
                latency=result.latency,
            )
        return self._outcome(
            spec,
            status,
            PairError.from_exception(outcome_error),
            attempts=outcome_error.attempts or 0,
            latency=outcome_error.latency,
        )
