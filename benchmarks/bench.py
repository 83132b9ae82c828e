"""This SDK against the ways people call the Face Match API today, side by side in one run.

    python benchmarks/bench.py                    # the full run (several minutes)
    python benchmarks/bench.py --smoke --out DIR  # tiny sizes, seconds (the test suite runs it)

The sandbox runs in its own process with the test engine (no face inference), so what
differs between peers is client-side work. With two or more cores the sandbox is pinned to
CPU 0 and every client to CPU 1 (``taskset``). Each peer run is a fresh process
(``peers.py``), so RSS after imports and peak RSS (``ru_maxrss``) are that peer's own; CPU
ms per pair is the process's CPU time (all threads) over the pairs. Figures are the median
of the repeats.

Scenarios:

1. throughput: distinct ~60-200 KB JPEG pairs at concurrency 64, every peer;
2. memory: generated manifests of 10,000 and 100,000 rows over a few files;
3. saturation: the sandbox enforces a scaled plan; achieved / allowed rate and 429s for the
   SDK (same spec) and a naive semaphore peer;
4. latency-bound: the sandbox adds 200 ms per match; achieved / ideal (concurrency/latency).

Writes ``results.json``, ``results.md`` (the tables) and ``results.png`` into ``--out``;
``--readme`` also replaces the results section of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS_SCRIPT = HERE / "peers.py"
CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret"
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"

LABELS = {
    "requests_seq": "requests, sequential",
    "requests_threads": "requests + ThreadPoolExecutor",
    "aiohttp_plain": "aiohttp + semaphore, plain reads",
    "aiohttp_aiofiles": "aiohttp + semaphore, aiofiles",
    "httpx": "httpx.AsyncClient + semaphore",
    "sdk_client": "facematch-async client.match + semaphore",
    "sdk": "facematch-async BatchRunner",
    "sdk_baseline": "facematch-async BatchRunner, baseline",
}
ALL_PEERS = [peer for peer in LABELS if peer != "sdk_baseline"]
BASELINE: dict[str, str] = {}  # PYTHONPATH for "sdk_baseline": an older facematch_async


@dataclass
class Plan:
    """Sizes for one run of every scenario."""

    throughput_pairs: int = 2000
    throughput_concurrency: int = 64
    throughput_peers: list[str] = field(default_factory=lambda: list(ALL_PEERS))
    repeat: int = 5
    memory_sizes: tuple[int, int] = (10_000, 100_000)
    # The slower peers would take many minutes over 100,000 pairs; aiohttp shows the pattern.
    memory_peers: list[str] = field(default_factory=lambda: ["sdk", "aiohttp_plain"])
    memory_repeat: int = 1
    saturation_spec: str = "50/s,1000/min"
    saturation_pairs: int = 2000  # two minute-windows' worth: ~80 s at the allowed rate
    saturation_peers: list[str] = field(default_factory=lambda: ["sdk", "aiohttp_plain"])
    latency: float = 0.2
    latency_concurrency: int = 32
    latency_pairs: int = 1600  # 50 rounds of 32: ~10 s at the ideal rate
    latency_peers: list[str] = field(default_factory=lambda: ["sdk", "aiohttp_plain"])


SMOKE = Plan(
    throughput_pairs=24,
    throughput_concurrency=8,
    repeat=1,
    memory_sizes=(20, 60),
    memory_peers=["sdk"],
    saturation_spec="6/s,60/min",
    saturation_pairs=9,
    saturation_peers=["sdk"],
    latency=0.05,
    latency_concurrency=8,
    latency_pairs=16,
    latency_peers=["sdk"],
)


def pinning() -> tuple[list[str], list[str], str]:
    """taskset prefixes for the server and the clients, and a sentence saying so."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2 and shutil.which("taskset"):
        server, client = str(cores[0]), str(cores[1])
        return (
            ["taskset", "-c", server],
            ["taskset", "-c", client],
            f"sandbox pinned to CPU {server}, clients to CPU {client} (taskset)",
        )
    return [], [], f"not pinned ({len(cores)} core(s) or no taskset)"


