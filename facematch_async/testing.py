"""A pytest plugin: a Deepvue sandbox for your own tests, as the ``facematch_sandbox`` fixture.

Installed with facematch-async (entry point ``pytest11``), so there is nothing to register::

    from facematch_async import FaceMatchClient

    async def test_kyc_flow(facematch_sandbox):
        async with FaceMatchClient(
            client_id=facematch_sandbox.client_id,
            client_secret=facematch_sandbox.client_secret,
            base_url=facematch_sandbox.base_url,
        ) as client:
            ...
        assert facematch_sandbox.counters.authorize_calls == 1

Fixtures:

* ``facematch_sandbox``: a sandbox on a free loopback port, running in a background thread
  on its own event loop, so it serves sync tests, async tests (whatever their loop or
  plugin) and code under test that makes blocking calls alike.
* ``facematch_sandbox_async``: the same, on the test's own event loop (needs
  pytest-asyncio); handy when the test wants one loop for everything.
* ``facematch_sandbox_config``: the :class:`~facematch_async.sandbox.SandboxConfig` both
  use; override it in a ``conftest.py`` to change the defaults for a whole folder.

Per test, the ``facematch_sandbox`` marker overrides config fields::

    @pytest.mark.facematch_sandbox(engine="dlib", rate_limit="business")
    def test_real_faces(facematch_sandbox): ...

Before production, meet every unknown the contract leaves open at its least forgiving
plausible value (:meth:`~facematch_async.sandbox.SandboxConfig.pessimistic`): per test with
``@pytest.mark.facematch_sandbox(pessimistic=True)``, or for every test with
``pytest --facematch-pessimistic`` (or ``facematch_pessimistic = true`` in the ini file).
Fields the config or the marker set win; the run's seed is random unless
``--facematch-seed N`` (or the marker's ``seed=N``) fixes it. Each sandbox prints what it
does about the unknowns on stderr, so a failing test's report shows the seed to repeat it.

Both fixtures yield a :class:`SandboxHandle`: ``base_url``, ``client_id``, ``client_secret``,
and ``server`` for counters, scripted and random faults, and token revocation.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from facematch_async.sandbox import SandboxConfig, SandboxCounters, SandboxServer

__all__ = ["SandboxHandle"]

DEFAULT_CLIENT_ID = "sandbox-client"
DEFAULT_CLIENT_SECRET = "sandbox-secret"  # noqa: S105 - the sandbox's well-known test secret
_MARKER = "facematch_sandbox"
_PESSIMISTIC = "facematch_pessimistic"


@dataclass(frozen=True)
class SandboxHandle:
    """A running sandbox and the credentials it accepts. Its repr hides the secret.

    Attributes:
        base_url: ``http://127.0.0.1:PORT``; give it to the client as ``base_url``.
        client_id: the client id the sandbox accepts.
        client_secret: that client's secret (also the ``x-api-key``).
        server: the server itself: ``counters``, ``faults`` (scripted responses),
            ``set_random_faults``, ``revoke_all_tokens``, ``reset_rate_limit``...
    """

    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    server: SandboxServer

    @property
    def counters(self) -> SandboxCounters:
        """What the sandbox has seen (shortcut for ``server.counters``)."""
        return self.server.counters

    def env(self) -> dict[str, str]:
        """``DEEPVUE_BASE_URL``, ``DEEPVUE_CLIENT_ID`` and ``DEEPVUE_CLIENT_SECRET`` for it.

        For code under test that reads its settings from the environment::

            monkeypatch.setattr(os, "environ", {**os.environ, **facematch_sandbox.env()})
        """
        return {
            "DEEPVUE_BASE_URL": self.base_url,
            "DEEPVUE_CLIENT_ID": self.client_id,
            "DEEPVUE_CLIENT_SECRET": self.client_secret,
        }


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--facematch-pessimistic`` and ``--facematch-seed``, and the ini setting."""
    group = parser.getgroup("facematch", "facematch-async sandbox")
    group.addoption(
        "--facematch-pessimistic",
        action="store_true",
        default=None,
        help="run every facematch_sandbox with production's unknowns at their least "
        "forgiving plausible values (SandboxConfig.pessimistic)",
    )
    group.addoption(
        "--facematch-seed",
        type=int,
        default=None,
        help="seed the pessimistic sandboxes' draws, to repeat a run",
    )
    parser.addini(
        _PESSIMISTIC, "as --facematch-pessimistic, for every run", type="bool", default=False
    )


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marker, so ``--strict-markers`` accepts it."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(**settings): SandboxConfig fields for this test's facematch_sandbox, "
        "e.g. engine='dlib', rate_limit='business', faults=FaultConfig(drop_rate=0.1); "
        "pessimistic=True meets production's unknowns at their least forgiving",
    )


@pytest.fixture
def facematch_sandbox_config() -> SandboxConfig:
    """The sandbox's settings: the test engine, no rate limit, no faults. Override at will."""
    from facematch_async.sandbox import SandboxConfig

    return SandboxConfig(client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET)


def _configured(request: pytest.FixtureRequest, base: SandboxConfig) -> SandboxConfig:
    """``base`` with the closest ``facematch_sandbox`` marker's fields, made pessimistic
    when the marker or the run asks (the fields ``base`` sets, and the marker's, win)."""
    marker = request.node.get_closest_marker(_MARKER)
    settings: dict[str, Any] = {}
    if marker is not None:
        if marker.args:
            raise pytest.UsageError(f"@pytest.mark.{_MARKER} takes keyword arguments only")
        settings.update(marker.kwargs)
    option = request.config.getoption(_PESSIMISTIC)
    pessimistic = settings.pop("pessimistic", None)
    if pessimistic is None:
        pessimistic = option if option is not None else request.config.getini(_PESSIMISTIC)
    if not pessimistic:
        return dataclasses.replace(base, **settings)
    seed = request.config.getoption("facematch_seed")
    if seed is not None:
        settings.setdefault("seed", seed)
    told = {
        spec.name: getattr(base, spec.name)
        for spec in dataclasses.fields(base)
        if spec.name not in ("client_id", "client_secret")
        and getattr(base, spec.name) != spec.default
    }
    return type(base).pessimistic(base.client_id, base.client_secret, **{**told, **settings})


def _announce(server: SandboxServer) -> None:
    """The sandbox's banner on stderr: shown with a failing test's report."""
    from facematch_async.sandbox._server import banner

    print(banner(server), file=sys.stderr)


def _handle(server: SandboxServer) -> SandboxHandle:
    config = server.config
    return SandboxHandle(
        base_url=server.base_url,
        client_id=config.client_id,
        client_secret=config.client_secret,
        server=server,
    )


@pytest.fixture
def facematch_sandbox(
    request: pytest.FixtureRequest, facematch_sandbox_config: SandboxConfig
) -> Iterator[SandboxHandle]:
    """A sandbox on a free loopback port, served from a background thread."""
    from facematch_async.sandbox import BackgroundSandbox

    with BackgroundSandbox(_configured(request, facematch_sandbox_config)) as sandbox:
        _announce(sandbox.server)
        yield _handle(sandbox.server)


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - only the threaded fixture without pytest-asyncio
    pass
else:

    @pytest_asyncio.fixture
    async def facematch_sandbox_async(
        request: pytest.FixtureRequest, facematch_sandbox_config: SandboxConfig
    ) -> AsyncIterator[SandboxHandle]:
        """A sandbox on a free loopback port, served from the test's own event loop."""
        from facematch_async.sandbox import SandboxServer

        async with SandboxServer(_configured(request, facematch_sandbox_config)) as server:
            _announce(server)
            yield _handle(server)
