"""BatchRunner against the sandbox: statuses, isolation of bad pairs, backpressure, 429s, stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from facematch_async import (
    AuthenticationError,
    BatchRunner,
    ClientClosedError,
    PairOutcome,
    PairSpec,
    read_manifest,
)
from facematch_async.sandbox import (
    SandboxConfig,
    SandboxServer,
    ScriptedResponse,
    make_test_image,
)
from tests.helpers import (
    CLIENT_ID,
    CLIENT_SECRET,
    FACEMATCH,
    Faces,
    MakeClient,
    RecordingEngine,
)


@pytest.fixture
def engine() -> RecordingEngine:
    return RecordingEngine()


@pytest.fixture
def sandbox_config(engine: RecordingEngine) -> SandboxConfig:
    return SandboxConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, engine=engine)


async def collect(runner: BatchRunner, pairs, **kwargs) -> dict[str, PairOutcome]:
    outcomes: dict[str, PairOutcome] = {}
    async for outcome in runner.run(pairs, **kwargs):
        assert outcome.key not in outcomes, f"{outcome.key} reported twice"
        outcomes[outcome.key] = outcome
    return outcomes


def gif(faces: Faces) -> Path:
    return faces.write("animated.jpg", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")


async def test_every_status_is_reported(make_client: MakeClient, faces: Faces) -> None:
    """match, no_match, no_face and error (local and remote) each come out as one outcome."""
    runner = BatchRunner(make_client(), concurrency=4, rate_limit=None)
    pairs = [
        ("same", faces.alice_png, faces.alice_jpg),
        ("different", faces.alice_png, faces.bob_jpg),
        ("noface", faces.no_face, faces.alice_jpg),
        ("gif", gif(faces), faces.alice_jpg),
        ("missing", faces.root / "nope.jpg", faces.alice_jpg),
    ]
    out = await collect(runner, pairs)
    assert {k: o.status for k, o in out.items()} == {
        "same": "match",
        "different": "no_match",
        "noface": "no_face",
        "gif": "error",
        "missing": "error",
    }
    assert out["same"].result is not None
    assert out["same"].result.confidence == 98.0
    assert out["same"].attempts == 1
    assert out["same"].latency is not None
    assert out["noface"].error is not None
    assert out["noface"].error.sub_code == "NO_FACE_FOUND"
    assert out["noface"].error.transaction_id
    assert out["gif"].error is not None
    assert (out["gif"].error.type, out["gif"].attempts) == ("UnsupportedFileFormatError", 0)
    assert out["missing"].error is not None
    assert out["missing"].error.type == "ImageReadError"


async def test_one_bad_pair_never_stops_the_batch(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """A 500 that outlasts the retries, an unreadable file and an engine crash stay per-pair."""
    crash = faces.write("crash.png", make_test_image("crash"))
    sandbox.scripted.add(
        ScriptedResponse(path=FACEMATCH, status=500, json={"detail": "x"}, times=3)
    )
    runner = BatchRunner(make_client(max_retries=2), concurrency=1, rate_limit=None)
    pairs = [("p0", faces.alice_png, faces.alice_jpg), ("crash", crash, faces.alice_png)]
    pairs += [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(1, 6)]
    out = await collect(runner, pairs)
    assert out["p0"].status == "error"
    assert out["p0"].error is not None
    assert (out["p0"].error.type, out["p0"].error.status_code) == ("InternalServerError", 500)
    assert out["p0"].attempts == 3
    assert out["crash"].status == "error"
    assert [out[f"p{i}"].status for i in range(1, 6)] == ["match"] * 5


async def test_async_iterables_and_pair_specs_are_accepted(
    make_client: MakeClient, faces: Faces
) -> None:
    """run() takes an async iterable of PairSpec, carrying extra columns to the outcome."""

    async def pairs() -> AsyncIterator[PairSpec]:
        for i in range(3):
            yield PairSpec(f"a{i}", faces.alice_png, faces.alice_jpg, line=i + 2, extra={"k": "v"})

    out = await collect(BatchRunner(make_client(), rate_limit=None), pairs())
    assert sorted(out) == ["a0", "a1", "a2"]
    assert out["a1"].extra == {"k": "v"}
    assert out["a1"].line == 3


async def test_duplicates_and_malformed_rows_are_per_pair_errors(
    make_client: MakeClient, faces: Faces, tmp_path: Path
) -> None:
    """A repeated pair_id and a short row are errors naming their line; the rest still run."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "pair_id,file_a,file_b\n"
        "x,alice.png,alice.jpg\n"
        "y,alice.png\n"
        "x,alice.png,bob.jpg\n"
        "z,alice.png,bob.jpg\n"
    )
    out = await collect(BatchRunner(make_client(), rate_limit=None), read_manifest(manifest))
    assert out["x"].status == "match"
    assert out["z"].status == "no_match"
    assert out["y"].error is not None
    assert (out["y"].error.sub_code, out["y"].line) == ("MALFORMED_ROW", 3)
    duplicate = out["@line:4"]
    assert duplicate.error is not None
    assert duplicate.error.sub_code == "DUPLICATE_PAIR_ID"
    assert "first on line 2" in duplicate.error.message


