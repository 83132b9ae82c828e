"""The onboarding example (examples/fastapi_kyc.py) under load, before and after.

Runs the example under uvicorn in a subprocess, against a sandbox in another with 200 ms
of API latency; then also 20% of 503s; then 5% of requests stalled 30 s. Fires N
onboarding requests with C in flight from this process, alternating "before" (the example
and client of a git ref, ``main`` by default, exported to a temporary folder) and "after"
(this working tree). Prints, per scenario, p50/p95/p99 and the longest request (ms), the
error share, throughput, the service's CPU per request, and the answers by status (and
by ``code`` where the example gives one).

Two more scenarios (``--overload``), against a sandbox in this process (its counters are
read here), each with the example of "before" and "after":

* five times the plan's demand: the service with ``DEEPVUE_RATE_LIMIT=business`` (2/s,
  100/min), customers arriving at 10/s for ``--seconds``, 200 ms of API latency, a 10 s
  deadline: goodput against the plan, how fast refusals answer, p95 of the matched, and
  the calls billed without an answer (cut off on the wire: the sandbox's cancelled count);
* 50 customers at once, each with two 9.5 MB photos: the service's peak RSS.

    python benchmarks/bench_onboarding.py                  # main vs this tree, ~3 minutes
    python benchmarks/bench_onboarding.py --before HEAD~3 --requests 200 --no-stalls
    python benchmarks/bench_onboarding.py --before c1d9b34 --overload-only
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from facematch_async.sandbox import (
    BackgroundSandbox,
    FaultConfig,
    SandboxConfig,
    make_test_image,
    sandbox_process,
)

HERE = Path(__file__).resolve().parents[1]
CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret-not-logged"
SELFIE = make_test_image("meera", "jpeg")
DOCUMENT = make_test_image("meera", "png")


@dataclass
class Figures:
    latencies: list[float]
    statuses: collections.Counter[str]
    wall: float
    cpu: float  # seconds of the service process's CPU

    def __add__(self, other: Figures) -> Figures:
        return Figures(
            self.latencies + other.latencies,
            self.statuses + other.statuses,
            self.wall + other.wall,
            self.cpu + other.cpu,
        )

    def row(self, label: str) -> str:
        ordered = sorted(self.latencies)

        def pct(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

        errors = sum(n for status, n in self.statuses.items() if not status.startswith("200"))
        return (
            f"{label:<34} {pct(0.50):>7.0f} {pct(0.95):>7.0f} {pct(0.99):>7.0f} "
            f"{max(ordered) * 1000:>8.0f} {100 * errors / len(ordered):>6.1f}% "
            f"{len(ordered) / self.wall:>6.0f}/s {self.cpu * 1000 / len(ordered):>6.2f}  "
            + ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        )


@contextmanager
def tree_of(ref: str) -> Iterator[Path]:
    """The repository's files at ``ref``, in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="bench-onboarding-") as folder:
        archive = subprocess.run(  # noqa: S603
            ["git", "-C", str(HERE), "archive", "--format=tar", ref],  # noqa: S607
            check=True,
            capture_output=True,
        ).stdout
        archive_path = Path(folder) / "tree.tar"
        archive_path.write_bytes(archive)
        with tarfile.open(archive_path) as tar:
            tar.extractall(Path(folder) / "tree", filter="data")
        yield Path(folder) / "tree"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def service(root: Path, sandbox_url: str, **settings: str) -> Iterator[tuple[str, int]]:
    """uvicorn serving ``root``'s example with ``root``'s client (first on sys.path)."""
    port = free_port()
    env = dict(
        os.environ,
        DEEPVUE_BASE_URL=sandbox_url,
        DEEPVUE_CLIENT_ID=CLIENT_ID,
        DEEPVUE_CLIENT_SECRET=CLIENT_SECRET,
        PYTHONPATH=str(root),
        **settings,
    )
    check = subprocess.run(
        [sys.executable, "-c", "import facematch_async; print(facematch_async.__file__)"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.startswith(str(root)), f"imported {check.stdout} instead of {root}"
    process = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(root),
            "--port",
            str(port),
            "--log-level",
            "error",
            "--no-access-log",
            "examples.fastapi_kyc:app",
        ],
        env=env,
        cwd=root,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/docs", timeout=1).close()  # noqa: S310
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError("the service did not start") from None
                time.sleep(0.05)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(10)


async def one(session: aiohttp.ClientSession, url: str) -> tuple[float, str]:
    form = aiohttp.FormData()
    form.add_field("selfie", SELFIE, filename="selfie.jpg", content_type="image/jpeg")
    form.add_field("id_document", DOCUMENT, filename="id.png", content_type="image/png")
    started = time.perf_counter()
    async with session.post(url + "/kyc/face-match", data=form) as response:
        body = await response.json(content_type=None)
    code = body.get("code") if isinstance(body, dict) else None
    label = str(response.status) + (f" {code}" if code else "")
    return time.perf_counter() - started, label


async def load(url: str, pid: int, requests: int, concurrency: int) -> Figures:
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await one(session, url)  # warm: token, connections
        slots = asyncio.Semaphore(concurrency)

        async def guarded() -> tuple[float, str]:
            async with slots:
                return await one(session, url)

        started, cpu = time.perf_counter(), cpu_seconds(pid)
        results = await asyncio.gather(*(guarded() for _ in range(requests)))
        wall, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu
    statuses = collections.Counter(r[1] for r in results)
    return Figures([r[0] for r in results], statuses, wall, cpu)


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (Linux ``VmHWM``; 0 elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def big_jpeg(tag: str, size: int) -> bytes:
    """A valid JPEG of about ``size`` bytes: the test image, padded with comment segments."""
    small = make_test_image(tag, "jpeg")
    padding = b"".join(
        b"\xff\xfe" + (65535).to_bytes(2, "big") + b"\0" * 65533
        for _ in range(max(0, size - len(small)) // 65537)
    )
    return small[:2] + padding + small[2:]


def overload(url: str, counters_of: BackgroundSandbox, seconds: float) -> str:
    """Customers arriving at 10/s (5x business) for ``seconds``; one row of figures."""

    async def run() -> list[tuple[float, str]]:
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await one(session, url)
            await asyncio.sleep(61)  # the minute window empties
            counters_of.server.counters.reset()
            tasks = []
            for _ in range(int(seconds * 10)):
                tasks.append(asyncio.ensure_future(one(session, url)))
                await asyncio.sleep(0.1)
            return await asyncio.gather(*tasks)

    started = time.perf_counter()
    results = asyncio.run(run())
    wall = time.perf_counter() - started - 61
    counters = counters_of.server.counters
    ok = sorted(t for t, label in results if label.startswith("200"))
    refused = sorted(t for t, label in results if label.startswith("503"))

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else 0.0

    cut = counters.count("/v1/facematch", 0)  # sent, then cut off before the answer
    return (
        f"goodput {len(ok) / wall:.2f}/s (plan 1.67/s sustained, 2/s burst), "
        f"{len(refused)} refused p50/p95 {pct(refused, 0.5):.0f}/{pct(refused, 0.95):.0f} ms, "
        f"matched p95 {pct(ok, 0.95):.0f} ms, billed without an answer {cut}, "
        f"answers {dict(collections.Counter(label for _, label in results))}"
    )


def memory(url: str, pid: int) -> str:
    """50 customers at once with two 9.5 MB photos each: the service's peak RSS."""
    selfie, document = big_jpeg("meera", int(9.5 * 1024 * 1024)), big_jpeg("meera", 9_900_000)

    async def post(session: aiohttp.ClientSession) -> str:
        form = aiohttp.FormData()
        form.add_field("selfie", selfie, filename="selfie.jpg", content_type="image/jpeg")
        form.add_field("id_document", document, filename="id.jpg", content_type="image/jpeg")
        async with session.post(url + "/kyc/face-match", data=form) as response:
            body = await response.json(content_type=None)
            return f"{response.status} {body.get('code') if isinstance(body, dict) else ''}"

    async def run() -> collections.Counter[str]:
        timeout = aiohttp.ClientTimeout(total=300)
        connector = aiohttp.TCPConnector(limit=50)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            return collections.Counter(await asyncio.gather(*(post(session) for _ in range(50))))

    answers = asyncio.run(run())
    return f"peak RSS {peak_rss_mib(pid):.0f} MiB, answers {dict(answers)}"


def overload_scenarios(before: Path, versions: dict[str, Path], seconds: float) -> None:
    config = SandboxConfig(CLIENT_ID, CLIENT_SECRET, rate_limit="business")
    for name, root in versions.items():
        with BackgroundSandbox(config) as box:
            box.server.set_random_faults(FaultConfig(latency=0.2))
            settings = {"DEEPVUE_RATE_LIMIT": "business", "KYC_DEADLINE": "10"}
            with service(root, box.base_url, **settings) as (url, _):
                print(f"5x the plan, {name}: {overload(url, box, seconds)}", flush=True)
        with BackgroundSandbox(SandboxConfig(CLIENT_ID, CLIENT_SECRET)) as box:
            box.server.set_random_faults(FaultConfig(latency=0.2))
            with service(root, box.base_url) as (url, pid):
                print(f"50 x 2 x 9.5 MB photos, {name}: {memory(url, pid)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="main", help="git ref of 'before' (%(default)s)")
    parser.add_argument("--requests", type=int, default=300, help="per run (%(default)s)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per row (%(default)s)")
    parser.add_argument("--concurrency", default="50,200", help="(%(default)s)")
    parser.add_argument("--latency", type=float, default=0.2, help="API latency, s")
    parser.add_argument(
        "--no-stalls",
        dest="stalls",
        action="store_false",
        help="skip the stall scenario (first concurrency level, one run: ~1 minute)",
    )
    parser.add_argument(
        "--overload-only", action="store_true", help="only the overload and memory scenarios"
    )
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="overload: seconds of arrivals (%(default)s)"
    )
    args = parser.parse_args()
    if args.overload_only:
        with tree_of(args.before) as before:
            versions = {f"before ({args.before})": before, "after (this tree)": HERE}
            overload_scenarios(before, versions, args.seconds)
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    faults = {"200 ms": [], "200 ms + 20% 503": ["--error-rate-503", "0.2"]}
    if args.stalls:
        # 5% of requests stall 30 s: what a per-attempt timeout alone lets through.
        faults["200 ms + 5% stalls"] = ["--stall-rate", "0.05", "--stall-seconds", "30"]

    print(
        f"{'scenario':<36} {'p50':>7} {'p95':>7} {'p99':>7} {'longest':>8} {'errors':>7} "
        f"{'rate':>8} {'cpu/req':>6}  answers (status code)"
    )
    sandbox_args = ("--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET)
    latency = ("--latency", str(args.latency))
    with tree_of(args.before) as before:
        versions = {f"before ({args.before})": before, "after (this tree)": HERE}
        for fault_name, flags in faults.items():
            with (
                sandbox_process(*sandbox_args, *latency, *flags) as sandbox_url,
                service(before, sandbox_url) as before_service,
                service(HERE, sandbox_url) as after_service,
            ):
                services = dict(zip(versions, (before_service, after_service), strict=True))
                stalls = "stalls" in fault_name
                for concurrency in levels[:1] if stalls else levels:
                    pooled: dict[str, Figures] = {}
                    for repeat in range(1 if stalls else args.repeat):
                        # Alternate the order, so that neither always runs on a warmer machine.
                        names = list(services)[:: 1 if repeat % 2 == 0 else -1]
                        for name in names:
                            url, pid = services[name]
                            figures = asyncio.run(load(url, pid, args.requests, concurrency))
                            pooled[name] = pooled[name] + figures if name in pooled else figures
                    for name, figures in pooled.items():
                        print(figures.row(f"{fault_name}, c={concurrency}, {name}"), flush=True)
    print(
        "latencies in ms, pooled over the repeats; errors: share of non-200 answers; "
        "rate: requests per second; cpu/req: the service's CPU ms per request"
    )


if __name__ == "__main__":
    main()
