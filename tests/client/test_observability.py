"""Logs, request hooks and aiohttp trace configs: what a service can observe of each attempt."""

from __future__ import annotations

import asyncio
import logging
import re
from types import SimpleNamespace

import aiohttp
import pytest

from facematch_async._events import RequestEvent
from facematch_async.sandbox import SandboxServer, ScriptedResponse
from tests.helpers import FACEMATCH, Faces, MakeClient


async def test_one_debug_line_per_attempt(
    client, faces: Faces, sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Each attempt logs path, request id, attempt, status, outcome, sub_code, id and latency."""
    caplog.set_level(logging.DEBUG, logger="facematch_async")
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, status=503, json={"detail": "busy"}))
    result = await client.match(faces.alice_png, faces.alice_jpg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("POST /v1/face")]
    assert len(lines) == 2
    first, second = lines
    assert "attempt=1 status=503 outcome=InternalServerError" in first
    assert "attempt=2 status=200 outcome=ok sub_code=SUCCESS" in second
    assert f"transaction_id={result.transaction_id}" in second
    ids = {re.search(r"request_id=(\w+)", line).group(1) for line in lines}  # type: ignore[union-attr]
    assert len(ids) == 1
    assert re.search(r"latency_ms=\d+\.\d", second)
    assert any("retrying in" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


async def test_request_hooks_see_start_and_end_of_every_attempt(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """on_request_start/on_request_end fire per attempt, authorize included, with outcomes."""
    starts: list[RequestEvent] = []
    ends: list[RequestEvent] = []
    client = make_client(on_request_start=starts.append, on_request_end=ends.append)
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, status=429, json={"detail": "slow"}))
    await client.match(faces.alice_png, faces.bob_jpg)
    assert [(e.path, e.attempt) for e in starts] == [
        ("/v1/authorize", 1),
        (FACEMATCH, 1),
        (FACEMATCH, 2),
    ]
    assert [(e.status_code, e.outcome) for e in ends] == [
        (200, "ok"),
        (429, "RateLimitError"),
        (200, "ok"),
    ]
    assert all(e.latency is not None and e.latency >= 0 for e in ends)
    assert ends[2].sub_code == "SUCCESS"
    assert ends[2].transaction_id


async def test_a_failing_hook_never_fails_the_call(
    make_client: MakeClient, faces: Faces, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises is logged; the match still returns its result."""

    def broken(event: RequestEvent) -> None:
        raise ValueError("metrics backend down")

    client = make_client(on_request_start=broken, on_request_end=broken)
    assert (await client.match(faces.alice_png, faces.alice_jpg)).match is True
    assert "a request hook raised" in caplog.text


async def test_cancelled_attempt_is_reported_as_cancelled(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """An attempt cancelled mid-flight ends with outcome CancelledError and no status."""
    ends: list[RequestEvent] = []
    client = make_client(on_request_end=ends.append)
    await client.match(faces.alice_png, faces.alice_jpg)
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, delay=5.0))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.match(faces.alice_png, faces.alice_jpg), 0.3)
    assert ends[-1].outcome == "CancelledError"
    assert ends[-1].status_code is None


async def test_send_request_id_names_the_call(
    client, faces: Faces, caplog: pytest.LogCaptureFixture
) -> None:
    """send(request_id=...) (the batch runner's pair id) appears in the log lines."""
    caplog.set_level(logging.DEBUG, logger="facematch_async")
    prepared = await client.prepare(faces.alice_png, faces.alice_jpg)
    await client.send(prepared, request_id="pair-0042")
    assert "request_id=pair-0042 attempt=1" in caplog.text


async def test_batch_hooks_get_the_pair_id_as_request_id(
    make_client: MakeClient, faces: Faces
) -> None:
    """Inside a batch, every RequestEvent carries the pair's id, as the README promises."""
    from facematch_async import BatchRunner

    seen: list[str] = []
    client = make_client(on_request_end=lambda event: seen.append(event.request_id))
    runner = BatchRunner(client, rate_limit=None)
    pairs = [(f"pair-{i:04d}", faces.alice_png, faces.alice_jpg) for i in range(3)]
    async for _ in runner.run(pairs):
        pass
    facematch = [rid for rid in seen if rid.startswith("pair-")]
    assert sorted(facematch) == ["pair-0000", "pair-0001", "pair-0002"]


async def test_trace_configs_are_passed_to_aiohttp(make_client: MakeClient, faces: Faces) -> None:
    """aiohttp TraceConfig callbacks fire for the client's requests."""
    seen: list[str] = []

    async def on_start(
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        seen.append(params.url.path)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    client = make_client(trace_configs=[trace])
    await client.match(faces.alice_png, faces.alice_jpg)
    assert seen == ["/v1/authorize", FACEMATCH]
