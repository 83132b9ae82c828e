"""A local, Deepvue-compatible Face Match server for tests, demos and offline development.

It speaks the HTTP contract only (routes, status codes, bodies, ``sub_code``) and shares no
code with the client. Faces are compared by a pluggable engine; the default
:class:`TestEngine` is deterministic and does no face recognition.
"""

from __future__ import annotations

from facematch_async.sandbox._app import create_app
from facematch_async.sandbox._config import SandboxConfig
from facematch_async.sandbox._counters import SandboxCounters
from facematch_async.sandbox._engines import EngineVerdict, FaceEngine, TestEngine, make_test_image
from facematch_async.sandbox._faults import FaultScript, ScriptedResponse
from facematch_async.sandbox._server import SandboxServer, serve

__all__ = [
    "EngineVerdict",
    "FaceEngine",
    "FaultScript",
    "SandboxConfig",
    "SandboxCounters",
    "SandboxServer",
    "ScriptedResponse",
    "TestEngine",
    "create_app",
    "make_test_image",
    "serve",
]
