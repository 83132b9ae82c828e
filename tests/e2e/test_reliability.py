"""Reliability under load: every pair ends exactly once, whatever the server throws at it."""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facematch_async import BatchRunner, FaceMatchClient, RetryPolicy
from facematch_async.batch import PairSpec
from facematch_async.sandbox import (
    FaultConfig,
    SandboxConfig,
    SandboxServer,
    ScriptedResponse,
    make_test_image,
    sandbox_process,
)
from tests.helpers import CLIENT_ID, CLIENT_SECRET

PAIRS = 2000
TRANSIENT = {"InternalServerError", "RateLimitError", "APIConnectionError", "APITimeoutError"}
MAX_RETRIES = 4
# Transient faults at the rates: 10% 500s, 5% 503s, 5% 429s, 2% drops, some stalls.
FAULTS = FaultConfig(
    error_rate_500=0.10,
    error_rate_503=0.05,
    rate_429_burst=0.05,
    burst_length=1,
    drop_rate=0.02,
    stall_rate=0.005,
    stall_seconds=2.0,
    seed=20261125,
)


def write_pairs(folder: Path) -> list[PairSpec]:
    """2,000 pairs over a handful of files: a third match, a third do not, some have no face."""
    files = {}
    for name in ("anya", "ben", "chen", "none"):
        files[name] = folder / f"{name}.jpg"
        files[name].write_bytes(make_test_image(name, "jpeg"))
    cycle = [("anya", "anya"), ("anya", "ben"), ("chen", "chen"), ("none", "ben")]
    pairs = []
    for index in range(PAIRS):
        a, b = cycle[index % len(cycle)]
        pairs.append(PairSpec(f"p{index:05d}", files[a], files[b]))
    return pairs


