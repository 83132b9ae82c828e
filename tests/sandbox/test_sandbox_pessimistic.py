"""The pessimistic sandbox (issue 26): every production unknown at its least forgiving.

Each unknown is shown to happen over real HTTP, driven by the bytes of the vendor's Node,
Go and Ruby snippets (reproduced in Python), and by a small well-behaved raw caller: it
renews its token when the API refuses it and backs off on 429, as the contract asks. The
project's own client then runs a batch against the pessimistic sandbox with its plan.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from facematch_async import BatchRunner, FaceMatchClient, PairSpec
from facematch_async.cli import build_parser
from facematch_async.cli._sandbox import run_sandbox
from facematch_async.sandbox import (
    PLANS,
    ConfidenceScale,
    FaultConfig,
    SandboxConfig,
    SandboxServer,
    make_test_image,
)
from facematch_async.sandbox._server import banner
from tests.helpers import RATE_LIMITED, ROOT, vendor_form

pytest_plugins = ["pytester"]

ID = "pessimist"
SECRET = "pessimist-secret"
JPEG = make_test_image("asha", "jpeg")
OTHER = make_test_image("asha", "jpeg", pad_to=3000)  # the same person, another file
NO_FACE = make_test_image("none", "jpeg")
SHAPES = ("node", "go", "ruby")
INVALID_TOKEN = "Not a valid token"


def pessimistic(**fields: Any) -> SandboxConfig:
    return SandboxConfig.pessimistic(ID, SECRET, **fields)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


class RawCaller:
    """What a careful integrator writes from the vendor's snippets: a token kept until its
    ``expiry`` or a refusal (then renewed once), a 1 s back-off on 429, nothing more."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url
        self.token: str | None = None
        self.expires = 0.0
        self.authorized = 0
        self.refusals: list[int] = []  # the statuses of "Not a valid token"
        self.backoffs = 0

    async def authorize(self) -> str:
        form = aiohttp.FormData({"client_id": ID, "client_secret": SECRET})
        async with self.session.post(f"{self.base_url}/v1/authorize", data=form) as resp:
            assert resp.status == 200
            answer = await resp.json()
        token: str = answer["access_token"]
        self.token = token
        self.expires = datetime.fromisoformat(answer["expiry"]).timestamp()
        self.authorized += 1
        return token

    async def post(
        self, body: bytes, boundary: str, path: str = "/v1/facematch"
    ) -> tuple[int, dict[str, Any]]:
        for _ in range(8):
            token = self.token
            if token is None or time.time() >= self.expires - 1:
                token = await self.authorize()
            headers = {
                "Authorization": f"Bearer {token}",
                "x-api-key": SECRET,
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            }
            async with self.session.post(self.base_url + path, data=body, headers=headers) as r:
                status, answer = r.status, await r.json()
            if isinstance(answer, dict) and answer.get("detail") == INVALID_TOKEN:
                self.refusals.append(status)
                self.token = None
                continue
            if status == 429:
                self.backoffs += 1
                await asyncio.sleep(1.0)
                continue
            return status, answer
        raise AssertionError("no answer after 8 tries")


# --- what the switch sets ----------------------------------------------------------------------


def test_pessimistic_sets_every_unknown_and_what_is_told_wins() -> None:
    """Business limits, nulls, strict uploads, statuses in turn, a scale, 10 s tokens,
    revocations; fields given explicitly win; one seed gives one run's draws."""
    config = pessimistic(seed=11)
    assert config.rate_windows == PLANS["business"]
    assert (config.null_confidence, config.strict_uploads, config.token_ttl) == (0.3, True, 10)
    assert (config.verdict_status, config.token_refusal_status) == ((400, 200, 422), (403, 401))
    assert config.faults is not None and (config.faults.revoke_rate, config.faults.seed) == (
        0.03,
        11,
    )
    assert config.confidence_scale == ConfidenceScale.draw(random.Random(11))
    assert config == pessimistic(seed=11)
    assert pessimistic(seed=12).confidence_scale != config.confidence_scale
    told = pessimistic(rate_limit="growth", token_ttl=60, faults=None, verdict_status=200)
    assert told.rate_windows == PLANS["growth"] and told.token_ttl == 60
    assert told.faults is None and told.verdict_status == 200
    assert told.seed is not None  # drawn, and shown in the banner
    with pytest.raises(ValueError, match="null_confidence"):
        SandboxConfig(ID, SECRET, null_confidence=1.5)
    with pytest.raises(ValueError, match="verdict_status"):
        SandboxConfig(ID, SECRET, verdict_status=())


