"""Client overhead: FaceMatchClient.match against a hand-written aiohttp loop, same run.

The sandbox runs in a separate process (test engine, no added latency), so what differs
between the peers is client-side work: reading images, building multipart bodies, auth,
parsing. Each peer makes N matches at a fixed concurrency; figures are the median of R runs.

    python benchmarks/bench_client.py [--pairs 2000] [--concurrency 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path

import aiohttp

from facematch_async import FaceMatchClient
from facematch_async.sandbox import make_test_image

CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret"


def start_sandbox() -> tuple[subprocess.Popen[str], str]:
    """Start the sandbox CLI in its own process (pinned to CPU 0 where taskset exists)."""
    command = [sys.executable, "-m", "facematch_async.cli", "sandbox", "--port", "0"]
    command += ["--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET]
    if os.cpu_count() and os.cpu_count() >= 2 and Path("/usr/bin/taskset").exists():  # type: ignore[operator]
        command = ["taskset", "-c", "0", *command]
        os.sched_setaffinity(0, {1})
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # noqa: S603
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("Sandbox listening on "):
        raise RuntimeError(f"sandbox did not start: {line!r}")
    return process, line.removeprefix("Sandbox listening on ")


def write_images(folder: Path, count: int) -> list[tuple[Path, Path]]:
    """Distinct ~100 KB JPEG-tagged pairs (padding makes realistic upload sizes)."""
    pairs = []
    for index in range(count):
        a, b = folder / f"{index}_a.jpg", folder / f"{index}_b.jpg"
        a.write_bytes(make_test_image(f"p{index}", "jpeg", pad_to=100_000))
        b.write_bytes(make_test_image(f"p{index}", "jpeg", pad_to=60_000))
        pairs.append((a, b))
    return pairs


async def run_sdk(base_url: str, pairs: list[tuple[Path, Path]], concurrency: int) -> int:
    async with FaceMatchClient(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=base_url
    ) as client:
        semaphore = asyncio.Semaphore(concurrency)
        errors = 0

        async def one(a: Path, b: Path) -> None:
            nonlocal errors
            async with semaphore:
                result = await client.match(a, b)
                errors += not result.match

        await asyncio.gather(*(one(a, b) for a, b in pairs))
        return errors


async def run_aiohttp(base_url: str, pairs: list[tuple[Path, Path]], concurrency: int) -> int:
    """The loop people write by hand: a semaphore, plain reads, one token up front."""
    async with aiohttp.ClientSession() as session:
        form = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        async with session.post(f"{base_url}/v1/authorize", data=form) as response:
            token = (await response.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}", "x-api-key": CLIENT_SECRET}
        semaphore = asyncio.Semaphore(concurrency)
        errors = 0

        async def one(a: Path, b: Path) -> None:
            nonlocal errors
            async with semaphore:
                data = aiohttp.FormData()
                data.add_field(
                    "file_a", a.read_bytes(), filename="a.jpg", content_type="image/jpeg"
                )
                data.add_field(
                    "file_b", b.read_bytes(), filename="b.jpg", content_type="image/jpeg"
                )
                async with session.post(
                    f"{base_url}/v1/facematch", data=data, headers=headers
                ) as response:
                    body = await response.json()
                    errors += response.status != 200 or not body["data"]["match"]

        await asyncio.gather(*(one(a, b) for a, b in pairs))
        return errors


def measure(
    peer: Callable[[str, list[tuple[Path, Path]], int], Coroutine[None, None, int]],
    base_url: str,
    pairs: list[tuple[Path, Path]],
    concurrency: int,
) -> tuple[float, float]:
    """Return (pairs per second, client CPU milliseconds per pair) for one run."""
    wall, cpu = time.perf_counter(), time.process_time()
    errors = asyncio.run(peer(base_url, pairs, concurrency))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if errors:
        raise RuntimeError(f"{peer.__name__}: {errors} pairs did not match")
    return len(pairs) / wall, cpu * 1000 / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    process, base_url = start_sandbox()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pairs = write_images(Path(tmp), args.pairs)
            peers = {"aiohttp + plain reads": run_aiohttp, "facematch-async": run_sdk}
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in peers}
            for _ in range(args.repeat):  # interleaved, so drift hits every peer alike
                for name, peer in peers.items():
                    runs[name].append(measure(peer, base_url, pairs, args.concurrency))
    finally:
        process.terminate()
        process.wait(10)
    pinned = "server on CPU 0, client on CPU 1" if os.sched_getaffinity(0) == {1} else "unpinned"
    print(f"{args.pairs} pairs, concurrency {args.concurrency}, median of {args.repeat} ({pinned})")
    print(f"{'peer':<24}{'pairs/s':>10}{'CPU ms/pair':>14}")
    baseline = statistics.median(cpu for _, cpu in runs["aiohttp + plain reads"])
    for name, figures in runs.items():
        rate = statistics.median(rate for rate, _ in figures)
        cpu = statistics.median(cpu for _, cpu in figures)
        print(f"{name:<24}{rate:>10.0f}{cpu:>14.2f}   ({cpu / baseline:.2f}x aiohttp CPU)")


if __name__ == "__main__":
    main()
