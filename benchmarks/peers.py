"""The ways people call the Face Match API today, each as a short honest peer.

Run by ``bench.py``, one fresh process per peer and run, so that import cost, RSS after
imports and peak RSS belong to that peer alone:

    python benchmarks/peers.py PEER MANIFEST BASE_URL --concurrency 64 [--rate-limit SPEC]

prints one JSON line: ``pairs``, ``ok``, ``errors``, ``status_429``, ``seconds``,
``cpu_ms_per_pair``, ``faults_per_pair`` (minor page faults), ``rss_imports_mib`` and
``peak_rss_mib``.

Every peer reads the same CSV manifest (``pair_id,file_a,file_b``; every pair shows one
person), authorizes once, sends both images as multipart, and counts a pair as ok only for
HTTP 200 with ``data.match`` true; anything else is an error. The hand-written peers do what
most hand-written loops do: read the whole manifest into a list, start every task at once
behind a semaphore (or ``pool.map``), and on a 429 sleep one second and try again.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret"
RETRY_429_SECONDS = 1.0
MAX_429_RETRIES = 100


@dataclass
class Tally:
    ok: int = 0
    errors: int = 0
    status_429: int = 0

    def check(self, status: int, body: Any) -> None:
        """Count one final answer: ok only for 200 with ``data.match`` true."""
        good = status == 200 and isinstance(body, dict) and body.get("data", {}).get("match")
        if good is True:
            self.ok += 1
        else:
            self.errors += 1


def load_rows(manifest: str) -> list[tuple[str, str]]:
    with open(manifest, newline="") as file:
        return [(row["file_a"], row["file_b"]) for row in csv.DictReader(file)]


# -- requests -------------------------------------------------------------------------------


def _requests_setup(base_url: str, pool: int) -> tuple[Any, dict[str, str]]:
    import requests
    import requests.adapters

    session = requests.Session()
    # Without this, threads beyond urllib3's default 10 pooled connections reconnect each time.
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=pool))
    form = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    token = session.post(f"{base_url}/v1/authorize", data=form, timeout=30).json()["access_token"]
    return session, {"Authorization": f"Bearer {token}", "x-api-key": CLIENT_SECRET}


def _requests_one(
    session: Any, url: str, headers: dict[str, str], a: str, b: str, tally: Tally
) -> None:
    for _ in range(MAX_429_RETRIES):
        with open(a, "rb") as fa, open(b, "rb") as fb:
            files = {"file_a": ("a.jpg", fa.read(), "image/jpeg")}
            files["file_b"] = ("b.jpg", fb.read(), "image/jpeg")
        try:
            response = session.post(url, files=files, headers=headers, timeout=30)
        except Exception:
            tally.errors += 1
            return
        if response.status_code == 429:
            tally.status_429 += 1
            time.sleep(RETRY_429_SECONDS)
            continue
        tally.check(response.status_code, response.json())
        return
    tally.errors += 1


def requests_seq(manifest: str, base_url: str, concurrency: int) -> Callable[[], Tally]:
    """One pair after another with a ``requests.Session`` (concurrency is ignored)."""
    import requests  # noqa: F401 (imported before RSS-after-imports is taken)

    def run() -> Tally:
        session, headers = _requests_setup(base_url, 1)
        tally, url = Tally(), f"{base_url}/v1/facematch"
        for a, b in load_rows(manifest):
            _requests_one(session, url, headers, a, b, tally)
        return tally

    return run


def requests_threads(manifest: str, base_url: str, concurrency: int) -> Callable[[], Tally]:
    """A shared ``requests.Session`` under a ``ThreadPoolExecutor`` of ``concurrency`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    import requests  # noqa: F401

    def run() -> Tally:
        session, headers = _requests_setup(base_url, concurrency)
        tally, url = Tally(), f"{base_url}/v1/facematch"
        with ThreadPoolExecutor(concurrency) as pool:
            # map() submits every row at once: one future per pair, as people write it.
            list(
                pool.map(
                    lambda ab: _requests_one(session, url, headers, ab[0], ab[1], tally),
                    load_rows(manifest),
                )
            )
        return tally

    return run


# -- aiohttp ---------------------------------------------------------------------------------


def _aiohttp_peer(
    manifest: str, base_url: str, concurrency: int, aiofiles_reads: bool
) -> Callable[[], Tally]:
    import aiohttp

    if aiofiles_reads:
        import aiofiles

    async def read(path: str) -> bytes:
        if aiofiles_reads:
            async with aiofiles.open(path, "rb") as file:
                return await file.read()
        with open(path, "rb") as file:
            return file.read()

    async def main() -> Tally:
        tally, url = Tally(), f"{base_url}/v1/facematch"
        async with aiohttp.ClientSession() as session:
            form = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
            async with session.post(f"{base_url}/v1/authorize", data=form) as response:
                token = (await response.json())["access_token"]
            headers = {"Authorization": f"Bearer {token}", "x-api-key": CLIENT_SECRET}
            semaphore = asyncio.Semaphore(concurrency)

            async def one(a: str, b: str) -> None:
                async with semaphore:
                    for _ in range(MAX_429_RETRIES):
                        data = aiohttp.FormData()
                        data.add_field(
                            "file_a", await read(a), filename="a.jpg", content_type="image/jpeg"
                        )
                        data.add_field(
                            "file_b", await read(b), filename="b.jpg", content_type="image/jpeg"
                        )
                        try:
                            async with session.post(url, data=data, headers=headers) as response:
                                status = response.status
                                body = await response.json(content_type=None)
                        except (aiohttp.ClientError, TimeoutError, ValueError):
                            tally.errors += 1
                            return
                        if status == 429:
                            tally.status_429 += 1
                            await asyncio.sleep(RETRY_429_SECONDS)
                            continue
                        tally.check(status, body)
                        return
                    tally.errors += 1

            await asyncio.gather(*(one(a, b) for a, b in load_rows(manifest)))
        return tally

    return lambda: asyncio.run(main())


def aiohttp_plain(manifest: str, base_url: str, concurrency: int) -> Callable[[], Tally]:
    """aiohttp, a semaphore, ``open().read()`` in the event loop, ``gather`` over all rows."""
    return _aiohttp_peer(manifest, base_url, concurrency, aiofiles_reads=False)


def aiohttp_aiofiles(manifest: str, base_url: str, concurrency: int) -> Callable[[], Tally]:
    """The same with ``aiofiles`` (each open, read and close hops to a thread)."""
    return _aiohttp_peer(manifest, base_url, concurrency, aiofiles_reads=True)


# -- httpx ----------------------------------------------------------------------------------


def httpx_async(manifest: str, base_url: str, concurrency: int) -> Callable[[], Tally]:
    """``httpx.AsyncClient``, a semaphore, plain reads, ``gather`` over all rows."""
    import httpx

    async def main() -> Tally:
        tally, url = Tally(), f"{base_url}/v1/facematch"
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            form = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
            token = (await client.post(f"{base_url}/v1/authorize", data=form)).json()
            headers = {"Authorization": f"Bearer {token['access_token']}"}
            headers["x-api-key"] = CLIENT_SECRET
            semaphore = asyncio.Semaphore(concurrency)

            async def one(a: str, b: str) -> None:
                async with semaphore:
                    for _ in range(MAX_429_RETRIES):
                        with open(a, "rb") as fa, open(b, "rb") as fb:
                            files = {"file_a": ("a.jpg", fa.read(), "image/jpeg")}
                            files["file_b"] = ("b.jpg", fb.read(), "image/jpeg")
                        try:
                            response = await client.post(url, files=files, headers=headers)
                        except httpx.HTTPError:
                            tally.errors += 1
                            return
                        if response.status_code == 429:
                            tally.status_429 += 1
                            await asyncio.sleep(RETRY_429_SECONDS)
                            continue
                        tally.check(response.status_code, response.json())
                        return
                    tally.errors += 1

            await asyncio.gather(*(one(a, b) for a, b in load_rows(manifest)))
        return tally

    return lambda: asyncio.run(main())


# -- this SDK --------------------------------------------------------------------------------


def sdk(
    manifest: str,
    base_url: str,
    concurrency: int,
    rate_limit: str | None = None,
) -> Callable[[], Tally]:
    """``BatchRunner`` over ``read_manifest`` (streamed), with the plan's ``rate_limit``."""
    from facematch_async import BatchRunner, FaceMatchClient, read_manifest

    async def main() -> Tally:
        tally = Tally()
        async with FaceMatchClient(
            client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=base_url
        ) as client:
            runner = BatchRunner(client, concurrency=concurrency, rate_limit=rate_limit)
            async for outcome in runner.run(read_manifest(manifest)):
                if outcome.status == "match":
                    tally.ok += 1
                else:
                    tally.errors += 1
            tally.status_429 = runner.rate_limited
        return tally

    return lambda: asyncio.run(main())


def sdk_client(manifest: str, base_url: str, concurrency: int) -> Callable[[], Tally]:
    """``FaceMatchClient.match`` in the hand-written loop (semaphore, ``gather``) instead of
    aiohttp: the client alone, without the batch runner's bookkeeping."""
    from facematch_async import FaceMatchClient, FaceMatchError

    async def main() -> Tally:
        tally = Tally()
        async with FaceMatchClient(
            client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=base_url
        ) as client:
            semaphore = asyncio.Semaphore(concurrency)

            async def one(a: str, b: str) -> None:
                async with semaphore:
                    try:
                        result = await client.match(a, b)
                    except FaceMatchError as error:
                        tally.status_429 += getattr(error, "status_code", None) == 429
                        tally.errors += 1
                    else:
                        tally.ok += result.match
                        tally.errors += not result.match

            await asyncio.gather(*(one(a, b) for a, b in load_rows(manifest)))
        return tally

    return lambda: asyncio.run(main())


PEERS: dict[str, Callable[..., Callable[[], Tally]]] = {
    "requests_seq": requests_seq,
    "requests_threads": requests_threads,
    "aiohttp_plain": aiohttp_plain,
    "aiohttp_aiofiles": aiohttp_aiofiles,
    "httpx": httpx_async,
    "sdk_client": sdk_client,
    "sdk": sdk,
}


def proc_status_mib(field: str) -> float | None:
    """A memory figure of this process from ``/proc/self/status`` (Linux), in MiB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("peer", choices=PEERS)
    parser.add_argument("manifest")
    parser.add_argument("base_url")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate-limit", default=None, help="the SDK's plan spec")
    args = parser.parse_args()
    options: dict[str, Any] = {}
    if args.peer == "sdk":
        options = {"rate_limit": args.rate_limit}
    run = PEERS[args.peer](args.manifest, args.base_url, args.concurrency, **options)
    rss_imports = proc_status_mib("VmRSS") or float("nan")
    wall, cpu = time.perf_counter(), time.process_time()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tally = run()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    pairs = tally.ok + tally.errors
    # ru_maxrss survives fork + exec, so a child started by a 50 MB parent would report at
    # least 50 MB; VmHWM (the same peak, kept per address space) starts afresh at exec.
    peak = proc_status_mib("VmHWM")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        json.dumps(
            {
                "peer": args.peer,
                "pairs": pairs,
                "ok": tally.ok,
                "errors": tally.errors,
                "status_429": tally.status_429,
                "seconds": wall,
                "pairs_per_s": pairs / wall if wall else 0.0,
                "cpu_ms_per_pair": cpu * 1000 / max(pairs, 1),
                "faults_per_pair": faults / max(pairs, 1),
                "rss_imports_mib": rss_imports,
                "peak_rss_mib": peak,
            }
        )
    )


if __name__ == "__main__":
    main()