# --- each unknown, happening -------------------------------------------------------------------


async def test_v1_confidence_is_sometimes_null_and_on_the_runs_scale(
    session: aiohttp.ClientSession,
) -> None:
    """Over 40 v1 calls in the Node, Go and Ruby shapes some confidences are null, the rest
    on the run's scale; v2 never null, a whole number on the same scale."""
    # The plan's limit is lifted here to send 40 calls at once: the rate-limit test keeps it.
    config = pessimistic(seed=5, rate_limit="none")
    assert config.confidence_scale is not None
    async with SandboxServer(config) as server:
        caller = RawCaller(session, server.base_url)
        answers = [await caller.post(*vendor_form(SHAPES[i % 3], JPEG, OTHER)) for i in range(40)]
        v2 = [
            await caller.post(*vendor_form(shape, JPEG, OTHER), path="/v2/facematch")
            for shape in SHAPES
        ]
    assert all(status == 200 and body["data"]["match"] for status, body in answers + v2)
    confidences = Counter(body["data"]["confidence"] for _, body in answers)
    expected = config.confidence_scale.apply(TEST_MATCH, 1)
    assert set(confidences) == {None, expected}
    assert 5 <= confidences[None] <= 20  # about 30% of 40
    assert {body["data"]["confidence"] for _, body in v2} == {
        config.confidence_scale.apply(TEST_MATCH, 2)
    }


TEST_MATCH = 98.0  # what the test engine says of a match


async def test_the_confidence_scale_differs_from_run_to_run(
    session: aiohttp.ClientSession,
) -> None:
    """Two runs answer one pair on two scales, each as its banner says; over many runs a
    genuine match lands under 80, over 90, and on 0-1: no threshold holds for all."""
    seen = []
    for seed in (1, 2):
        config = pessimistic(seed=seed, rate_limit="none", null_confidence=0)
        async with SandboxServer(config) as server:
            status, body = await RawCaller(session, server.base_url).post(
                *vendor_form("go", JPEG, OTHER)
            )
            assert status == 200
            assert config.confidence_scale is not None
            assert config.confidence_scale.describe() in banner(server)
            seen.append(body["data"]["confidence"])
    assert seen[0] != seen[1]
    matches = [
        scale.apply(TEST_MATCH, 1)
        for seed in range(200)
        if (scale := pessimistic(seed=seed).confidence_scale) is not None
    ]
    hundreds = [value for value in matches if value > 1]
    assert any(value < 80 for value in hundreds) and any(value > 90 for value in hundreds)
    assert any(value < 1 for value in matches)  # a 0-1 run: every "> 80" fails


async def test_verdict_statuses_alternate_and_strict_uploads_refuse(
    session: aiohttp.ClientSession,
) -> None:
    """NO_FACE_FOUND and UNSUPPORTED_FILE_FORMAT come back 400, 200 and 422 in turn; the
    careless Node, Go and Ruby shapes (blob, octet-stream) are refused, the careful pass."""
    async with SandboxServer(pessimistic(seed=3, rate_limit="none")) as server:
        caller = RawCaller(session, server.base_url)
        answers = [await caller.post(*vendor_form(shape, NO_FACE, JPEG)) for shape in SHAPES]
        answers += [
            await caller.post(*vendor_form(shape, JPEG, OTHER, careful=False)) for shape in SHAPES
        ]
        careful = [await caller.post(*vendor_form(shape, JPEG, OTHER)) for shape in SHAPES]
    assert [status for status, _ in answers] == [400, 200, 422] * 2
    assert [body["sub_code"] for _, body in answers] == ["NO_FACE_FOUND"] * 3 + [
        "UNSUPPORTED_FILE_FORMAT"
    ] * 3
    assert all(isinstance(body["detail"], str) for _, body in answers)  # not a 422 list
    assert [(status, body["sub_code"]) for status, body in careful] == [(200, "SUCCESS")] * 3


