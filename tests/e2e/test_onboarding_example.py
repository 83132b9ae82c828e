"""The FastAPI onboarding example (examples/fastapi_kyc.py) against a sandbox on loopback:
start-up check, readiness, one answer shape with a code per outcome, true Retry-After,
one log line per failure, and a match cancelled when the HTTP client goes away."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

from facematch_async import AuthenticationError, InactiveClientError
from facematch_async.sandbox import (
    BackgroundSandbox,
    SandboxConfig,
    SandboxServer,
    ScriptedResponse,
    make_test_image,
)
from tests.helpers import CLIENT_ID, CLIENT_SECRET, FACEMATCH, load_example, upload

pytest.importorskip("fastapi", reason="the FastAPI example needs the 'examples' extra")
from fastapi.testclient import TestClient

SHAPE = {"code", "action", "message", "field", "transaction_id", "retry_after"}
SAME = upload(make_test_image("meera", "jpeg"), make_test_image("meera", "png"))


@pytest.fixture(scope="module")
def background() -> Iterator[BackgroundSandbox]:
    with BackgroundSandbox(SandboxConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)) as box:
        yield box


@pytest.fixture
def sandbox(background: BackgroundSandbox) -> Iterator[SandboxServer]:
    server = background.server
    server.scripted.clear()
    server.counters.reset()
    yield server
    server.scripted.clear()


def example(monkeypatch: pytest.MonkeyPatch, base_url: str, **env: str) -> ModuleType:
    """The example module, configured through the environment only, as deployed."""
    monkeypatch.setenv("DEEPVUE_BASE_URL", base_url)
    monkeypatch.setenv("DEEPVUE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DEEPVUE_CLIENT_SECRET", CLIENT_SECRET)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_example("fastapi_kyc")


@pytest.fixture
def service(
    sandbox: SandboxServer, background: BackgroundSandbox, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """The example with its lifespan running; a 2 s deadline keeps fault tests short."""
    module = example(monkeypatch, background.base_url, KYC_DEADLINE="2")
    with TestClient(module.app) as http:
        yield http


def error_body(response: object, status: int, code: str) -> dict[str, object]:
    """Check the one error shape and return the body."""
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body: dict[str, object] = response.json()  # type: ignore[attr-defined]
    assert body.keys() >= SHAPE, body
    assert body["code"] == code
    assert CLIENT_SECRET not in response.text  # type: ignore[attr-defined]
    return body


# Start-up and readiness


def test_wrong_credentials_fail_the_start_up(
    background: BackgroundSandbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    module = example(monkeypatch, background.base_url, DEEPVUE_CLIENT_SECRET="not-the-secret")
    with pytest.raises(AuthenticationError), TestClient(module.app):
        pass
    failed = [r for r in caplog.records if r.name == "kyc" and r.levelno == logging.ERROR]
    assert len(failed) == 1
    assert "not-the-secret" not in caplog.text


def test_an_inactive_client_fails_the_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    config = SandboxConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, inactive=True)
    with BackgroundSandbox(config) as inactive:
        module = example(monkeypatch, inactive.base_url)
        with pytest.raises(InactiveClientError), TestClient(module.app):
            pass


def test_start_up_fetches_the_token_and_readyz_reuses_it(
    service: TestClient, sandbox: SandboxServer
) -> None:
    assert sandbox.counters.authorize_calls == 1  # by the lifespan, before any request
    response = service.get("/readyz")
    assert response.status_code == 200
    assert response.json()["code"] == "ready"
    assert sandbox.counters.authorize_calls == 1
    assert sandbox.counters.count(FACEMATCH) == 0


# Each answer: its code, one shape


def test_a_decision_has_its_code_and_transaction_id(service: TestClient) -> None:
    body = error_body(service.post("/kyc/face-match", files=SAME), 200, "match")
    assert body["match"] is True and body["confidence"] == 98.0 and body["transaction_id"]
    other = upload(make_test_image("meera", "jpeg"), make_test_image("ravi", "png"))
    body = error_body(service.post("/kyc/face-match", files=other), 200, "no_match")
    assert body["match"] is False


def test_no_face_keeps_the_transaction_id(service: TestClient) -> None:
    files = upload(make_test_image("none", "jpeg"), make_test_image("meera", "png"))
    body = error_body(service.post("/kyc/face-match", files=files), 422, "no_face")
    assert body["action"] == "retake"
    assert body["transaction_id"]  # the API gave one: the frontend and support see it


def test_a_gif_is_refused_by_the_form_field_name(
    service: TestClient, sandbox: SandboxServer
) -> None:
    files = upload(make_test_image("meera", "jpeg"), b"GIF89a....")
    body = error_body(service.post("/kyc/face-match", files=files), 422, "unsupported_format")
    assert body["field"] == "id_document"
    assert "file_b" not in str(body)
    assert sandbox.counters.count(FACEMATCH) == 0  # refused before any call


def test_a_15_mb_photo_is_told_in_megabytes(service: TestClient) -> None:
    big = make_test_image("meera", "jpeg")
    big += b"\0" * (15 * 1024 * 1024 - len(big))
    files = upload(big, make_test_image("meera", "png"))
    body = error_body(service.post("/kyc/face-match", files=files), 422, "image_too_large")
    assert body["field"] == "selfie"
    assert "15.0 MB, over the 10 MB limit" in str(body["message"])


def test_a_photo_one_byte_over_the_limit_never_reads_as_the_limit(service: TestClient) -> None:
    """10 MB and one byte is "10.1 MB, over the 10 MB limit", not "10.0 MB, over ..."."""
    big = make_test_image("meera", "jpeg")
    big += b"\0" * (10 * 1024 * 1024 + 1 - len(big))
    files = upload(big, make_test_image("meera", "png"))
    body = error_body(service.post("/kyc/face-match", files=files), 422, "image_too_large")
    assert "10.1 MB, over the 10 MB limit" in str(body["message"])


def test_an_empty_photo(service: TestClient) -> None:
    files = upload(make_test_image("meera", "jpeg"), b"")
    body = error_body(service.post("/kyc/face-match", files=files), 422, "image_empty")
    assert body["field"] == "id_document"


def test_fastapis_validation_errors_have_the_same_shape(service: TestClient) -> None:
    files = {"selfie": SAME["selfie"]}
    body = error_body(service.post("/kyc/face-match", files=files), 422, "invalid_request")
    assert body["field"] == "id_document"
    assert body["action"] == "fix_request"
    assert "detail" not in body
    error_body(service.get("/nowhere"), 404, "not_found")


def test_a_rate_limit_passes_on_the_true_retry_after(
    service: TestClient, sandbox: SandboxServer
) -> None:
    """429 with Retry-After: 30 and a 2 s deadline: answered at once, Retry-After 30."""
    sandbox.scripted.add(
        ScriptedResponse(
            path=FACEMATCH,
            status=429,
            json={"detail": "Rate limited"},
            headers={"Retry-After": "30"},
        )
    )
    started = time.monotonic()
    response = service.post("/kyc/face-match", files=SAME)
    assert time.monotonic() - started < 1.5
    body = error_body(response, 503, "rate_limited")
    assert response.headers["Retry-After"] == "30" and body["retry_after"] == 30


def test_no_retry_after_is_invented(service: TestClient, sandbox: SandboxServer) -> None:
    """429s without Retry-After through every retry: 503 rate_limited, no Retry-After."""
    sandbox.scripted.add(
        ScriptedResponse(path=FACEMATCH, status=429, json={"detail": "Rate limited"}, times=3)
    )
    response = service.post("/kyc/face-match", files=SAME)
    body = error_body(response, 503, "rate_limited")
    assert "Retry-After" not in response.headers and body["retry_after"] is None


def test_an_outage_is_503_with_the_servers_retry_after(
    service: TestClient, sandbox: SandboxServer
) -> None:
    sandbox.scripted.add(
        ScriptedResponse(
            path=FACEMATCH,
            status=503,
            json={"detail": "Source Unavailable"},
            headers={"Retry-After": "120"},  # over max_retry_after: raised at once
        )
    )
    response = service.post("/kyc/face-match", files=SAME)
    body = error_body(response, 503, "upstream_unavailable")
    assert response.headers["Retry-After"] == "120" and body["retry_after"] == 120


def test_a_stalled_api_is_503_upstream_timeout_within_the_deadline(
    service: TestClient, sandbox: SandboxServer
) -> None:
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, delay=10.0, times=3))
    started = time.monotonic()
    response = service.post("/kyc/face-match", files=SAME)
    assert time.monotonic() - started <= 2 + 1.5
    body = error_body(response, 503, "upstream_timeout")
    assert body["action"] == "retry_later"


def test_misconfiguration_is_500_and_logged_at_error(
    service: TestClient, sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The client id was deactivated after start-up: 500 misconfigured, one ERROR line."""
    sandbox.scripted.add(
        ScriptedResponse(path=FACEMATCH, status=400, json={"detail": "Inactive client_id"})
    )
    with caplog.at_level(logging.WARNING, logger="kyc"):
        response = service.post("/kyc/face-match", files=SAME)
    body = error_body(response, 500, "misconfigured")
    assert "Retry-After" not in response.headers and body["action"] == "none"
    lines = [r for r in caplog.records if r.name == "kyc"]
    assert [r.levelno for r in lines] == [logging.ERROR]
    assert "error=InactiveClientError" in lines[0].getMessage()


