"""The benchmark harness runs end to end at tiny sizes, so it cannot rot between full runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

BENCH = ROOT / "benchmarks" / "bench.py"


@pytest.mark.timeout(180)
def test_smoke_run_measures_every_peer_in_every_scenario(tmp_path: Path) -> None:
    """A smoke run writes JSON, the Markdown tables and the chart; no peer meets an error."""
    done = subprocess.run(  # noqa: S603 (our own script, our arguments)
        [sys.executable, str(BENCH), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    plan = results["meta"]["plan"]
    assert set(results["throughput"]) == set(plan["throughput_peers"])
    rows = list(results["throughput"].values())
    for size in plan["memory_sizes"]:
        rows += results["memory"][str(size)].values()
    rows += [results["saturation"][peer] for peer in plan["saturation_peers"]]
    for by_peer in results["latency"].values():
        rows += by_peer.values()
    for row in rows:
        assert row["errors"] == 0, row
        assert row["ok"] == row["pairs"] > 0, row
        assert row["cpu_ms_per_pair"] > 0, row
        assert row["peak_rss_mib"] >= row["rss_imports_mib"] > 0, row
    table = (tmp_path / "results.md").read_text()
    assert "| facematch-async BatchRunner |" in table
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")