@pytest.mark.slow
async def test_every_pair_ends_exactly_once_under_mixed_faults(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """2,000 pairs, 22% of attempts failing transiently and 2 s tokens: one outcome each."""
    caplog.set_level(logging.DEBUG)
    config = SandboxConfig(CLIENT_ID, CLIENT_SECRET, token_ttl=2.0, faults=FAULTS)
    pairs = write_pairs(tmp_path)
    started = time.monotonic()
    async with SandboxServer(config) as sandbox:
        async with FaceMatchClient(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            base_url=sandbox.base_url,
            timeout=1.0,
            max_retries=MAX_RETRIES,
            retry_policy=RetryPolicy(backoff_initial=0.01, backoff_max=0.1, backoff_jitter=0.01),
        ) as client:
            runner = BatchRunner(client, concurrency=64, rate_limit=None)
            outcomes = [outcome async for outcome in runner.run(pairs)]
        counters = sandbox.counters
    elapsed = time.monotonic() - started

    ids = collections.Counter(outcome.pair_id for outcome in outcomes)
    assert len(ids) == PAIRS
    assert set(ids.values()) == {1}
    statuses = collections.Counter(outcome.status for outcome in outcomes)
    errors = collections.Counter(
        outcome.error.type for outcome in outcomes if outcome.status == "error" and outcome.error
    )
    attempts = collections.Counter(outcome.attempts for outcome in outcomes)
    print(
        f"\n{PAIRS} pairs in {elapsed:.1f} s: {dict(statuses)}; errors {dict(errors)}; "
        f"attempts per pair {dict(sorted(attempts.items()))}; "
        f"faults injected {dict(counters.faults_injected)}; authorize calls "
        f"{counters.authorize_calls}; batch 429s {runner.rate_limited}"
    )
    # The engine's verdicts survive the noise: every decided pair has its own verdict (a
    # pair that ran out of budget is an error instead, of a transient kind).
    expected = ("match", "no_match", "match", "no_face")
    for outcome in outcomes:
        if outcome.status == "error":
            assert outcome.error is not None and outcome.error.type in TRANSIENT, outcome
        else:
            assert outcome.status == expected[int(outcome.pair_id[1:]) % 4], outcome
    # Transient failures end as decisions when the budget allows: with 5 attempts per
    # pair and about 22% failing, a handful of pairs at most run out of budget.
    assert statuses["error"] <= PAIRS * 0.01
    assert statuses["match"] + statuses["no_match"] >= PAIRS * 0.74
    # Retries stay within budget: a pair's attempts never exceed its retries, one token
    # refresh, and the runner's rate-limit rounds.
    budget = (MAX_RETRIES + 2) * (runner.rate_limit_rounds + 1)
    assert max(attempts) <= budget
    assert sum(counters.faults_injected.values()) > PAIRS * 0.15
    assert counters.authorize_calls >= 3  # 2 s tokens were renewed during the run
    # Nothing was logged above DEBUG/INFO as an unhandled error.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_token_rejected_after_renewal_does_not_stop_the_batch(tmp_path: Path) -> None:
    """Tokens revoked under load cost the pair another round, never the whole batch."""
    async with SandboxServer(SandboxConfig(CLIENT_ID, CLIENT_SECRET)) as sandbox:
        # The first pair's attempt and its one renewed attempt are both refused.
        sandbox.scripted.add(
            ScriptedResponse(
                path="/v1/facematch", status=403, json={"detail": "Not a valid token"}, times=2
            )
        )
        async with FaceMatchClient(
            client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=sandbox.base_url
        ) as client:
            runner = BatchRunner(client, concurrency=1, rate_limit=None)
            outcomes = [o async for o in runner.run(write_pairs(tmp_path)[:4])]
    assert [o.status for o in outcomes] == ["match", "no_match", "match", "no_face"]
    assert outcomes[0].attempts == 3
    assert runner.stop_reason is None


# A sandbox process whose engine notes every pair it compares (by image_a's identity tag)
# and takes a little time, so that a batch can be killed mid-run.
RECORDING_SANDBOX = """
import asyncio, sys, time
from facematch_async.sandbox import SandboxConfig, TestEngine, serve

class RecordingEngine(TestEngine):
    def compare(self, a, b):
        time.sleep(0.02)
        with open(sys.argv[3], "a") as log:
            log.write(self.identity(a) + "\\n")
        return super().compare(a, b)

config = SandboxConfig(sys.argv[1], sys.argv[2], engine=RecordingEngine())
asyncio.run(serve(config, "127.0.0.1", 0))
"""


def finished_ids(results: Path) -> list[str]:
    """Pair ids of the complete lines of a JSONL results file (a torn last line is skipped)."""
    ids = []
    for line in results.read_bytes().split(b"\n"):
        try:
            ids.append(json.loads(line)["pair_id"])
        except ValueError:
            continue
    return ids


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_sends_no_finished_pair_again(
    tmp_path: Path,
) -> None:
    """Killed 4 times at random and resumed: every pair once in the file, none re-sent."""
    count = 150
    rows = ["pair_id,file_a,file_b"]
    for index in range(count):
        pair = f"p{index:03d}"
        (tmp_path / f"{pair}.png").write_bytes(make_test_image(pair, "png"))
        rows.append(f"{pair},{pair}.png,{pair}.png")
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("\n".join(rows) + "\n")
    compared = tmp_path / "compared.log"
    compared.touch()
    recording = [sys.executable, "-c", RECORDING_SANDBOX, CLIENT_ID, CLIENT_SECRET, str(compared)]
    with sandbox_process(command=recording) as url:
        env = dict(os.environ, DEEPVUE_CLIENT_ID=CLIENT_ID, DEEPVUE_CLIENT_SECRET=CLIENT_SECRET)
        out = tmp_path / "results.jsonl"
        command = [sys.executable, "-m", "facematch_async.cli", "batch", str(manifest)]
        command += ["--out", str(out), "--base-url", url, "--rate-limit", "none"]
        command += ["--concurrency", "4"]
        chance = random.Random(1125)
        for run in range(5):
            finished_before = set(finished_ids(out)) if out.exists() else set()
            sent_before = len(compared.read_text().splitlines())
            batch = subprocess.Popen(  # noqa: S603
                command + (["--resume"] if run else []),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            if run < 4:
                time.sleep(chance.uniform(0.3, 1.2))
                batch.send_signal(signal.SIGKILL)
                batch.wait(10)
                assert batch.stderr is not None
                batch.stderr.close()  # its pipe, else a ResourceWarning (an error here)
            else:
                _, err = batch.communicate(timeout=120)
                assert batch.returncode == 0, err
            resent = set(compared.read_text().splitlines()[sent_before:]) & finished_before
            assert not resent, f"run {run} sent finished pairs again: {sorted(resent)[:5]}"
    ids = finished_ids(out)
    assert sorted(ids) == [f"p{index:03d}" for index in range(count)]
    sends = collections.Counter(compared.read_text().splitlines())
    print(f"\n{count} pairs, 4 kills: {sum(sends.values())} sends, {len(sends)} distinct")