def test_each_failure_is_logged_once_with_its_facts(
    service: TestClient, sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Three 503s (max_retries=2): one WARNING with type, status, attempts and elapsed."""
    sandbox.scripted.add(
        ScriptedResponse(path=FACEMATCH, status=503, json={"detail": "down"}, times=3)
    )
    with caplog.at_level(logging.WARNING, logger="kyc"):
        response = service.post("/kyc/face-match", files=SAME)
    if response.json()["code"] == "upstream_timeout":  # backoff 1 s + 2 s beat the 2 s deadline
        expected = "error=DeadlineExceededError"
    else:
        expected = "error=InternalServerError sub_code=None status=503"
    lines = [r for r in caplog.records if r.name == "kyc"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    message = lines[0].getMessage()
    assert expected in message and "attempts=" in message and "elapsed_ms=" in message
    assert CLIENT_SECRET not in caplog.text


# Cancel on disconnect, with a real server and a client that hangs up


async def test_an_abandoned_request_cancels_its_match_in_flight(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn serves the example; a raw socket posts the photos and hangs up while the
    sandbox holds the match (5 s). The service cancels it: the sandbox sees the match
    request abandoned (status 0) within a second, and never answers it."""
    uvicorn = pytest.importorskip("uvicorn", reason="a real server: the 'examples' extra")
    caplog.set_level(logging.INFO, logger="kyc")
    config = SandboxConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    async with SandboxServer(config) as sandbox:
        module = example(monkeypatch, sandbox.base_url)
        server = uvicorn.Server(
            uvicorn.Config(module.app, host="127.0.0.1", port=0, log_level="warning")
        )
        serving = asyncio.ensure_future(server.serve())
        try:
            while not server.started:
                assert not serving.done(), "uvicorn did not start"
                await asyncio.sleep(0.02)
            port = server.servers[0].sockets[0].getsockname()[1]
            sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, delay=5.0))

            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw_upload(port))
            await writer.drain()
            await wait_until(lambda: sandbox.counters.in_flight == 1, within=5.0)  # match sent
            writer.close()  # the customer closed the app
            hung_up = time.monotonic()

            await wait_until(lambda: sandbox.counters.count(FACEMATCH) == 1, within=3.0)
            assert time.monotonic() - hung_up < 1.0
            assert sandbox.counters.count(FACEMATCH, 0) == 1  # abandoned, not answered
            assert sandbox.counters.count(FACEMATCH, 200) == 0
            assert "match cancelled" in caplog.text
        finally:
            server.should_exit = True
            await serving