@contextmanager
def sandbox(prefix: list[str], *options: str) -> Iterator[str]:
    """A sandbox CLI process (test engine) on a free port; yields its base URL."""
    command = [*prefix, sys.executable, "-m", "facematch_async.cli", "sandbox", "--port", "0"]
    command += ["--engine", "test", "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET]
    process = subprocess.Popen(  # noqa: S603 (our own CLI, our arguments)
        [*command, *options], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("Sandbox listening on "):
            raise RuntimeError(f"the sandbox did not start: {line!r}")
        yield line.removeprefix("Sandbox listening on ")
    finally:
        process.terminate()
        process.wait(10)


def write_images(
    folder: Path, count: int, seed: int = 5, padded: bool = True
) -> list[tuple[Path, Path]]:
    """``count`` distinct same-person JPEG pairs of 60-200 KB each (seeded sizes), or of a
    few hundred bytes each when not ``padded``."""
    from facematch_async.sandbox import make_test_image

    sizes = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for index in range(count):
        a, b = folder / f"{index}_a.jpg", folder / f"{index}_b.jpg"
        for path in (a, b):
            pad = sizes.randint(60_000, 200_000) if padded else 0
            path.write_bytes(make_test_image(f"p{index}", "jpeg", pad_to=pad))
        pairs.append((a, b))
    return pairs


def write_manifest(path: Path, pairs: list[tuple[Path, Path]], rows: int) -> Path:
    """A CSV manifest of ``rows`` pairs, cycling over ``pairs``."""
    with open(path, "w") as file:
        file.write("pair_id,file_a,file_b\n")
        for index in range(rows):
            a, b = pairs[index % len(pairs)]
            file.write(f"pair-{index:08d},{a},{b}\n")
    return path


def run_peer(
    prefix: list[str],
    peer: str,
    manifest: Path,
    base_url: str,
    concurrency: int,
    rate_limit: str | None = None,
) -> dict[str, Any]:
    env = None
    if peer == "sdk_baseline":  # the SDK peer, importing the baseline's facematch_async
        env = {**os.environ, "PYTHONPATH": BASELINE["path"]}
    name = peer.removesuffix("_baseline")
    command = [*prefix, sys.executable, str(PEERS_SCRIPT), name]
    command += [str(manifest), base_url, "--concurrency", str(concurrency)]
    if rate_limit:
        command += ["--rate-limit", rate_limit]
    done = subprocess.run(  # noqa: S603 (our own script, our arguments)
        command, capture_output=True, text=True, check=False, env=env
    )
    if done.returncode:
        raise RuntimeError(f"{peer} failed:\n{done.stderr}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["peer"] = peer
    return figures


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-figure medians over repeated runs (counts: the largest, so no error hides)."""
    summary: dict[str, Any] = {"peer": runs[0]["peer"], "repeats": len(runs)}
    figures = ("pairs_per_s", "cpu_ms_per_pair", "faults_per_pair", "rss_imports_mib")
    for key in (*figures, "peak_rss_mib", "seconds"):
        summary[key] = statistics.median(run[key] for run in runs)
    for key in ("pairs", "ok", "errors", "status_429"):
        summary[key] = max(run[key] for run in runs)
    cpu = [run["cpu_ms_per_pair"] for run in runs]
    summary["cpu_ms_per_pair_range"] = (min(cpu), max(cpu))
    return summary


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure(
    prefixes: tuple[list[str], list[str]],
    peers: list[str],
    repeat: int,
    manifest: Path,
    concurrency: int,
    sandbox_options: tuple[str, ...] = (),
    rate_limit: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every peer ``repeat`` times, each run against a fresh sandbox (so no peer meets a
    server that earlier runs left in another state), in an order rotated every repeat (so no
    peer always follows the same one); per-peer medians."""
    server, client = prefixes
    runs: dict[str, list[dict[str, Any]]] = {peer: [] for peer in peers}
    for round_number in range(repeat):
        shift = round_number % len(peers)
        for peer in peers[shift:] + peers[:shift]:
            limit = rate_limit if peer.startswith("sdk") else None
            with sandbox(server, *sandbox_options) as base_url:
                figures = run_peer(client, peer, manifest, base_url, concurrency, limit)
            runs[peer].append(figures)
            log(
                f"  {peer:<18} {figures['pairs_per_s']:8.1f} pairs/s "
                f"{figures['cpu_ms_per_pair']:6.2f} CPU ms/pair peak "
                f"{figures['peak_rss_mib']:6.1f} MiB, {figures['errors']} errors, "
                f"{figures['status_429']} x 429"
            )
    return {peer: median_of(peer_runs) for peer, peer_runs in runs.items()}


def run_all(plan: Plan, work: Path, only: set[str] | None = None) -> dict[str, Any]:
    server, client, pinned = pinning()
    log(pinned)
    images = write_images(work / "images", plan.throughput_pairs)
    results: dict[str, Any] = {
        "meta": {
            "plan": asdict(plan),
            "pinning": pinned,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "baseline": BASELINE.get("ref"),
            "commit": subprocess.run(  # noqa: S603
                ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],  # noqa: S607
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip(),
        }
    }

    wanted = only or {"throughput", "memory", "saturation", "latency"}
    if "throughput" in wanted:
        log(f"throughput: {plan.throughput_pairs} pairs, c={plan.throughput_concurrency}")
        manifest = write_manifest(work / "throughput.csv", images, plan.throughput_pairs)
        results["throughput"] = measure(
            (server, client),
            plan.throughput_peers,
            plan.repeat,
            manifest,
            plan.throughput_concurrency,
        )
    if "memory" in wanted:
        results["memory"] = run_memory(plan, work, images, server, client)
    if "saturation" in wanted:
        results["saturation"] = run_saturation(plan, work, images, server, client)
    if "latency" in wanted:
        results["latency"] = run_latency(plan, work, images, server, client)
    return results


def run_memory(
    plan: Plan, work: Path, images: list[tuple[Path, Path]], server: list[str], client: list[str]
) -> dict[str, Any]:
    memory: dict[str, Any] = {}
    for size in plan.memory_sizes:
        log(f"memory: {size} pairs")
        manifest = write_manifest(work / f"memory-{size}.csv", images[:8], size)
        memory[str(size)] = measure(
            (server, client),
            plan.memory_peers,
            plan.memory_repeat,
            manifest,
            plan.throughput_concurrency,
        )
    small, large = (str(size) for size in plan.memory_sizes)
    for peer in plan.memory_peers:
        growth = memory[large][peer]["peak_rss_mib"] / memory[small][peer]["peak_rss_mib"] - 1
        memory.setdefault("growth", {})[peer] = growth
    return memory


def run_saturation(
    plan: Plan, work: Path, images: list[tuple[Path, Path]], server: list[str], client: list[str]
) -> dict[str, Any]:
    from facematch_async import RateLimiter

    log(f"saturation: {plan.saturation_spec}, {plan.saturation_pairs} pairs")
    ideal = RateLimiter(plan.saturation_spec, margin=0).estimate(plan.saturation_pairs)
    manifest = write_manifest(work / "saturation.csv", images, plan.saturation_pairs)
    saturation: dict[str, Any] = {"spec": plan.saturation_spec, "ideal_seconds": ideal}
    for peer in plan.saturation_peers:
        figures = measure(  # a fresh sandbox for each: both start with empty windows
            (server, client),
            [peer],
            1,
            manifest,
            plan.throughput_concurrency,
            ("--rate-limit", plan.saturation_spec),
            plan.saturation_spec,
        )[peer]
        figures["allowed_per_s"] = plan.saturation_pairs / ideal if ideal else float("inf")
        figures["achieved_per_s"] = figures["ok"] / figures["seconds"]
        figures["ratio"] = min(1.0, ideal / figures["seconds"]) if ideal else 1.0
        saturation[peer] = figures
    return saturation


def run_latency(
    plan: Plan, work: Path, images: list[tuple[Path, Path]], server: list[str], client: list[str]
) -> dict[str, Any]:
    # Small images (a few hundred bytes) and the 60-200 KB ones. The sandbox reads and
    # answers each request as it arrives and holds the answer back for the latency, so
    # what is left of the ideal is each request's own round trip and the client's doing.
    latency: dict[str, Any] = {}
    small = write_images(work / "small", 32, padded=False)
    for kind, pairs in (("small", small), ("60-200 KB", images)):
        log(f"latency-bound: {plan.latency} s, c={plan.latency_concurrency}, {kind} images")
        manifest = write_manifest(work / f"latency-{len(pairs)}.csv", pairs, plan.latency_pairs)
        latency[kind] = measure(
            (server, client),
            plan.latency_peers,
            plan.repeat,
            manifest,
            plan.latency_concurrency,
            ("--latency", str(plan.latency)),
        )
        ideal_rate = plan.latency_concurrency / plan.latency
        for figures in latency[kind].values():
            figures["ideal_per_s"] = ideal_rate
            figures["ratio"] = figures["pairs_per_s"] / ideal_rate
    return latency


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    meta, plan = results["meta"], results["meta"]["plan"]
    lines = [
        f"Run of {meta['date']} at commit {meta['commit']}: Python {meta['python']}, "
        f"{meta['cpus']} CPUs, {meta['pinning']}; medians of {plan['repeat']} runs unless "
        "noted.",
        "",
        f"**Throughput**: {plan['throughput_pairs']} distinct pairs of 60-200 KB JPEGs, "
        f"concurrency {plan['throughput_concurrency']}, no added latency.",
        "",
        "| peer | pairs/s | CPU ms/pair | (min-max) | page faults/pair | RSS after imports "
        "(MiB) | peak RSS (MiB) | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for peer, row in results["throughput"].items():
        low, high = row["cpu_ms_per_pair_range"]
        lines.append(
            f"| {LABELS[peer]} | {row['pairs_per_s']:.0f} | {row['cpu_ms_per_pair']:.2f} | "
            f"{low:.2f}-{high:.2f} | "
            f"{row['faults_per_pair']:.1f} | {row['rss_imports_mib']:.1f} | "
            f"{row['peak_rss_mib']:.1f} | {row['errors']} |"
        )
    memory = results["memory"]
    small, large = (str(size) for size in plan["memory_sizes"])
    lines += [
        "",
        f"**Memory scaling**: manifests of {int(small):,} and {int(large):,} rows over 8 "
        f"files, concurrency {plan['throughput_concurrency']} "
        f"({plan['memory_repeat']} run each).",
        "",
        f"| peer | peak RSS {int(small):,} (MiB) | peak RSS {int(large):,} (MiB) | growth | "
        f"pairs/s at {int(large):,} | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for peer, growth in memory["growth"].items():
        a, b = memory[small][peer], memory[large][peer]
        lines.append(
            f"| {LABELS[peer]} | {a['peak_rss_mib']:.1f} | {b['peak_rss_mib']:.1f} | "
            f"{growth:+.1%} | {b['pairs_per_s']:.0f} | {a['errors'] + b['errors']} |"
        )
    saturation = results["saturation"]
    lines += [
        "",
        f"**Rate-limit saturation**: the sandbox enforces `{saturation['spec']}` (sliding "
        f"windows); {plan['saturation_pairs']} pairs, ideal "
        f"{saturation['ideal_seconds']:.1f} s; the SDK gets the same spec, the naive peer "
        "sleeps 1 s after each 429 (one run each).",
        "",
        "| peer | seconds | achieved pairs/s | allowed pairs/s | achieved / allowed | 429s "
        "| errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for peer in plan["saturation_peers"]:
        row = saturation[peer]
        lines.append(
            f"| {LABELS[peer]} | {row['seconds']:.1f} | {row['achieved_per_s']:.1f} | "
            f"{row['allowed_per_s']:.1f} | {row['ratio']:.1%} | {row['status_429']} | "
            f"{row['errors']} |"
        )
    latency = results["latency"]
    lines += [
        "",
        f"**Latency-bound**: the sandbox adds {plan['latency'] * 1000:.0f} ms per match, "
        f"concurrency {plan['latency_concurrency']}, {plan['latency_pairs']} pairs; ideal = "
        "concurrency / latency.",
        "",
        "| peer | images | pairs/s | ideal pairs/s | achieved / ideal | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for kind, rows in latency.items():
        for peer, row in rows.items():
            lines.append(
                f"| {LABELS[peer]} | {kind} | {row['pairs_per_s']:.1f} | "
                f"{row['ideal_per_s']:.0f} | {row['ratio']:.1%} | {row['errors']} |"
            )
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    """A small PNG: throughput, CPU per pair, and peak RSS as the manifest grows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    throughput = results["throughput"]
    names = [LABELS[peer].replace(" + ", "\n+ ").replace(", ", ",\n") for peer in throughput]
    colors = [
        "#d62728" if peer == "sdk" else "#ff9896" if peer == "sdk_client" else "#7f7f7f"
        for peer in throughput
    ]
    figure, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for axis, key, title in (
        (axes[0], "pairs_per_s", "pairs/s (higher is better)"),
        (axes[1], "cpu_ms_per_pair", "client CPU ms per pair (lower is better)"),
    ):
        axis.barh(names, [row[key] for row in throughput.values()], color=colors)
        axis.set_title(title, fontsize=10)
        axis.invert_yaxis()
        axis.tick_params(labelsize=7)
    memory, plan = results["memory"], results["meta"]["plan"]
    sizes = [str(size) for size in plan["memory_sizes"]]
    for peer in memory["growth"]:
        axes[2].plot(
            [int(size) for size in sizes],
            [memory[size][peer]["peak_rss_mib"] for size in sizes],
            marker="o",
            label=LABELS[peer],
            color="#d62728" if peer == "sdk" else None,
        )
    axes[2].set_xscale("log")
    axes[2].set_title("peak RSS (MiB) vs manifest rows", fontsize=10)
    axes[2].legend(fontsize=7)
    axes[2].tick_params(labelsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=72)
    plt.close(figure)


def export_baseline(ref: str, folder: Path) -> str:
    """``facematch_async`` as of ``ref``, unpacked into ``folder`` (for ``PYTHONPATH``)."""
    folder.mkdir(parents=True)
    archive = subprocess.run(  # noqa: S603
        ["git", "-C", str(HERE.parent), "archive", ref, "facematch_async"],  # noqa: S607
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)  # noqa: S603,S607
    return str(folder)


def update_readme(readme: Path, table: str) -> None:
    text = readme.read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    readme.write_text(text[:start] + "\n" + table + text[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", type=Path, default=HERE, help="where results go")
    parser.add_argument("--readme", action="store_true", help="update benchmarks/README.md")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG")
    parser.add_argument("--only", help="comma-separated scenarios, for profiling (no output)")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also measure the SDK as of this git ref (throughput), e.g. before a change",
    )
    args = parser.parse_args()
    plan = SMOKE if args.smoke else Plan()
    only = set(args.only.split(",")) if args.only else None
    with tempfile.TemporaryDirectory(prefix="facematch-bench-") as tmp:
        if args.baseline:
            BASELINE["path"] = export_baseline(args.baseline, Path(tmp) / "baseline")
            BASELINE["ref"] = args.baseline
            LABELS["sdk_baseline"] = f"facematch-async BatchRunner at {args.baseline}"
            plan.throughput_peers.append("sdk_baseline")
        results = run_all(plan, Path(tmp), only)
    if only:
        print(json.dumps(results, indent=2))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (args.out / "results.md").write_text(table)
    if not args.no_chart:
        chart(results, args.out / "results.png")
    if args.readme:
        update_readme(HERE / "README.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
