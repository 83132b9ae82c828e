"""Demo: a real bulk re-verification, end to end, against a local sandbox.

Run with `make demo`. Nothing leaves the machine: the sandbox runs as a separate process on
loopback. With the `demo` extra installed (as `make demo` does) it recognises faces with
dlib, on photos made offline from the public-domain NASA portrait of Eileen Collins that
ships inside scikit-image (crops, resizes, a rotation, re-encodings), the public-domain US
Navy portrait of Grace Hopper that ships inside matplotlib (a different person: no_match),
and photos of things for NO_FACE_FOUND. Without the extra it falls back to the
deterministic test engine and tagged test images. The demo

1. writes the images (plus a GIF renamed .jpg) and a manifest of pairs (one of them a
   repeated pair_id, one a row with a missing column);
2. checks the manifest with ``--dry-run`` (no network call);
3. runs ``facematch-async batch`` at the Growth plan's rate (5 requests per second);
4. runs it again with ``--resume``: every pair is already done, so nothing is sent twice.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from facematch_async.cli import main
from facematch_async.sandbox import make_test_image, sandbox_process

CLIENT_ID = "demo-client"
CLIENT_SECRET = "demo-secret"  # only ever passed through the environment


def write_photo_inputs(folder: Path) -> Path | None:
    """Real photos and a manifest for the dlib engine, or None without the demo extra."""
    try:
        import matplotlib
        import skimage
        from PIL import Image

        from facematch_async.sandbox._dlib import dlib_available
    except ImportError:
        return None
    if not dlib_available():
        return None
    data = Path(skimage.__file__).parent / "data"
    images = folder / "images"
    images.mkdir()
    portrait = Image.open(data / "astronaut.png").convert("RGB")
    portrait.save(images / "collins_id.png")
    variants = {
        "collins_selfie.jpg": portrait.crop((100, 0, 400, 300)),  # tight on the face
        "collins_small.jpg": portrait.resize((256, 256)),
        "collins_tilted.jpg": portrait.rotate(8, expand=True, fillcolor=(255, 255, 255)),
        "collins_scan.png": portrait.resize((400, 400)).convert("L").convert("RGB"),
    }
    for name, image in variants.items():
        image.save(images / name)
    # A second person, so the demo shows a no_match (dlib: 0.70-0.71 apart from Collins).
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    (images / "hopper_selfie.jpg").write_bytes(hopper.read_bytes())
    for name in ("coffee.png", "rocket.jpg"):  # photos without a face
        (images / name).write_bytes((data / name).read_bytes())
    (images / "animated.jpg").write_bytes((data / "no_time_for_that_tiny.gif").read_bytes())
    rows = ["pair_id,file_a,file_b,case_ref"]
    for i, name in enumerate(variants):
        rows.append(f"KYC-{i:03d},images/{name},images/collins_id.png,C{i}")
    rows.append("KYC-050,images/hopper_selfie.jpg,images/collins_id.png,C50")  # no_match
    rows.append("KYC-051,images/hopper_selfie.jpg,images/collins_selfie.jpg,C51")  # no_match
    rows.append("KYC-100,images/coffee.png,images/collins_id.png,C100")  # no face
    rows.append("KYC-101,images/rocket.jpg,images/collins_selfie.jpg,C101")  # no face
    rows.append("KYC-102,images/animated.jpg,images/collins_id.png,C102")  # a GIF: refused
    rows.append("KYC-000,images/collins_small.jpg,images/collins_id.png,C0")  # repeated id
    rows.append("KYC-103,images/collins_small.jpg")  # a row missing file_b
    manifest = folder / "pairs.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def write_inputs(folder: Path) -> Path:
    """Tagged images for four people plus two bad files, and a manifest with two bad rows."""
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


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def run() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = write_photo_inputs(folder)
        engine = "dlib"
        if manifest is None:
            print("(no 'demo' extra: the test engine and tagged images stand in for faces)")
            manifest, engine = write_inputs(folder), "test"
        out = folder / "results.jsonl"
        env = {**os.environ, "DEEPVUE_CLIENT_ID": CLIENT_ID, "DEEPVUE_CLIENT_SECRET": CLIENT_SECRET}
        with sandbox_process("--engine", engine, env=env) as base_url:
            show(manifest, out, engine, base_url)
    return 0


def show(manifest: Path, out: Path, engine: str, base_url: str) -> None:
    """Dry run, run, results, resume: what a user of the CLI would do, in that order."""
    os.environ.update(
        DEEPVUE_CLIENT_ID=CLIENT_ID,
        DEEPVUE_CLIENT_SECRET=CLIENT_SECRET,
        DEEPVUE_BASE_URL=base_url,
    )
    print(f"Sandbox listening on {base_url} ({engine} engine, separate process)")
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
        if record["confidence"] is not None:
            detail += f" confidence {record['confidence']:.0f}"
        if record["status"] == "error":
            detail = f"{record['error_type']}: {record['message']}"
        where = f"line {record['line']}"
        print(f"{where:<9}{record['pair_id'] or '-':<9}{record['status']:<10}{detail}")

    banner("the same command with --resume: every pair is done, nothing is sent again")
    main([*batch, "--resume"])
    print(f"results.jsonl still holds {len(out.read_text().splitlines())} lines")


if __name__ == "__main__":
    sys.exit(run())