def raw_upload(port: int) -> bytes:
    """A multipart POST of two photos, as bytes for a socket."""
    boundary = os.urandom(8).hex()
    parts = b""
    for field, data in (
        ("selfie", make_test_image("meera", "jpeg")),
        ("id_document", make_test_image("meera", "png")),
    ):
        parts += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                f'filename="{field}.img"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    parts += f"--{boundary}--\r\n".encode()
    head = (
        f"POST /kyc/face-match HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(parts)}\r\n\r\n"
    )
    return head.encode() + parts


async def wait_until(condition: Callable[[], bool], *, within: float) -> None:
    give_up = time.monotonic() + within
    while not condition():
        assert time.monotonic() < give_up, "timed out waiting"
        await asyncio.sleep(0.01)


# Overload and bounded uploads (issue 23)


def test_a_body_over_two_photos_is_413_before_it_is_read(
    service: TestClient, sandbox: SandboxServer
) -> None:
    """A body whose Content-Length is over the limit is refused at once with 413, in the one
    shape, and no call reaches the API."""
    huge = upload(b"\xff\xd8" + b"\0" * (21 * 1024 * 1024), make_test_image("meera", "png"))
    body = error_body(service.post("/kyc/face-match", files=huge), 413, "request_too_large")
    assert body["action"] == "retake"
    assert sandbox.counters.count(FACEMATCH) == 0