async def test_pairs_are_pulled_lazily(make_client: MakeClient, faces: Faces) -> None:
    """The runner takes a pair only when a slot frees up: in flight stays near concurrency."""
    pulled = 0

    def pairs() -> Iterator[tuple[str, Path, Path]]:
        nonlocal pulled
        for i in range(40):
            pulled += 1
            yield (f"p{i}", faces.alice_png, faces.alice_jpg)

    runner = BatchRunner(make_client(), concurrency=3, rate_limit=None)
    consumed = 0
    async for _ in runner.run(pairs()):
        consumed += 1
        # 3 in flight, 3 buffered outcomes, 1 waiting for a slot
        assert pulled - consumed <= 3 + 3 + 1
    assert consumed == 40


async def test_a_429_pauses_the_whole_batch(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer, engine: RecordingEngine
) -> None:
    """After a 429 with Retry-After, no pair reaches the server until the pause is over."""
    sandbox.scripted.add(
        ScriptedResponse(
            path=FACEMATCH, status=429, json={"detail": "slow down"}, headers={"Retry-After": "0.5"}
        )
    )
    runner = BatchRunner(make_client(), concurrency=2, rate_limit=None)
    start = time.monotonic()
    out = await collect(runner, [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(6)])
    assert all(o.status == "match" for o in out.values())
    assert runner.rate_limited == 1
    assert sum(o.attempts for o in out.values()) == 7
    # One request was already in flight beside the 429; every later one waited.
    assert sum(stamp < start + 0.45 for stamp in engine.stamps) <= 1