async def test_tokens_expire_and_are_revoked_and_a_careful_caller_recovers(
    session: aiohttp.ClientSession,
) -> None:
    """Tokens live 10 s; an expired one and revoked ones are refused 403 and 401 in turn;
    renewing on the refusal, every call still ends in a verdict."""
    async with SandboxServer(pessimistic(seed=REVOKING_SEED, rate_limit="none")) as server:
        caller = RawCaller(session, server.base_url)
        token = await caller.authorize()
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == 10
        answers = [await caller.post(*vendor_form(SHAPES[i % 3], JPEG, OTHER)) for i in range(40)]
        revoked = server.counters.faults_injected["revoke"]
    assert revoked >= 2, "this seed revokes at least two tokens in 40 calls"
    assert all(status == 200 for status, _ in answers)
    assert caller.refusals[:2] == [403, 401] and len(caller.refusals) == revoked
    assert caller.authorized == 1 + revoked
    # An expired token (a 1 s lifetime, to wait less) is refused the same way.
    expiring = pessimistic(seed=1, rate_limit="none", token_ttl=1, faults=None)
    async with SandboxServer(expiring) as server:
        caller = RawCaller(session, server.base_url)
        stale = await caller.authorize()
        await asyncio.sleep(2.1)  # exp is whole seconds
        caller.expires = float("inf")  # as a caller that ignores `expiry` would
        assert caller.token == stale
        status, _ = await caller.post(*vendor_form("node", JPEG, OTHER))
    assert status == 200 and caller.refusals == [403] and caller.authorized == 2


REVOKING_SEED = 4


async def test_the_plans_rate_limit_is_enforced(session: aiohttp.ClientSession) -> None:
    """Business unless told: of 10 calls sent at once 2 pass, 8 get the documented 429 with
    no Retry-After; told growth, 5 pass."""
    for plan, passed in (("business", 2), ("growth", 5)):
        fields = {} if plan == "business" else {"rate_limit": plan}
        config = pessimistic(seed=1, faults=None, **fields)
        async with SandboxServer(config) as server:
            caller = RawCaller(session, server.base_url)
            token = await caller.authorize()
            body, boundary = vendor_form("ruby", JPEG, OTHER)
            headers = {
                "Authorization": f"Bearer {token}",
                "x-api-key": SECRET,
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            }

            async def send(
                headers: dict[str, str] = headers, body: bytes = body
            ) -> tuple[int, Any, str | None]:
                url = f"{server.base_url}/v1/facematch"
                async with session.post(url, data=body, headers=headers) as resp:
                    return resp.status, await resp.json(), resp.headers.get("Retry-After")

            answers = await asyncio.gather(*(send() for _ in range(10)))
        assert sorted(status for status, _, _ in answers) == [200] * passed + [429] * (10 - passed)
        refused = [(body, retry) for status, body, retry in answers if status == 429]
        assert all(answer == (RATE_LIMITED, None) for answer in refused)


# --- the switch in the CLI and in pytest -------------------------------------------------------


