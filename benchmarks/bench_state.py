"""Reading a results file back: the resume index, the job's state and a comparison, as
the file grows (time per million lines, peak memory).

    python benchmarks/bench_state.py                   # 100,000 and 1,000,000 lines
    python benchmarks/bench_state.py --smoke           # 2,000 and 20,000 lines (seconds)
    python benchmarks/bench_state.py --sizes 100000,3000000

Each measure runs in a fresh Python process on a results file written as the runner writes
it (version 1 lines: 80% match, 15% no_match, 3% no_face, 2% errors; a manifest column):

* ``resume``: ``ResultsFile.open_async(resume=True)``, what a ``--resume`` does before its
  first request (and the event loop's longest stall meanwhile: it reads in a thread);
* ``state``: ``job_state(results, manifest)``;
* ``compare``: ``compare_results(results, previous)`` against an export of the same size
  with 1% of the decisions flipped, writing the changed lines.

Memory should not grow with the file (on-disk indexes), time roughly linearly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_inputs(folder: Path, lines: int) -> tuple[Path, Path, Path]:
    """A results file, its manifest and an earlier export of ``lines`` pairs."""
    rng = random.Random(lines)
    results, manifest, previous = (
        folder / f"results-{lines}.jsonl",
        folder / f"pairs-{lines}.csv",
        folder / f"previous-{lines}.csv",
    )
    now = time.time()
    with open(results, "w") as out, open(manifest, "w") as pairs, open(previous, "w") as earlier:
        pairs.write("pair_id,file_a,file_b,case_ref\n")
        earlier.write("pair_id,match,confidence\n")
        for i in range(lines):
            pair_id = f"pair-{i:09d}"
            pairs.write(f"{pair_id},a.png,b.jpg,case-{i}\n")
            draw = rng.random()
            status = (
                "match" if draw < 0.8 else "no_match" if draw < 0.95 else "no_face"
                if draw < 0.98 else "error"
            )  # fmt: skip
            confidence = round(rng.uniform(80, 99), 1) if status == "match" else 12.0
            record = {
                "v": 1, "pair_id": pair_id, "status": status,
                "match": {"match": True, "no_match": False}.get(status),
                "confidence": confidence if status in ("match", "no_match") else None,
                "attempts": 1, "latency_ms": round(rng.uniform(150, 400), 1), "line": i + 2,
                "error_type": "APITimeoutError" if status == "error" else None,
                "sub_code": "SUCCESS" if status in ("match", "no_match") else None,
                "status_code": None, "message": None, "transaction_id": f"t-{i}",
                "retryable": status == "error", "finished_at": now - 90000,
                "extra": {"case_ref": f"case-{i}"},
            }  # fmt: skip
            out.write(json.dumps(record) + "\n")
            flipped = (status == "match") != (rng.random() < 0.01)
            earlier.write(f"{pair_id},{'true' if flipped else 'false'},{confidence}\n")
    return results, manifest, previous


async def _resume(results: Path) -> dict[str, float]:
    from facematch_async.batch import ResultsFile

    stall = 0.0
    last = time.perf_counter()

    async def beat() -> None:
        nonlocal stall, last
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            stall, last = max(stall, now - last - 0.01), now

    beating = asyncio.create_task(beat())
    opened = ResultsFile(results)
    await opened.open_async(resume=True)
    opened.close()
    beating.cancel()
    return {"loop_stall_ms": round(stall * 1000, 1)}


def child(kind: str, results: Path, manifest: Path, previous: Path) -> None:
    """One measure in this process; prints its figures as JSON."""
    from facematch_async.batch import compare_results, job_state

    started = time.perf_counter()
    extra: dict[str, float] = {}
    if kind == "resume":
        extra = asyncio.run(_resume(results))
    elif kind == "state":
        job_state(results, manifest)
    else:
        compare_results(results, previous, changed=results.with_suffix(".changed.jsonl"))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mib": round(peak, 1), **extra}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--smoke", action="store_true", help="2,000 and 20,000 lines")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *paths = args.child
        child(kind, *map(Path, paths))
        return
    sizes = [2000, 20000] if args.smoke else [int(size) for size in args.sizes.split(",")]
    print("| measure | lines | seconds | s per million | peak RSS (MiB) | loop stall (ms) |")
    print("| --- | --: | --: | --: | --: | --: |")
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            inputs = write_inputs(Path(folder), size)
            for kind in ("resume", "state", "compare"):
                done = subprocess.run(  # noqa: S603 (this script, fixed arguments)
                    [sys.executable, __file__, "--child", kind, *map(str, inputs)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                figures = json.loads(done.stdout)
                per_million = figures["seconds"] * 1_000_000 / size
                print(
                    f"| {kind} | {size:,} | {figures['seconds']} | {per_million:.1f} | "
                    f"{figures['peak_rss_mib']} | {figures.get('loop_stall_ms', '')} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
