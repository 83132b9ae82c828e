"""A local, Deepvue-compatible Face Match server for tests, demos and offline development.

It speaks the HTTP contract only (routes, status codes, bodies, ``sub_code``) and shares no
code with the client. Faces are compared by a pluggable engine: the deterministic
:class:`TestEngine` (the default in Python), or :class:`DlibEngine`, real offline face
verification with the ``face`` extra. Like production, it can enforce a plan's rate limits
(:class:`SandboxConfig` ``rate_limit``) and fail at random (:class:`FaultConfig`); its
:class:`SandboxCounters` show what a client did. :meth:`SandboxConfig.pessimistic` puts
every unknown of production (statuses, scales, nulls, limits, token lifetimes) at its least
forgiving plausible value at once.
"""

from __future__ import annotations

from facematch_async.sandbox._app import create_app
from facematch_async.sandbox._background import BackgroundSandbox
from facematch_async.sandbox._choice import ENGINE_NAMES, choose_engine
from facematch_async.sandbox._config import SandboxConfig
from facematch_async.sandbox._counters import SandboxCounters
from facematch_async.sandbox._dlib import (
    MATCH_THRESHOLD,
    DlibEngine,
    distance_to_confidence,
    dlib_available,
)
from facematch_async.sandbox._engines import EngineVerdict, FaceEngine, TestEngine, make_test_image
from facematch_async.sandbox._process import sandbox_process
from facematch_async.sandbox._random_faults import FAULT_KINDS, FaultConfig, FaultKind
from facematch_async.sandbox._ratelimit import PLANS, RateWindow, parse_rate_limit
from facematch_async.sandbox._scripted import ResponseScript, ScriptedResponse
from facematch_async.sandbox._server import SandboxServer, serve
from facematch_async.sandbox._unknowns import ConfidenceScale

__all__ = [
    "ENGINE_NAMES",
    "FAULT_KINDS",
    "MATCH_THRESHOLD",
    "PLANS",
    "BackgroundSandbox",
    "ConfidenceScale",
    "DlibEngine",
    "EngineVerdict",
    "FaceEngine",
    "FaultConfig",
    "FaultKind",
    "RateWindow",
    "ResponseScript",
    "SandboxConfig",
    "SandboxCounters",
    "SandboxServer",
    "ScriptedResponse",
    "TestEngine",
    "choose_engine",
    "create_app",
    "distance_to_confidence",
    "dlib_available",
    "make_test_image",
    "parse_rate_limit",
    "sandbox_process",
    "serve",
]
