"""Demo: start the embedded sandbox and run a few face matches through the client.

Run with `make demo`. Nothing leaves the machine: the sandbox listens on loopback and
decides with its deterministic test engine (it reads an identity tag from each image).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from facematch_async import FaceMatchClient, FaceMatchError
from facematch_async.sandbox import SandboxConfig, SandboxServer, ScriptedResponse, make_test_image


def write_images(folder: Path) -> dict[str, Path]:
    """Selfies and ID scans for two people, a photo with no face and a GIF renamed .jpg."""
    images = {
        "asha_selfie.jpg": make_test_image("asha", "jpeg"),
        "asha_id.png": make_test_image("asha", "png"),
        "ravi_id.png": make_test_image("ravi", "png"),
        "landscape.png": make_test_image("none", "png"),
        "animated.jpg": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    }
    paths = {}
    for name, data in images.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


async def main() -> None:
    config = SandboxConfig(client_id="demo-client", client_secret="demo-secret", token_ttl=3.0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp))
        async with SandboxServer(config) as sandbox:
            print(f"Sandbox listening on {sandbox.base_url} (test engine, 3 s tokens)\n")
            # One transient 503 shows a retry; the client absorbs it.
            sandbox.faults.add(
                ScriptedResponse(
                    path="/v1/facematch", status=503, json={"detail": "Source Unavailable"}
                )
            )
            pairs = [
                ("asha_selfie.jpg", "asha_id.png"),
                ("asha_selfie.jpg", "ravi_id.png"),
                ("landscape.png", "asha_id.png"),
                ("animated.jpg", "asha_id.png"),
            ]
            async with FaceMatchClient(
                client_id=config.client_id,
                client_secret=config.client_secret,
                base_url=sandbox.base_url,
            ) as client:
                print(f"{'file_a':<18}{'file_b':<14}outcome")
                for name_a, name_b in pairs:
                    try:
                        result = await client.match(paths[name_a], paths[name_b])
                        outcome = f"match={result.match} confidence={result.confidence}"
                    except FaceMatchError as error:
                        outcome = f"{type(error).__name__}: {error}"
                    print(f"{name_a:<18}{name_b:<14}{outcome}")
            counters = sandbox.counters
            print(
                f"\nSandbox saw {counters.authorize_calls} authorize call(s) and "
                f"{sum(n for (p, _), n in counters.requests.items() if p != '/v1/authorize')} "
                "face-match request(s); the GIF never left the machine."
            )


if __name__ == "__main__":
    asyncio.run(main())
