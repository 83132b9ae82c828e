"""Every Python sample in the README runs, so the documentation cannot rot.

Each ```python block runs in a fresh interpreter, inside an ``async def`` (samples may use
``await`` and ``async with`` at top level), in a folder holding the files the samples name,
with DEEPVUE_* pointing at a sandbox started from the CLI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from facematch_async.sandbox import make_test_image
from tests.helpers import CLIENT_ID, CLIENT_SECRET, ROOT

README = ROOT / "README.md"
SAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def sample_folder(folder: Path) -> Path:
    """The files README samples name: a selfie, an ID card and a small pairs manifest."""
    (folder / "selfie.jpg").write_bytes(make_test_image("asha", "jpeg"))
    (folder / "id_card.png").write_bytes(make_test_image("asha", "png"))
    (folder / "other.png").write_bytes(make_test_image("ravi", "png"))
    (folder / "pairs.csv").write_text(
        "pair_id,file_a,file_b\np1,selfie.jpg,id_card.png\np2,selfie.jpg,other.png\n"
    )
    return folder


def test_readme_has_python_samples() -> None:
    """The README shows code; this test file would pass vacuously otherwise."""
    assert len(SAMPLES) >= 3


@pytest.mark.parametrize("sample", SAMPLES, ids=[f"sample{i}" for i in range(len(SAMPLES))])
def test_readme_sample_runs(sample: str, cli_sandbox_url: str, tmp_path: Path) -> None:
    """The sample runs to completion against the sandbox."""
    program = "import asyncio\n\nasync def _sample():\n"
    program += textwrap.indent(sample, "    ") + "\n    pass\n\nasyncio.run(_sample())\n"
    env = dict(os.environ)
    env.update(
        DEEPVUE_BASE_URL=cli_sandbox_url,
        DEEPVUE_CLIENT_ID=CLIENT_ID,
        DEEPVUE_CLIENT_SECRET=CLIENT_SECRET,
    )
    completed = subprocess.run(  # noqa: S603
        [sys.executable, "-c", program],
        cwd=sample_folder(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_every_test_the_guarantees_table_names_exists() -> None:
    """Each `path::name` (or `::name`, under the path before it) in the Guarantees table is
    a test module that defines that test, so the table cannot point at a renamed test."""
    text = README.read_text(encoding="utf-8")
    table = text.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    named = 0
    for row in table.splitlines():
        if not row.startswith("| ") or row.startswith("| guarantee") or "---" in row:
            continue
        module: Path | None = None
        for reference in re.findall(r"`([\w/]*(?:\.py)?(?:::\w+)?)`", row.rsplit(" | ", 1)[1]):
            path, _, name = reference.partition("::")
            if path:
                module = ROOT / "tests" / path
                assert module.exists(), f"{reference}: no such test file or folder"
            if name:
                assert module is not None and module.is_file(), f"{reference}: which module?"
                assert re.search(rf"def {name}\(", module.read_text()), f"{module}: no {name}"
                named += 1
    assert named >= 40
