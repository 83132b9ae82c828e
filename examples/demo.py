"""Demo: a real bulk re-verification, end to end, against a local sandbox.

Run with `make demo`. Nothing leaves the machine: the sandbox runs as a separate process on
loopback and decides with its deterministic test engine (it reads an identity tag from
each image). The demo

1. writes a few selfies and ID scans, a photo with no face and a GIF renamed .jpg, and a
   manifest of pairs (one of them a repeated pair_id, one a row with a missing column);
2. checks the manifest with ``--dry-run`` (no network call);
3. runs ``facematch-async batch`` at the Growth plan's rate (5 requests per second);
4. runs it again with ``--resume``: every pair is already done, so nothing is sent twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from facematch_async.cli import main
from facematch_async.sandbox import make_test_image

CLIENT_ID = "demo-client"
CLIENT_SECRET = "demo-secret"  # only ever passed through the environment


def write_inputs(folder: Path) -> Path:
    """Images for four people plus two bad files, and a manifest with two bad rows."""
    images = folder / "images"
    images.mkdir()
    people = ["asha", "ravi", "meera", "vikram"]
    for person in people:
        (images / f"{person}_selfie.jpg").write_bytes(make_test_image(person, "jpeg"))
        (images / f"{person}_id.png").write_bytes(make_test_image(person, "png"))
    (images / "landscape.png").write_bytes(make_test_image("none", "png"))
    (images / "animated.jpg").write_bytes(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
    rows = ["pair_id,file_a,file_b,case_ref"]
    for i, person in enumerate(people):
        rows.append(f"KYC-{i:03d},images/{person}_selfie.jpg,images/{person}_id.png,C{i}")
        other = people[(i + 1) % len(people)]
        rows.append(f"KYC-{i + 10:03d},images/{person}_selfie.jpg,images/{other}_id.png,C{i}")
    rows.append("KYC-100,images/landscape.png,images/asha_id.png,C100")  # no face
    rows.append("KYC-101,images/animated.jpg,images/asha_id.png,C101")  # a GIF: refused locally
    rows.append("KYC-000,images/ravi_selfie.jpg,images/ravi_id.png,C0")  # a repeated pair_id
    rows.append("KYC-102,images/ravi_selfie.jpg")  # a row missing file_b
    manifest = folder / "pairs.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def start_sandbox(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """The sandbox CLI in its own process, on a free port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "facematch_async.cli", "sandbox", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("Sandbox listening on "):
        process.kill()
        raise SystemExit(f"the sandbox did not start: {line!r}")
    return process, line.rsplit(" ", 1)[-1]


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def run() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = write_inputs(folder)
        out = folder / "results.jsonl"
        env = {**os.environ, "DEEPVUE_CLIENT_ID": CLIENT_ID, "DEEPVUE_CLIENT_SECRET": CLIENT_SECRET}
        sandbox, base_url = start_sandbox(env)
        os.environ.update(
            DEEPVUE_CLIENT_ID=CLIENT_ID,
            DEEPVUE_CLIENT_SECRET=CLIENT_SECRET,
            DEEPVUE_BASE_URL=base_url,
        )
        try:
            print(f"Sandbox listening on {base_url} (test engine, separate process)")
            batch = ["batch", str(manifest), "--out", str(out), "--rate-limit", "growth"]

            banner("facematch-async batch pairs.csv --dry-run --rate-limit growth")
            main(["batch", str(manifest), "--dry-run", "--rate-limit", "growth"])

            banner("facematch-async batch pairs.csv --out results.jsonl --rate-limit growth")
            code = main(batch)
            print(f"exit code {code} (1: some pairs ended as 'error', see below)")

            banner("results.jsonl (one line per pair)")
            for line in out.read_text().splitlines():
                record = json.loads(line)
                detail = record["sub_code"] or ""
                if record["status"] == "error":
                    detail = f"{record['error_type']}: {record['message']}"
                where = f"line {record['line']}"
                print(f"{where:<9}{record['pair_id'] or '-':<9}{record['status']:<10}{detail}")

            banner("the same command with --resume: every pair is done, nothing is sent again")
            main([*batch, "--resume"])
            print(f"results.jsonl still holds {len(out.read_text().splitlines())} lines")
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(run())
