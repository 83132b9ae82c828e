"""Peak memory of a batch run as the manifest grows: 10,000 vs 100,000 pairs.

    python benchmarks/bench_batch_memory.py            # 10k and 100k pairs (a few minutes)
    python benchmarks/bench_batch_memory.py --smoke    # 200 and 2,000 pairs (seconds)
    python benchmarks/bench_batch_memory.py --sizes 1000,50000

The sandbox runs in its own process (its memory is not counted). Each size runs in a fresh
Python process that streams the manifest through BatchRunner into a JSONL results file,
with duplicate detection, the resume index and the summary as the CLI uses them, and no
rate limit; it reports its peak RSS (``ru_maxrss``). The manifest points at a handful of
distinct image files, so the disk holds little; the runner does not know and reads each
pair's images when the pair is dispatched, as it would for distinct files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret"


def write_inputs(folder: Path, pairs: int) -> Path:
    """Four tagged images and a manifest of ``pairs`` rows (matches and mismatches)."""
    from facematch_async.sandbox import make_test_image

    for name in ("alice", "bob"):
        (folder / f"{name}.png").write_bytes(make_test_image(name, "png"))
        (folder / f"{name}.jpg").write_bytes(make_test_image(name, "jpeg"))
    manifest = folder / f"pairs-{pairs}.csv"
    with open(manifest, "w") as file:
        file.write("pair_id,file_a,file_b,case_ref\n")
        for i in range(pairs):
            other = "alice.jpg" if i % 3 else "bob.jpg"
            file.write(f"pair-{i:08d},alice.png,{other},case-{i}\n")
    return manifest


def current_rss_mib() -> float:
    """The resident set now (Linux; 0 elsewhere), sampled to tell growth from a brief spike."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def child(manifest: Path, out: Path, base_url: str, concurrency: int) -> dict[str, float]:
    """Run one batch in this process and report its numbers."""
    from facematch_async import (
        BatchRunner,
        BatchSummary,
        FaceMatchClient,
        ResultsFile,
        read_manifest,
    )

    results = ResultsFile(out)
    results.open(resume=False)
    summary = BatchSummary()
    steady = 0.0
    started = time.perf_counter()
    async with FaceMatchClient(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=base_url
    ) as client:
        runner = BatchRunner(client, concurrency=concurrency, rate_limit=None)
        async for outcome in runner.run(read_manifest(manifest)):
            results.write(outcome)
            summary.add(outcome)
            if summary.done % 1000 == 0:
                steady = max(steady, current_rss_mib())
    results.close()
    elapsed = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "pairs": summary.done,
        "errors": summary.statuses.get("error", 0),
        "seconds": round(elapsed, 1),
        "pairs_per_s": round(summary.done / elapsed, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "sampled_rss_mib": round(steady, 1),
        "p50_ms": round(1000 * (summary.latency.quantile(0.5) or 0), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated pair counts")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (200,2000)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--child", nargs=3, metavar=("MANIFEST", "OUT", "BASE_URL"))
    args = parser.parse_args()
    if args.child:
        manifest, out, base_url = args.child
        numbers = asyncio.run(child(Path(manifest), Path(out), base_url, args.concurrency))
        print(json.dumps(numbers))
        return 0

    sizes = [200, 2000] if args.smoke else [int(n) for n in args.sizes.split(",")]
    from facematch_async.sandbox import sandbox_process

    env = {**os.environ, "DEEPVUE_CLIENT_ID": CLIENT_ID, "DEEPVUE_CLIENT_SECRET": CLIENT_SECRET}
    rows = []
    with (
        sandbox_process("--engine", "test", env=env) as base_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for size in sizes:
            manifest = write_inputs(Path(tmp), size)
            out = Path(tmp) / f"results-{size}.jsonl"
            command = [
                sys.executable,
                __file__,
                "--concurrency",
                str(args.concurrency),
                "--child",
                str(manifest),
                str(out),
                base_url,
            ]
            done = subprocess.run(  # noqa: S603 (this very script, our arguments)
                command, capture_output=True, text=True, check=False
            )
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return 1
            numbers = json.loads(done.stdout.strip().splitlines()[-1])
            lines = out.read_bytes().count(b"\n")
            assert lines == size == numbers["pairs"], (lines, size, numbers)
            rows.append(numbers)
            print(
                f"{size:>8} pairs: peak RSS {numbers['peak_rss_mib']:6.1f} MiB "
                f"(highest sample {numbers['sampled_rss_mib']:.1f} MiB), "
                f"{numbers['seconds']:6.1f} s, {numbers['pairs_per_s']:7.1f} pairs/s, "
                f"p50 {numbers['p50_ms']} ms, {numbers['errors']} errors",
                flush=True,
            )
    if len(rows) > 1:
        growth = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"] - 1
        print(
            f"peak RSS at {rows[-1]['pairs']} pairs vs {rows[0]['pairs']} pairs: {growth:+.1%} "
            f"({'within' if abs(growth) <= 0.10 else 'OVER'} the 10% budget)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
