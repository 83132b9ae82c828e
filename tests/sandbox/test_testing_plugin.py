"""The pytest plugin, used exactly as a user would: a separate pytest run of a user's tests.

The plugin is found through the installed ``pytest11`` entry point, nothing else: the user's
test files below neither import nor register it.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from facematch_async.sandbox import dlib_available
from facematch_async.testing import SandboxHandle
from tests.helpers import FACES

pytest_plugins = ["pytester"]

USER_TESTS = """
import asyncio
import json
import os
import urllib.request

import aiohttp
import pytest

from facematch_async import FaceMatchClient
from facematch_async.sandbox import FaultConfig, make_test_image

ALICE = make_test_image("alice")
ALICE_JPEG = make_test_image("alice", fmt="jpeg")
BOB = make_test_image("bob")


def client_for(sandbox):
    return FaceMatchClient(
        client_id=sandbox.client_id,
        client_secret=sandbox.client_secret,
        base_url=sandbox.base_url,
    )


@pytest.mark.asyncio
async def test_async_service_test(facematch_sandbox):
    async with client_for(facematch_sandbox) as client:
        same = await client.match(ALICE, ALICE_JPEG)
        different = await client.match(ALICE, BOB)
    assert same.match and not different.match
    assert facematch_sandbox.counters.authorize_calls == 1
    assert facematch_sandbox.counters.count("/v1/facematch", 200) == 2


def test_sync_service_test(facematch_sandbox):
    async def check():
        async with client_for(facematch_sandbox) as client:
            return await client.match(ALICE, BOB)

    assert asyncio.run(check()).match is False
    body = f"client_id={facematch_sandbox.client_id}&client_secret={facematch_sandbox.client_secret}"
    request = urllib.request.Request(facematch_sandbox.base_url + "/v1/authorize", data=body.encode())
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert json.load(resp)["token_type"] == "bearer"


@pytest.mark.facematch_sandbox(rate_limit="1/min", retry_after=True)
@pytest.mark.asyncio
async def test_marker_sets_a_rate_limit(facematch_sandbox):
    assert facematch_sandbox.server.config.rate_limit == "1/min"
    async with client_for(facematch_sandbox) as client:
        await client.match(ALICE, ALICE)
    assert facematch_sandbox.counters.max_in_window == {"1/min": 1}


@pytest.mark.asyncio
async def test_faults_at_runtime(facematch_sandbox_async):
    facematch_sandbox_async.server.set_random_faults(FaultConfig(error_rate_503=1.0))
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("file_a", ALICE, filename="a.png")
        form.add_field("file_b", ALICE, filename="b.png")
        async with session.post(facematch_sandbox_async.base_url + "/v1/facematch", data=form) as resp:
            assert resp.status == 503
    assert facematch_sandbox_async.counters.faults_injected == {"503": 1}


def test_env_and_secret_hidden(facematch_sandbox, monkeypatch):
    for name, value in facematch_sandbox.env().items():
        monkeypatch.setenv(name, value)
    assert os.environ["DEEPVUE_BASE_URL"].startswith("http://127.0.0.1:")
    assert facematch_sandbox.client_secret not in repr(facematch_sandbox)
"""

USER_CONFTEST = """
import pytest

from facematch_async.sandbox import SandboxConfig


@pytest.fixture
def facematch_sandbox_config():
    return SandboxConfig(client_id="my-app", client_secret="my-secret", token_ttl=60)
"""

USER_CONFIG_TEST = """
def test_conftest_override(facematch_sandbox):
    assert (facematch_sandbox.client_id, facematch_sandbox.client_secret) == ("my-app", "my-secret")
    assert facematch_sandbox.server.config.token_ttl == 60
"""


def test_entry_point_is_registered() -> None:
    """pytest finds the plugin through the ``pytest11`` entry point of the installed package."""
    plugins = {entry.name: entry.value for entry in entry_points(group="pytest11")}
    assert plugins.get("facematch_async") == "facematch_async.testing"


def test_users_tests_pass_with_the_fixtures(pytester: pytest.Pytester) -> None:
    """Sync and async tests, the marker, runtime faults and the env helper all work."""
    pytester.makepyfile(test_user_service=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=5)


def test_config_fixture_can_be_overridden(pytester: pytest.Pytester) -> None:
    """A user's conftest.py overriding ``facematch_sandbox_config`` sets the credentials."""
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_user_config=USER_CONFIG_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_marker_is_documented(pytester: pytest.Pytester) -> None:
    """``pytest --markers`` lists the facematch_sandbox marker."""
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["*facematch_sandbox(**settings)*"])


def test_handle_repr_hides_the_secret(facematch_sandbox: SandboxHandle) -> None:
    """The fixture also works in this project's own tests; its repr keeps the secret out."""
    assert facematch_sandbox.base_url.startswith("http://127.0.0.1:")
    assert facematch_sandbox.client_secret not in repr(facematch_sandbox)


USER_REAL_FACES_TEST = """
import pytest

from facematch_async import FaceMatchClient
from facematch_async.errors import NoFaceFoundError

FACES = {faces!r}


@pytest.mark.facematch_sandbox(engine="dlib")
@pytest.mark.asyncio
async def test_real_faces(facematch_sandbox):
    async with FaceMatchClient(
        client_id=facematch_sandbox.client_id,
        client_secret=facematch_sandbox.client_secret,
        base_url=facematch_sandbox.base_url,
    ) as client:
        assert (await client.match(FACES + "/obama.jpg", FACES + "/obama2.jpg")).match
        assert not (await client.match(FACES + "/obama.jpg", FACES + "/biden.jpg")).match
        with pytest.raises(NoFaceFoundError):
            await client.match(FACES + "/obama.jpg", FACES + "/no_face.png")
"""


@pytest.mark.skipif(not dlib_available(), reason="the 'face' extra is not installed")
@pytest.mark.skipif(not FACES.is_dir(), reason=f"the sample photos folder {FACES} is not there")
def test_users_can_ask_for_the_real_engine(pytester: pytest.Pytester) -> None:
    """``@pytest.mark.facematch_sandbox(engine="dlib")`` gives a user's test real verdicts."""
    pytester.makepyfile(test_user_faces=USER_REAL_FACES_TEST.format(faces=str(FACES)))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