async def test_rate_limited_pairs_get_more_rounds_before_failing(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """A pair still at 429 after the client's retries is tried again after the pause."""
    sandbox.scripted.add(
        ScriptedResponse(
            path=FACEMATCH,
            status=429,
            json={"detail": "x"},
            headers={"Retry-After": "0.05"},
            times=3,
        )
    )
    runner = BatchRunner(make_client(max_retries=1), concurrency=1, rate_limit=None)
    out = await collect(runner, [("p", faces.alice_png, faces.alice_jpg)])
    assert (out["p"].status, out["p"].attempts) == ("match", 4)


async def test_refused_credentials_stop_the_batch(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """Rejected credentials raise after in-flight pairs; no further pair is started or recorded."""
    runner = BatchRunner(make_client(client_secret="wrong"), concurrency=4, rate_limit=None)
    pulled = 0

    def pairs() -> Iterator[tuple[str, Path, Path]]:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield (f"p{i}", faces.alice_png, faces.alice_jpg)

    with pytest.raises(AuthenticationError):
        await collect(runner, pairs())
    assert runner.stop_reason == "credentials"
    assert pulled <= 10
    assert 1 <= runner.unrecorded <= 4
    assert sandbox.counters.authorize_calls <= 4 * 3
    assert CLIENT_SECRET not in repr(runner.fatal_error)


async def test_stop_at_quota_stops_cleanly(make_client: MakeClient, faces: Faces) -> None:
    """With stop_at_quota, a used-up daily window ends the run with stop_reason 'quota'."""
    runner = BatchRunner(make_client(), concurrency=1, rate_limit="3/day", stop_at_quota=True)
    out = await collect(runner, [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(6)])
    assert sorted(out) == ["p0", "p1", "p2"]
    assert runner.stop_reason == "quota"
    assert runner.unrecorded == 1


async def test_skip_passes_over_finished_pairs(make_client: MakeClient, faces: Faces) -> None:
    """skip(key) → True leaves a pair out without a request or an outcome."""
    runner = BatchRunner(make_client(), rate_limit=None)
    pairs = [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(5)]
    out = await collect(runner, pairs, skip=lambda key: key in {"p1", "p3"})
    assert sorted(out) == ["p0", "p2", "p4"]
    assert runner.skipped == 2


async def test_stop_lets_in_flight_pairs_finish(
    make_client: MakeClient, faces: Faces, engine: RecordingEngine
) -> None:
    """stop() ends dispatching; pairs already sent still get their outcome."""
    engine.delay = 0.1
    runner = BatchRunner(make_client(), concurrency=3, rate_limit=None)
    seen = []
    async for outcome in runner.run(
        [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(50)]
    ):
        seen.append(outcome)
        runner.stop()
    assert 1 <= len(seen) <= 6
    assert runner.stop_reason == "stopped"
    assert len(engine.stamps) == len(seen)


async def test_endless_429s_stop_at_quota_instead_of_failing_pairs(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """With stop_at_quota, a pair refused by 429 through every round stops the batch, unrecorded."""
    sandbox.scripted.add(
        ScriptedResponse(
            path=FACEMATCH, status=429, json={}, headers={"Retry-After": "0.01"}, times=100
        )
    )
    runner = BatchRunner(
        make_client(max_retries=1),
        concurrency=1,
        rate_limit=None,
        stop_at_quota=True,
        rate_limit_rounds=2,
    )
    out = await collect(runner, [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(5)])
    assert out == {}
    assert runner.stop_reason == "quota"
    assert runner.unrecorded == 1


async def test_a_runner_can_run_again_after_a_stop(make_client: MakeClient, faces: Faces) -> None:
    """A second run() starts afresh: an earlier stop does not carry over."""
    runner = BatchRunner(make_client(), rate_limit=None)
    runner.stop()
    out = await collect(runner, [("p", faces.alice_png, faces.alice_jpg)])
    assert out["p"].status == "match"
    assert runner.stop_reason is None


async def test_breaking_out_early_cancels_cleanly(
    make_client: MakeClient, faces: Faces, engine: RecordingEngine
) -> None:
    """A consumer that stops iterating (aclose) ends the run: nothing more is sent."""
    engine.delay = 0.05
    runner = BatchRunner(make_client(), concurrency=2, rate_limit=None)
    outcomes = runner.run([(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(100)])
    first = await outcomes.__anext__()
    await outcomes.aclose()
    assert first.status == "match"
    sent = len(engine.stamps)
    await anyio.sleep(0.2)
    assert len(engine.stamps) == sent <= 4
    assert runner.stop_reason == "stopped"


async def test_a_closed_client_stops_the_batch(make_client: MakeClient, faces: Faces) -> None:
    """Closing the client mid-run raises ClientClosedError instead of failing every pair."""
    client = make_client()
    runner = BatchRunner(client, concurrency=2, rate_limit=None)
    pairs = [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(500)]
    seen = 0

    async def consume() -> None:
        nonlocal seen
        async for _ in runner.run(pairs):
            seen += 1
            if seen == 3:
                await client.aclose()

    with pytest.raises(ClientClosedError):
        await consume()
    assert seen < 10


async def test_an_unreachable_api_stops_the_batch_instead_of_failing_every_pair(
    make_client: MakeClient, faces: Faces
) -> None:
    """After outage_threshold transient failures in a row the run stops as 'unavailable'."""
    client = make_client(base_url="http://127.0.0.1:9", max_retries=0)
    runner = BatchRunner(client, concurrency=1, rate_limit=None, outage_threshold=5)
    pairs = [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(200)]
    out = await collect(runner, pairs)
    assert len(out) == 4
    assert {o.error.type for o in out.values() if o.error} == {"APIConnectionError"}
    assert runner.stop_reason == "unavailable"
    assert runner.unrecorded == 1


async def test_api_answers_reset_the_outage_count(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """Transient failures separated by answers (even errors) never add up to an outage."""
    for _ in range(3):
        sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, status=503, json={}, times=2))
        sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, status=400, json={"detail": "x"}))
    runner = BatchRunner(
        make_client(max_retries=0), concurrency=1, rate_limit=None, outage_threshold=3
    )
    out = await collect(runner, [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(10)])
    assert len(out) == 10
    assert runner.stop_reason is None


async def test_pairs_cancelled_before_they_ran_are_counted_unrecorded(
    make_client: MakeClient, faces: Faces, engine: RecordingEngine
) -> None:
    """cancel() between starting pairs and their first step: each is unrecorded, none sent."""
    runner = BatchRunner(make_client(), concurrency=8, rate_limit=None)

    def skip(key: str) -> bool:
        if key == "p8":  # pulled right after p0-p7 were started, before any of them ran
            runner.cancel()
        return False

    pairs = [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(20)]
    assert await collect(runner, pairs, skip=skip) == {}
    assert (runner.unrecorded, runner.in_flight, len(engine.stamps)) == (8, 0, 0)


async def test_a_pair_given_as_bytes_is_its_own_error_and_the_batch_goes_on(
    make_client: MakeClient, faces: Faces
) -> None:
    """A tuple with image bytes instead of paths is that pair's MALFORMED_ROW error (a batch
    reads its images later, from paths or URLs); the other pairs are decided."""
    data = faces.alice_png.read_bytes()
    runner = BatchRunner(make_client(), concurrency=2, rate_limit=None)
    out = await collect(
        runner,
        [("bytes", data, data), ("ok", faces.alice_png, faces.alice_jpg)],
    )
    assert out["ok"].status == "match"
    assert out["bytes"].status == "error"
    assert out["bytes"].error is not None and out["bytes"].error.sub_code == "MALFORMED_ROW"


async def test_requests_of_pairs_left_without_a_line_are_counted(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer, tmp_path: Path
) -> None:
    """A stop whose grace runs out abandons pairs already sent: the summary counts their
    requests too (billed all the same), beside those of the recorded pairs."""
    from facematch_async.sandbox import FaultConfig

    sandbox.set_random_faults(FaultConfig(latency=1.5))
    runner = BatchRunner(make_client(), concurrency=4, rate_limit=None)
    pairs = [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(8)]
    job = asyncio.ensure_future(runner.run_to_file(pairs, tmp_path / "out.jsonl"))
    await asyncio.sleep(0.5)
    runner.stop(grace=0.2)  # the four in flight are abandoned, unanswered
    summary = await job
    assert summary.attempts == 0 and summary.sent == 4
    assert "and 4 for pairs left without a line" in summary.format()
