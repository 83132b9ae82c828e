"""The S3-vs-disk benchmark runs end to end at a tiny size, so it cannot rot between runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.timeout(240)
def test_bench_storage_smoke_run_reads_every_pair_from_disk_and_from_s3() -> None:
    """A smoke run prints the side-by-side table: both sources, every pair matched, no error."""
    done = subprocess.run(  # noqa: S603 (our own script, our arguments)
        [sys.executable, str(ROOT / "benchmarks" / "bench_storage.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    by_source = {row.split(" | ")[0].removeprefix("| "): row for row in rows[2:]}
    assert set(by_source) == {"local disk", "S3 (moto, s3fs)"}
    for row in by_source.values():
        assert row.rstrip(" |").endswith("| 0"), row  # the errors column
    assert "S3 / local: CPU per pair x" in done.stdout
