"""Manifests as spreadsheets and scripts really write them: BOMs, quotes, CRLF, stray rows."""

from __future__ import annotations

from pathlib import Path

from facematch_async import read_manifest


def test_bom_crlf_and_quoted_commas_are_read(tmp_path: Path) -> None:
    """A UTF-8 BOM (Excel), CRLF line ends and a quoted file name with a comma all work."""
    (tmp_path / "smith, john.jpg").write_bytes(b"x")
    manifest = tmp_path / "pairs.csv"
    manifest.write_bytes(
        b'\xef\xbb\xbfpair_id,file_a,file_b\r\np1,"smith, john.jpg",b.png\r\n\r\np2,a.jpg,b.png\r\n'
    )
    specs = list(read_manifest(manifest))
    good = [spec for spec in specs if spec.problem is None]
    assert [spec.pair_id for spec in good] == ["p1", "p2"]
    assert good[0].file_a == tmp_path / "smith, john.jpg"


def test_escapes_are_per_row_problems(tmp_path: Path) -> None:
    """A ../ escape under a root is a problem of that row alone (with its line)."""
    root = tmp_path / "images"
    root.mkdir()
    manifest = root / "pairs.csv"
    manifest.write_text("pair_id,file_a,file_b\nok,a.jpg,b.jpg\nescape,../../etc/passwd,b.jpg\n")
    specs = list(read_manifest(manifest, root=root))
    assert [(spec.pair_id, spec.problem is None) for spec in specs] == [
        ("ok", True),
        ("escape", False),
    ]
    escaped = specs[1]
    assert escaped.problem is not None
    assert escaped.line == 3
