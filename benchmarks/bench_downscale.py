"""What opt-in downscaling (max_image_side) saves on 4000 px phone photos.

Builds 4000x3000 JPEGs (a real face photo from ../shared/faces scaled up when it is
there, else a synthetic photo-like image; sensor noise added so they compress like camera
output), sends pairs through the client to an in-process sandbox, with and without
``max_image_side=1600``, and prints bytes uploaded, client CPU per pair, loopback latency
and the upload time those bytes take on a 20 Mbit/s mobile uplink.

    python benchmarks/bench_downscale.py [--pairs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time
from pathlib import Path

from PIL import Image, ImageChops

from facematch_async import FaceMatchClient
from facematch_async.sandbox import EngineVerdict, SandboxConfig, SandboxServer

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"
UPLINK_BITS_PER_SECOND = 20e6


class CountingEngine:
    """Counts the bytes the sandbox received; answers match for every pair."""

    name = "counting"

    def __init__(self) -> None:
        self.bytes_received = 0

    def compare(self, image_a: bytes, image_b: bytes) -> EngineVerdict:
        self.bytes_received += len(image_a) + len(image_b)
        return EngineVerdict(face_found=True, match=True, confidence=99.0)


def phone_photo() -> bytes:
    source = FACES / "obama.jpg"
    if source.exists():
        base = Image.open(source).convert("RGB").resize((3000, 4000), Image.Resampling.BICUBIC)
    else:
        base = Image.linear_gradient("L").resize((3000, 4000)).convert("RGB")
    noise = Image.effect_noise(base.size, 12).convert("RGB")
    photo = ImageChops.add(base, noise, scale=1.0, offset=-12)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


async def run(photo: bytes, pairs: int, max_side: int | None) -> dict[str, float]:
    engine = CountingEngine()
    config = SandboxConfig("bench", "bench-secret", engine=engine)
    async with (
        SandboxServer(config) as sandbox,
        FaceMatchClient(
            client_id="bench",
            client_secret="bench-secret",
            base_url=sandbox.base_url,
            max_image_side=max_side,
            max_image_bytes=None,
        ) as client,
    ):
        await client.match(photo, photo)  # warm up: token, connection
        engine.bytes_received = 0
        latencies = []
        cpu = time.process_time()
        for _ in range(pairs):
            started = time.perf_counter()
            await client.match(photo, photo)
            latencies.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu
    sent_per_pair = engine.bytes_received / pairs
    return {
        "kb_per_pair": sent_per_pair / 1024,
        "cpu_ms_per_pair": cpu * 1000 / pairs,  # includes the in-process sandbox's share
        "loopback_ms": statistics.median(latencies) * 1000,
        "uplink_ms": sent_per_pair * 8 / UPLINK_BITS_PER_SECOND * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=20)
    args = parser.parse_args()
    photo = phone_photo()
    print(f"photo: 3000x4000 JPEG, {len(photo) / 1024:.0f} KB; {args.pairs} pairs per setting")
    print(
        f"{'setting':<22}{'KB/pair':>9}{'CPU ms/pair':>13}{'loopback ms':>13}{'20 Mbit/s ms':>14}"
    )
    for name, side in (
        ("as is", None),
        ("max_image_side=1600", 1600),
        ("max_image_side=1024", 1024),
    ):
        figures = asyncio.run(run(photo, args.pairs, side))
        print(
            f"{name:<22}{figures['kb_per_pair']:>9.0f}{figures['cpu_ms_per_pair']:>13.1f}"
            f"{figures['loopback_ms']:>13.1f}{figures['uplink_ms']:>14.0f}"
        )


if __name__ == "__main__":
    main()
