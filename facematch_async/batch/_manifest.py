"""Manifests: the pairs to match, streamed from CSV, JSONL or a folder of folders.

Rows are read one at a time, so a manifest of a million pairs costs no more memory than one
of ten. A row that cannot become a pair (missing fields, bad JSON, a path that escapes the
root) is still yielded, as a :class:`PairSpec` carrying a :class:`ManifestProblem` and its
line number: the runner records it as that pair's error and carries on. So is a row no
reader would take: bytes that are not UTF-8 (a spreadsheet's Windows-1252 export), a CSV
field over the csv module's limit, a JSON line nested too deeply or over
``MAX_LINE_BYTES``: each is that row's ``MALFORMED_ROW``, and the rows after it run.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_PAIR_ID",
    "REQUIRED_COLUMNS",
    "ManifestProblem",
    "PairSpec",
    "pair_key",
    "read_manifest",
    "scan_manifest",
]

REQUIRED_COLUMNS = ("pair_id", "file_a", "file_b")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
MAX_LINE_BYTES = 1024 * 1024
"""The longest JSONL line read; a longer one is a ``MALFORMED_ROW`` (and not kept in memory)."""
MAX_PAIR_ID = 4096
"""The longest ``pair_id`` taken (characters): every results format reads it back whole."""


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    """Why a manifest row is not a usable pair.

    Attributes:
        sub_code: ``MALFORMED_ROW``, ``PATH_OUTSIDE_ROOT`` or ``DUPLICATE_PAIR_ID``.
        message: What is wrong, for a person.
    """

    sub_code: str
    message: str


@dataclass(frozen=True, slots=True)
class PairSpec:
    """One pair to match.

    Attributes:
        pair_id: The caller's id for the pair; it keys the results and ``--resume``.
        file_a: The first image (e.g. the selfie); ``None`` only for a problem row.
        file_b: The second image (e.g. the ID document).
        line: The manifest line the row ends on (``None`` for folders and API callers).
        extra: The manifest's other columns, copied to the output.
        problem: Set when the row is unusable; the pair is then recorded as an error.
    """

    pair_id: str
    file_a: Path | None
    file_b: Path | None
    line: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    problem: ManifestProblem | None = None

    @property
    def key(self) -> str:
        """The id results are filed under: the pair id, or ``@line:N`` for an anonymous row."""
        return pair_key(self.pair_id, self.line, self.problem.sub_code if self.problem else None)


RESERVED_PREFIX = "@"
"""Pair ids may not start with it: ``@line:N`` keys the rows that have no id of their own."""


def pair_key(pair_id: str, line: int | None, sub_code: str | None) -> str:
    """The key a pair's outcome is filed under in the results and the resume index.

    The pair id, except for a row with no id or a repeated id: those are filed under their
    line (``@line:N``), so they never overwrite the outcome of the id's first row.
    """
    if pair_id and sub_code != "DUPLICATE_PAIR_ID":
        return pair_id
    return f"@line:{line}"


def read_manifest(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> Iterator[PairSpec]:
    """Stream the pairs of a manifest.

    * ``.csv``: a header naming ``pair_id,file_a,file_b`` (any order); other columns are
      carried into the output as ``extra``.
    * ``.jsonl`` / ``.ndjson``: one JSON object per line with the same keys; blank lines
      are skipped.
    * a folder: each sub-folder ``<dir>/<pair_id>/`` holding exactly two files (hidden files
      ignored); they become ``file_a`` and ``file_b`` in name order.

    Relative paths resolve against the manifest's folder. With ``root``, every image must
    resolve (symlinks followed) inside ``root``; one that does not, e.g. through ``../``, is
    a per-pair ``PATH_OUTSIDE_ROOT`` problem.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ValueError: a CSV manifest without the required header.
    """
    confine = Path(os.path.realpath(root)) if root is not None else None
    return _read(Path(path), confine, resolve=True)


def scan_manifest(path: str | os.PathLike[str]) -> Iterator[PairSpec]:
    """The rows of a manifest as :func:`read_manifest` gives them, their image paths not
    resolved (``file_a`` and ``file_b`` are ``None``): to count pairs and key them fast."""
    return _read(Path(path), None, resolve=False)


def _read(source: Path, confine: Path | None, *, resolve: bool) -> Iterator[PairSpec]:
    if source.is_dir():
        return _read_folder(source, confine, resolve)
    if not source.exists():
        raise FileNotFoundError(f"no such manifest: {source}")
    if source.suffix.lower() in _JSONL_SUFFIXES:
        return _read_jsonl(source, confine, resolve)
    return _read_csv(source, confine, resolve)


def _resolve(base: Path, value: str, confine: Path | None) -> Path | ManifestProblem:
    candidate = base / value  # an absolute value replaces base
    if confine is not None:
        try:
            real = os.path.realpath(candidate)
        except ValueError:  # a NUL byte: no file has that name, reading it fails per pair
            return candidate
        if os.path.commonpath([real, confine]) != str(confine):
            return ManifestProblem("PATH_OUTSIDE_ROOT", f"{value!r} is outside the root folder")
    return candidate


def _make_spec(
    base: Path | None,
    confine: Path | None,
    line: int | None,
    fields: Mapping[str, object],
    extra: Mapping[str, str],
) -> PairSpec:
    raw_id = fields.get("pair_id")
    pair_id = raw_id.strip() if isinstance(raw_id, str) else ""
    where = f"line {line}" if line is not None else f"{pair_id}/"
    if (why := _unusable_id(pair_id)) is not None:
        # Filed under its own line: the id would collide with a row filed under that line,
        # or could not be written to (and read back from) every results format.
        problem = ManifestProblem("MALFORMED_ROW", f"{where}: {why}")
        return PairSpec("", None, None, line, extra, problem)
    missing = [
        name
        for name in REQUIRED_COLUMNS
        if not isinstance(fields.get(name), str) or not str(fields.get(name)).strip()
    ]
    if missing:
        problem = ManifestProblem("MALFORMED_ROW", f"{where}: missing {', '.join(missing)}")
        return PairSpec(pair_id, None, None, line, extra, problem)
    if base is None:  # keys only (scan_manifest)
        return PairSpec(pair_id, None, None, line, extra)
    paths = []
    for name in ("file_a", "file_b"):
        resolved = _resolve(base, str(fields[name]).strip(), confine)
        if isinstance(resolved, ManifestProblem):
            problem = ManifestProblem(resolved.sub_code, f"{where}: {name} {resolved.message}")
            return PairSpec(pair_id, None, None, line, extra, problem)
        paths.append(resolved)
    return PairSpec(pair_id, paths[0], paths[1], line, extra)


def _unusable_id(pair_id: str) -> str | None:
    """Why ``pair_id`` cannot key results, or ``None``: reserved, too long, or not text
    (a lone surrogate from a JSON ``\\ud800`` escape: no UTF-8 file can hold it)."""
    if pair_id.startswith(RESERVED_PREFIX):
        return f"pair_id {pair_id!r} is reserved (it starts with '@')"
    if len(pair_id) > MAX_PAIR_ID:
        return f"pair_id is {len(pair_id)} characters long, over {MAX_PAIR_ID}"
    try:
        pair_id.encode("utf-8")
    except UnicodeEncodeError:
        return f"pair_id {pair_id!r} is not valid Unicode (a lone surrogate)"
    return None


def _not_utf8(row: list[str]) -> str | None:
    """Describe a row whose bytes were not UTF-8 (decoded with ``surrogateescape``)."""
    for value in row:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start].encode("utf-8", "surrogateescape")
            return f"not UTF-8 (byte 0x{bad.hex()} in {_printable(value)!r})"
    return None


def _printable(value: str) -> str:
    """``value`` with undecodable bytes as ``\\xe9`` escapes: safe to print and write."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _read_csv(source: Path, confine: Path | None, resolve: bool) -> Iterator[PairSpec]:
    base = source.parent if resolve else None
    # surrogateescape: a byte that is not UTF-8 fails its row, not the whole manifest.
    with open(source, newline="", encoding="utf-8-sig", errors="surrogateescape") as file:
        reader = csv.reader(file)
        header = [name.strip() for name in next(reader, [])]
        absent = [name for name in REQUIRED_COLUMNS if name not in header]
        if absent:
            raise ValueError(
                f"{source}: the first line must be a header with {', '.join(REQUIRED_COLUMNS)} "
                f"(missing {', '.join(absent)})"
            )
        header = [_printable(name) for name in header]
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # a field over csv.field_size_limit(), say
                line = reader.line_num
                problem = ManifestProblem("MALFORMED_ROW", f"line {line}: {exc}")
                yield PairSpec("", None, None, line, {}, problem)
                continue
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line
            if (why := _not_utf8(row)) is not None:
                # Filed under its line: an id with undecodable bytes keys no result reliably.
                problem = ManifestProblem("MALFORMED_ROW", f"line {line}: {why}")
                yield PairSpec("", None, None, line, {}, problem)
                continue
            fields = dict(zip(header, row, strict=False))
            extra = {k: v for k, v in fields.items() if k not in REQUIRED_COLUMNS and k}
            if len(row) != len(header):
                problem = ManifestProblem(
                    "MALFORMED_ROW", f"line {line}: {len(row)} fields, the header has {len(header)}"
                )
                pair_id = fields.get("pair_id", "").strip()
                if _unusable_id(pair_id) is not None:
                    pair_id = ""  # filed under its line, as _make_spec files it
                yield PairSpec(pair_id, None, None, line, extra, problem)
                continue
            yield _make_spec(base, confine, line, fields, extra)