async def read_banner(*argv: str) -> list[str]:
    """Start the CLI sandbox; the stderr lines it printed before listening."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "facematch_async.cli", "sandbox", "--port", "0"),
        "--engine",
        "test",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        first = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        assert first.startswith(b"Sandbox listening on http://")
    finally:
        process.terminate()
        _, err = await process.communicate()
    return err.decode().splitlines()


async def test_the_banner_says_what_is_met_and_what_is_hidden() -> None:
    """--pessimistic lists every unknown met and the seed (as the README shows it); the
    default lists what it hides."""
    lines = await read_banner("--pessimistic", "--seed", "7")
    scale = ConfidenceScale.draw(random.Random(7))
    assert "Pessimistic sandbox (seed 7): every production unknown" in "\n".join(lines)
    assert f"  - confidence on this run's own scale: {scale.describe()}" in lines
    assert any("rate limit business (2/s,100/min,10000/day)" in line for line in lines)
    assert any("answered 400, 200, 422 in turn" in line for line in lines)
    assert not any("hide" in line for line in lines)
    assert lines[-1].startswith("Repeat this run's draws with seed 7")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = readme.split("```text\nPessimistic sandbox (seed 7)", 1)[1].split("```", 1)[0]
    start = lines.index(next(line for line in lines if line.startswith("Pessimistic")))
    assert "Pessimistic sandbox (seed 7)" + shown == "\n".join(lines[start:]) + "\n"
    default = "\n".join(await read_banner())
    assert "These settings hide production's unknowns (--pessimistic meets them all):" in default
    for hidden in ("no rate limit", "always a number", "engine's own scale", "bytes only"):
        assert hidden in default
    assert "seed" not in default


def test_cli_flags_given_win_over_pessimistic(monkeypatch: pytest.MonkeyPatch) -> None:
    """--pessimistic with --rate-limit, --token-ttl, --verdict-status, --revoke-rate 0."""
    seen: list[SandboxConfig] = []

    async def fake_serve(config: SandboxConfig, host: str, port: int) -> None:
        seen.append(config)

    monkeypatch.setattr("facematch_async.cli._sandbox.serve", fake_serve)
    argv = ["sandbox", "--pessimistic", "--seed", "9", "--rate-limit", "growth"]
    argv += ["--token-ttl", "60", "--verdict-status", "400,200"]
    assert run_sandbox(build_parser().parse_args(argv)) == 0
    assert run_sandbox(build_parser().parse_args(["sandbox", "--pessimistic"])) == 0
    assert (
        run_sandbox(build_parser().parse_args(["sandbox", "--pessimistic", "--revoke-rate", "0"]))
        == 0
    )
    assert run_sandbox(build_parser().parse_args(["sandbox", "--error-rate-500", "0.1"])) == 0
    told, plain, unrevoked, default = seen
    assert told.rate_windows == PLANS["growth"] and told.token_ttl == 60
    assert told.verdict_status == (400, 200) and told.seed == 9
    assert told.confidence_scale == ConfidenceScale.draw(random.Random(9))
    assert told.faults == FaultConfig(revoke_rate=0.03, seed=9)
    assert plain == SandboxConfig.pessimistic(
        plain.client_id, plain.client_secret, seed=plain.seed, engine="auto"
    )
    assert unrevoked.faults is None and unrevoked.strict_uploads
    assert default.faults == FaultConfig(error_rate_500=0.1) and default.token_ttl == 86400
    assert default.confidence_scale is None and default.verdict_status == 400
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sandbox", "--verdict-status", "400,abc"])


USER_TESTS = """
import pytest

from facematch_async.sandbox import PLANS


def test_whole_run_is_pessimistic(facematch_sandbox):
    config = facematch_sandbox.server.config
    assert config.strict_uploads and config.rate_windows == PLANS["business"]
    assert config.seed == 123 and config.token_ttl == 60  # the conftest's field is kept


@pytest.mark.facematch_sandbox(pessimistic=False)
def test_one_test_opts_out(facematch_sandbox):
    assert facematch_sandbox.server.config.confidence_scale is None


def test_a_failure_shows_the_banner(facematch_sandbox):
    assert False, "to see the report"
"""

USER_MARKER_TEST = """
import pytest


