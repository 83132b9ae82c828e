"""A whole batch with faults and DEBUG logging: no output anywhere holds the secret or a token."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facematch_async import BatchRunner, FaceMatchClient, RetryPolicy
from facematch_async.sandbox import (
    FaultConfig,
    SandboxConfig,
    SandboxServer,
    ScriptedResponse,
    make_test_image,
)

CLIENT_ID = "leak-test-client"
SECRET = "Sup3r-s3cret-VALUE-9d2e1f"
FAULTS = FaultConfig(
    error_rate_500=0.1, rate_429_burst=0.03, burst_length=1, revoke_rate=0.05, seed=7
)


def manifest(folder: Path, pairs: int) -> Path:
    (folder / "a.jpg").write_bytes(make_test_image("a", "jpeg"))
    (folder / "b.png").write_bytes(make_test_image("b", "png"))
    (folder / "gif.jpg").write_bytes(b"GIF89a..")
    rows = ["pair_id,file_a,file_b"]
    rows += [f"p{i},a.jpg,{'gif.jpg' if i % 10 == 0 else 'b.png'}" for i in range(pairs)]
    path = folder / "pairs.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


async def test_python_batch_leaks_nothing_at_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Logs at DEBUG, outcomes and errors of a faulty 200-pair run never hold secret or token."""
    caplog.set_level(logging.DEBUG)
    config = SandboxConfig(CLIENT_ID, SECRET, token_ttl=2.0, faults=FAULTS)
    from facematch_async import read_manifest

    async with SandboxServer(config) as sandbox:
        # An error body that echoes the credentials back.
        sandbox.scripted.add(
            ScriptedResponse(path="/v1/facematch", status=400, json={"detail": f"bad {SECRET}"})
        )
        async with FaceMatchClient(
            client_id=CLIENT_ID,
            client_secret=SECRET,
            base_url=sandbox.base_url,
            retry_policy=RetryPolicy(backoff_initial=0.01, backoff_max=0.05, backoff_jitter=0.01),
        ) as client:
            runner = BatchRunner(client, concurrency=16, rate_limit=None)
            outcomes = [o async for o in runner.run(read_manifest(manifest(tmp_path, 200)))]
            tokens = {client._tokens.cached()}
    texts = [caplog.text, *(repr(o) for o in outcomes)]
    texts += [repr(r.__dict__) for r in caplog.records]
    assert len(outcomes) == 200
    assert any(o.status == "error" for o in outcomes)
    for text in texts:
        assert SECRET not in text
        for token in tokens:
            assert token is None or token not in text


def test_cli_batch_leaks_nothing(tmp_path: Path) -> None:
    """The CLI's stdout, stderr and results file never hold the secret, faults and all."""
    env = dict(os.environ, DEEPVUE_CLIENT_ID=CLIENT_ID, DEEPVUE_CLIENT_SECRET=SECRET)
    sandbox = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "facematch_async.cli",
            "sandbox",
            "--port",
            "0",
            "--engine",
            "test",  # the tagged images are judged by tag; the CLI's default is auto
            "--error-rate-500",
            "0.1",
            "--token-ttl",
            "2",
            "--seed",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert sandbox.stdout is not None
        url = sandbox.stdout.readline().strip().removeprefix("Sandbox listening on ")
        results = tmp_path / "results.jsonl"
        completed = subprocess.run(  # noqa: S603
            [
                sys.executable,
                "-m",
                "facematch_async.cli",
                "batch",
                str(manifest(tmp_path, 100)),
                "--out",
                str(results),
                "--base-url",
                url,
                "--rate-limit",
                "none",
                "--progress-interval",
                "0.1",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        sandbox.terminate()
        _, sandbox_err = sandbox.communicate(timeout=10)
    assert completed.returncode == 1, completed.stderr  # the GIF pairs are errors
    outputs = [completed.stdout, completed.stderr, results.read_text(), sandbox_err]
    assert len(results.read_text().splitlines()) == 100
    for text in outputs:
        assert SECRET not in text
