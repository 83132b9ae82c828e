"""Manifests: CSV, JSONL and folders stream pairs; bad rows become per-pair problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facematch_async import PairSpec, read_manifest


def problems(specs: list[PairSpec]) -> dict[int | None, str]:
    return {s.line: s.problem.sub_code for s in specs if s.problem is not None}


def test_csv_rows_resolve_against_the_manifest_folder(tmp_path: Path) -> None:
    """Relative paths resolve against the manifest's folder (an absolute one replaces it,
    when unconfined); extra columns are kept."""
    (tmp_path / "m").mkdir()
    manifest = tmp_path / "m" / "pairs.csv"
    manifest.write_text("case,pair_id,file_a,file_b\nC-1,p1,a.jpg,/abs/b.png\n")
    [spec] = list(read_manifest(manifest, confined=False))
    assert spec == PairSpec("p1", tmp_path / "m" / "a.jpg", Path("/abs/b.png"), 2, {"case": "C-1"})


def test_csv_without_the_header_is_refused(tmp_path: Path) -> None:
    """A CSV whose first line lacks pair_id,file_a,file_b is a usage error, not a pair error."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("p1,a.jpg,b.jpg\n")
    with pytest.raises(ValueError, match="header"):
        list(read_manifest(manifest))


def test_malformed_csv_rows_carry_their_line(tmp_path: Path) -> None:
    """Short rows, long rows and empty fields are MALFORMED_ROW problems with a line number."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "pair_id,file_a,file_b\n"
        "ok,a.jpg,b.jpg\n"
        "short,a.jpg\n"
        "\n"
        "long,a.jpg,b.jpg,c.jpg\n"
        ",a.jpg,b.jpg\n"
        'quoted,"multi\nline.jpg",b.jpg\n'
        "blank,a.jpg, \n"
    )
    specs = list(read_manifest(manifest))
    assert problems(specs) == {
        3: "MALFORMED_ROW",
        5: "MALFORMED_ROW",
        6: "MALFORMED_ROW",
        9: "MALFORMED_ROW",
    }
    assert [s.pair_id for s in specs if s.problem is None] == ["ok", "quoted"]
    anonymous = next(s for s in specs if s.line == 6)
    assert anonymous.key == "@line:6"


def test_jsonl_lines_and_their_problems(tmp_path: Path) -> None:
    """JSONL takes the same keys; bad JSON and non-objects are problems with a line number."""
    manifest = tmp_path / "pairs.jsonl"
    rows = [
        json.dumps({"pair_id": "p1", "file_a": "a.jpg", "file_b": "b.jpg", "case": 7}),
        "{not json",
        "",
        "[1, 2]",
        json.dumps({"pair_id": "p2", "file_a": "a.jpg"}),
    ]
    manifest.write_text("\n".join(rows) + "\n")
    specs = list(read_manifest(manifest))
    assert specs[0].extra == {"case": "7"}
    assert specs[0].file_b == tmp_path / "b.jpg"
    assert problems(specs) == {2: "MALFORMED_ROW", 4: "MALFORMED_ROW", 5: "MALFORMED_ROW"}


def test_root_confines_every_path(tmp_path: Path) -> None:
    """With a root, '../' escapes and absolute paths outside it are PATH_OUTSIDE_ROOT."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    manifest = root / "pairs.csv"
    manifest.write_text(
        "pair_id,file_a,file_b\n"
        "in,a.jpg,sub/../b.jpg\n"
        "up,../secret.jpg,b.jpg\n"
        "abs,a.jpg,/etc/passwd\n"
        "sym,link/x.jpg,b.jpg\n"
    )
    specs = list(read_manifest(manifest, root=root))
    assert problems(specs) == {
        3: "PATH_OUTSIDE_ROOT",
        4: "PATH_OUTSIDE_ROOT",
        5: "PATH_OUTSIDE_ROOT",
    }
    assert specs[0].problem is None
    assert specs[1].problem is not None
    assert "line 3" in specs[1].problem.message


def test_folder_manifests_hold_one_folder_per_pair(tmp_path: Path) -> None:
    """<dir>/<pair_id>/ with two files is a pair (name order); other counts are problems."""
    for name, files in {"p1": ["b_id.png", "a_selfie.jpg"], "p2": ["only.jpg"]}.items():
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_bytes(b"x")
    (tmp_path / "p1" / ".DS_Store").write_bytes(b"x")
    specs = {s.pair_id: s for s in read_manifest(tmp_path)}
    assert specs["p1"].file_a == tmp_path / "p1" / "a_selfie.jpg"
    assert specs["p1"].file_b == tmp_path / "p1" / "b_id.png"
    assert specs["p2"].problem is not None
    assert specs["p2"].problem.sub_code == "MALFORMED_ROW"


def test_manifests_are_streamed(tmp_path: Path) -> None:
    """read_manifest returns an iterator; rows are read as they are asked for."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("pair_id,file_a,file_b\n" + "".join(f"p{i},a,b\n" for i in range(10)))
    specs = read_manifest(manifest)
    assert next(iter(specs)).pair_id == "p0"


def test_a_missing_manifest_raises(tmp_path: Path) -> None:
    """A manifest that does not exist raises FileNotFoundError at once."""
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "nope.csv")