@pytest.mark.facematch_sandbox(pessimistic=True, seed=4, rate_limit="growth")
def test_marker(facematch_sandbox):
    config = facematch_sandbox.server.config
    assert config.strict_uploads and config.seed == 4 and config.rate_limit == "growth"


def test_default(facematch_sandbox):
    assert facematch_sandbox.server.config.confidence_scale is None
"""

USER_CONFTEST = """
import pytest

from facematch_async.sandbox import SandboxConfig


@pytest.fixture
def facematch_sandbox_config():
    return SandboxConfig(client_id="my-app", client_secret="my-secret", token_ttl=60)
"""


def test_pytest_runs_pessimistic_on_one_switch(pytester: pytest.Pytester) -> None:
    """``pytest --facematch-pessimistic --facematch-seed N`` makes every sandbox pessimistic
    (a conftest's fields kept, a marker may opt out); a failure's report shows the banner."""
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_user_pessimistic=USER_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--facematch-pessimistic", "--facematch-seed", "123"
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["*Captured stderr setup*", "*Pessimistic sandbox (seed 123): every production unknown*"]
    )


def test_a_marker_makes_one_test_pessimistic(pytester: pytest.Pytester) -> None:
    """``@pytest.mark.facematch_sandbox(pessimistic=True, ...)`` for one test only."""
    pytester.makepyfile(test_user_marker=USER_MARKER_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=2)


# --- the project's own client against it -------------------------------------------------------


async def test_the_client_decides_a_batch_against_the_pessimistic_sandbox(tmp_path: Path) -> None:
    """A batch paced at the plan (business) ends every pair in a decision: tokens revoked
    and expired are renewed, null confidences and 0-1 scales pass through, verdicts at 200,
    400 and 422 are all no_face, and the server saw no window exceeded."""
    config = pessimistic(seed=CLIENT_SEED)
    async with (
        SandboxServer(config) as server,
        FaceMatchClient(
            client_id=ID, client_secret=SECRET, base_url=server.base_url, rate_limit="business"
        ) as client,
    ):
        pairs = []
        for index in range(24):
            a = tmp_path / f"a{index}.jpg"
            a.write_bytes(NO_FACE if index % 8 == 7 else make_test_image(f"p{index}", "jpeg"))
            b = tmp_path / f"b{index}.png"
            b.write_bytes(make_test_image(f"p{index}" if index % 2 else "someone", "png"))
            pairs.append(PairSpec(f"pair-{index}", a, b))
        outcomes = [outcome async for outcome in BatchRunner(client).run(pairs)]
        counters = server.counters
    statuses = Counter(outcome.status for outcome in outcomes)
    assert statuses == {"match": 9, "no_match": 12, "no_face": 3}, [
        (outcome.pair_id, outcome.error) for outcome in outcomes if outcome.status == "error"
    ]
    confidences = [outcome.result.confidence for outcome in outcomes if outcome.result]
    assert None in confidences and any(value is not None for value in confidences)
    assert counters.faults_injected["revoke"] >= 1
    assert counters.tokens_issued >= 2 + counters.faults_injected["revoke"]  # and one expiry
    assert {status for (path, status) in counters.requests if path == "/v1/facematch"} >= {
        200,
        400,
        422,
    }
    assert counters.rate_limited == {}
    assert counters.max_in_window["2/s"] <= 2


CLIENT_SEED = 15  # revokes the token of the second call; the next lives past 10 s


async def test_the_banner_says_whether_429s_carry_retry_after() -> None:
    """--rate-limit 10/s,5/day with --retry-after: the banner says the 429s carry
    Retry-After, and names the spec once."""
    with_header = SandboxConfig(ID, SECRET, rate_limit="10/s,5/day", retry_after=True)
    async with SandboxServer(with_header) as server:
        text = banner(server)
    assert "rate limit 10/s,5/day: sliding windows, 429s with Retry-After" in text
    without = SandboxConfig(ID, SECRET, rate_limit="business")
    async with SandboxServer(without) as server:
        assert "429s without Retry-After" in banner(server)