def test_a_streamed_body_is_cut_off_once_it_passes_the_limit(
    background: BackgroundSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a Content-Length (a chunked upload), the body is counted as it is read: 413
    once it passes the limit, the rest never read."""
    module = example(monkeypatch, background.base_url, KYC_MAX_BODY=str(64 * 1024))
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'--xx\r\nContent-Disposition: form-data; name="selfie"; filename="a.jpg"\r\n\r\n'
        for _ in range(200):  # 200 x 16 KiB: far past the limit
            sent += 1
            yield b"\0" * 16384

    with TestClient(module.app) as http:
        response = http.post(
            "/kyc/face-match",
            content=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=xx"},
        )
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "request_too_large"


def test_a_token_refused_after_its_renewal_is_503_not_misconfigured(
    service: TestClient, sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    """'Not a valid token' for the fresh token too (revoked under load): 503
    upstream_unavailable at WARNING, not 500 misconfigured at ERROR."""
    for _ in range(2):
        sandbox.scripted.add(
            ScriptedResponse(path=FACEMATCH, status=403, json={"detail": "Not a valid token"})
        )
    body = error_body(service.post("/kyc/face-match", files=SAME), 503, "upstream_unavailable")
    assert body["action"] == "retry_later"
    assert not [r for r in caplog.records if r.name == "kyc" and r.levelno >= logging.ERROR]


def test_text_where_a_photo_belongs_says_so_in_words(service: TestClient) -> None:
    """A text field named 'selfie' (not a file part): a 422 naming the field, never
    Python's internals."""
    response = service.post(
        "/kyc/face-match",
        data={"selfie": "not a photo"},
        files={"id_document": ("id.png", make_test_image("meera", "png"), "image/png")},
    )
    body = error_body(response, 422, "invalid_request")
    assert body["field"] == "selfie"
    assert "must be a file" in str(body["message"])
    assert "class" not in str(body["message"])


def test_over_the_plan_customers_are_refused_at_once(
    background: BackgroundSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DEEPVUE_RATE_LIMIT=2/s and 12 customers at once with a 2 s deadline: the few whose
    slot comes in time are matched, the others get 503 rate_limited at once (not after
    their deadline) with Retry-Afters that are not all the same second."""
    module = example(monkeypatch, background.base_url, KYC_DEADLINE="2", DEEPVUE_RATE_LIMIT="2/s")
    with TestClient(module.app) as http:
        http.post("/kyc/face-match", files=SAME)  # a first attempt measured
        time.sleep(1.0)
        import concurrent.futures

        def one() -> tuple[int, float, str | None]:
            started = time.monotonic()
            response = http.post("/kyc/face-match", files=SAME)
            return (
                response.status_code,
                time.monotonic() - started,
                response.headers.get("Retry-After"),
            )

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: one(), range(12)))
    matched = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] == 503]
    assert 2 <= len(matched) <= 5, answers
    assert len(matched) + len(refused) == 12
    assert max(elapsed for _, elapsed, _ in refused) < 1.0, answers
    assert len({retry for _, _, retry in refused}) > 1, answers
