"""Pairs from S3 against pairs from local disk: CPU per pair, peak RSS and pairs/s, side by
side in one run, at the same concurrency, against a sandbox with no rate limit.

    python benchmarks/bench_storage.py               # 500 distinct pairs, 3 rounds (~2 min)
    python benchmarks/bench_storage.py --smoke       # 20 pairs, 1 round (seconds)
    python benchmarks/bench_storage.py --pairs 1000 --rounds 5 --concurrency 64

The S3 side is moto's server mode (the same server the tests use) in its own process, found
through ``AWS_ENDPOINT_URL`` as any S3-compatible store is: it is a local stand-in, so the
figures are the client's own cost of reading through s3fs (HEAD, a ranged GET, request
signing, the multipart upload of what it read), not a bucket's latency. The sandbox
(test engine) and moto share one CPU and every client runs on another (``taskset``, with
two cores or more). Both modes read the same 60-200 KB JPEGs (seeded sizes) named by a
CSV manifest with relative paths: on disk beside the images, or in the bucket beside its
objects. Each run is a fresh process (its CPU counts every thread, fsspec's included; its
peak RSS is ``VmHWM``); the figures are medians over the rounds, modes interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CLIENT_ID, CLIENT_SECRET, pinning, sandbox, write_images

BUCKET = "bench"
MODES = ("local", "s3")
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextmanager
def moto_server(prefix: list[str]) -> Iterator[str]:
    """moto's S3 server in its own process on a free loopback port; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [*prefix, sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(  # noqa: S603 (moto's server, our arguments)
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):  # noqa: S310
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def upload(endpoint: str, folder: Path, pairs: list[tuple[Path, Path]]) -> str:
    """The images and a manifest of relative keys into the bucket; the manifest's URL."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
    try:
        client.create_bucket(Bucket=BUCKET)
        for a, b in pairs:
            for path in (a, b):
                client.put_object(Bucket=BUCKET, Key=f"img/{path.name}", Body=path.read_bytes())
        manifest = local_manifest(folder, pairs).read_bytes()  # the same relative keys
        client.put_object(Bucket=BUCKET, Key="pairs.csv", Body=manifest)
    finally:
        client.close()
    return f"s3://{BUCKET}/pairs.csv"


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


def local_manifest(folder: Path, pairs: list[tuple[Path, Path]]) -> Path:
    """A CSV manifest beside the ``img/`` folder, with relative paths (as in the bucket)."""
    path = folder / "pairs.csv"
    with open(path, "w") as file:
        file.write("pair_id,file_a,file_b\n")
        for index, (a, b) in enumerate(pairs):
            file.write(f"pair-{index:06d},img/{a.name},img/{b.name}\n")
    return path


def status_mib(field: str) -> float:
    """A memory figure of this process from ``/proc/self/status``, in MiB (0 elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def child(manifest: str, base_url: str, concurrency: int) -> dict[str, float]:
    """One batch in this process: every pair of ``manifest``, no rate limit."""
    from facematch_async import BatchRunner, BatchSummary, FaceMatchClient, read_manifest

    summary = BatchSummary()
    async with FaceMatchClient(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=base_url
    ) as client:
        await client.verify_credentials()
        # One pair read first, timed on its own: the store's library imported and its
        # session made (a one-off, whatever the size of the run), then the steady run.
        warm = time.process_time()
        first = next(iter(read_manifest(manifest)))
        await client.prepare(*first.images())
        warm = time.process_time() - warm
        rss_ready = status_mib("VmRSS")
        wall, cpu = time.perf_counter(), time.process_time()
        runner = BatchRunner(client, concurrency=concurrency, rate_limit=None)
        async for outcome in runner.run(read_manifest(manifest)):
            summary.add(outcome)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "pairs": summary.done,
        "errors": summary.statuses.get("error", 0),
        "matches": summary.statuses.get("match", 0),
        "pairs_per_s": summary.done / wall,
        "cpu_ms_per_pair": 1000 * cpu / max(summary.done, 1),
        "first_pair_cpu_ms": 1000 * warm,
        "rss_ready_mib": rss_ready,
        "peak_rss_mib": status_mib("VmHWM"),
    }


def run_child(
    prefix: list[str], manifest: str, base_url: str, concurrency: int, env: dict[str, str]
) -> dict[str, float]:
    command = [*prefix, sys.executable, __file__, "--child", manifest, base_url]
    command += ["--concurrency", str(concurrency)]
    done = subprocess.run(  # noqa: S603 (this very script, our arguments)
        command, capture_output=True, text=True, env=env, check=False
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    numbers: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return numbers


def table(results: dict[str, list[dict[str, float]]], pairs: int, concurrency: int) -> str:
    """The Markdown table of medians, S3 beside local disk."""
    rows = [
        f"{pairs} pairs of 60-200 KB JPEGs, concurrency {concurrency}, no rate limit; "
        f"medians of {len(results['local'])} round(s)",
        "",
        "| source | pairs/s | CPU ms/pair | peak RSS MiB | RSS before the run MiB "
        "| first pair CPU ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in MODES:
        runs = results[mode]

        def median(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(run[key] for run in runs)

        name = "local disk" if mode == "local" else "S3 (moto, s3fs)"
        rows.append(
            f"| {name} | {median('pairs_per_s'):.0f} | {median('cpu_ms_per_pair'):.2f} | "
            f"{median('peak_rss_mib'):.0f} | {median('rss_ready_mib'):.0f} | "
            f"{median('first_pair_cpu_ms'):.0f} | {max(run['errors'] for run in runs):.0f} |"
        )
    local, remote = results["local"], results["s3"]
    cpu = statistics.median(r["cpu_ms_per_pair"] for r in remote) / statistics.median(
        r["cpu_ms_per_pair"] for r in local
    )
    rate = statistics.median(r["pairs_per_s"] for r in remote) / statistics.median(
        r["pairs_per_s"] for r in local
    )
    rows += ["", f"S3 / local: CPU per pair x{cpu:.2f}, pairs/s x{rate:.2f}"]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="20 pairs, 1 round")
    parser.add_argument("--child", nargs=2, metavar=("MANIFEST", "BASE_URL"))
    args = parser.parse_args()
    if args.child:
        numbers = asyncio.run(child(args.child[0], args.child[1], args.concurrency))
        print(json.dumps(numbers))
        return 0
    if args.smoke:
        args.pairs, args.rounds = 20, 1

    server_prefix, client_prefix, pinned = pinning()
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp, sandbox(server_prefix) as base_url:
        folder = Path(tmp)
        pairs = write_images(folder / "img", args.pairs)
        manifests = {"local": str(local_manifest(folder, pairs))}
        with moto_server(server_prefix) as endpoint:
            manifests["s3"] = upload(endpoint, folder, pairs)
            env = {**os.environ, **S3_ENV, "AWS_ENDPOINT_URL": endpoint}
            for round_ in range(args.rounds):
                order = MODES if round_ % 2 == 0 else MODES[::-1]
                for mode in order:
                    numbers = run_child(
                        client_prefix, manifests[mode], base_url, args.concurrency, env
                    )
                    if numbers["pairs"] != args.pairs or numbers["matches"] != args.pairs:
                        raise RuntimeError(f"{mode}: not every pair matched: {numbers}")
                    results[mode].append(numbers)
    print(f"({pinned})")
    print(table(results, args.pairs, args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