def _jsonl_row(text: bytes, line: int) -> dict[str, object] | ManifestProblem:
    """One JSONL line's object, or why it is not one."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = text[exc.start : exc.start + 1].hex()
        return ManifestProblem(
            "MALFORMED_ROW", f"line {line}: not UTF-8 (byte 0x{bad} at column {exc.start + 1})"
        )
    try:
        fields = json.loads(decoded)
    except json.JSONDecodeError as exc:
        return ManifestProblem("MALFORMED_ROW", f"line {line}: not JSON ({exc.msg})")
    except ValueError as exc:  # an integer over Python's 4,300 digits
        return ManifestProblem("MALFORMED_ROW", f"line {line}: a value cannot be read ({exc})")
    except RecursionError:
        return ManifestProblem("MALFORMED_ROW", f"line {line}: JSON nested too deeply")
    if not isinstance(fields, dict):
        return ManifestProblem("MALFORMED_ROW", f"line {line}: not a JSON object")
    return fields


def _bounded_lines(file: BinaryIO) -> Iterator[bytes | None]:
    """The file's lines; ``None`` for one over ``MAX_LINE_BYTES`` (skipped, never held)."""
    while text := file.readline(MAX_LINE_BYTES + 1):
        if len(text) <= MAX_LINE_BYTES or text.endswith(b"\n"):
            yield text
            continue
        while (rest := file.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
            pass
        yield None


def _read_jsonl(source: Path, confine: Path | None, resolve: bool) -> Iterator[PairSpec]:
    base = source.parent if resolve else None
    with open(source, "rb") as file:
        for line, text in enumerate(_bounded_lines(file), start=1):
            if text is None:
                problem = ManifestProblem(
                    "MALFORMED_ROW", f"line {line}: longer than {MAX_LINE_BYTES} bytes"
                )
                yield PairSpec("", None, None, line, {}, problem)
                continue
            if line == 1:
                text = text.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM
            if not text.strip():
                continue
            fields = _jsonl_row(text, line)
            if isinstance(fields, ManifestProblem):
                yield PairSpec("", None, None, line, {}, fields)
                continue
            extra = {
                str(k): v if isinstance(v, str) else json.dumps(v)
                for k, v in fields.items()
                if k not in REQUIRED_COLUMNS
            }
            yield _make_spec(base, confine, line, fields, extra)


def _read_folder(source: Path, confine: Path | None, resolve: bool) -> Iterator[PairSpec]:
    # os.scandir streams the entries: no list of a million names in memory.
    with os.scandir(source) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            names = sorted(
                name
                for name in os.listdir(entry.path)
                if not name.startswith(".") and os.path.isfile(os.path.join(entry.path, name))
            )
            if len(names) != 2:
                problem = ManifestProblem(
                    "MALFORMED_ROW", f"{entry.name}/ holds {len(names)} files, not 2"
                )
                yield PairSpec(_printable(entry.name), None, None, None, {}, problem)
                continue
            # A folder name that is not UTF-8 keeps its bytes for the paths; its pair id is
            # written with \\xe9-style escapes, so results and --resume agree on it.
            pair_id = _printable(entry.name)
            fields = {"pair_id": pair_id, "file_a": names[0], "file_b": names[1]}
            base = Path(entry.path) if resolve else None
            yield _make_spec(base, confine, None, fields, {})
