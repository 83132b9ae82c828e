"""Manifests: the pairs to match, streamed from CSV, JSONL or a folder of folders, on disk
or in a bucket (any fsspec URL: ``s3://``, ``gs://``, ``az://``, ``https://``).

Rows are read one at a time, so a manifest of a million pairs costs no more memory than one
of ten. A row that cannot become a pair (missing fields, bad JSON, a path that escapes the
root) is still yielded, as a :class:`PairSpec` carrying a :class:`ManifestProblem` and its
line number: the runner records it as that pair's error and carries on. So is a row no
reader would take: bytes that are not UTF-8 (a spreadsheet's Windows-1252 export), a CSV
field over the csv module's limit, a JSON line nested too deeply or over
``MAX_LINE_BYTES``: each is that row's ``MALFORMED_ROW``, and the rows after it run.

A manifest may be untrusted input: its images are confined to its own folder or prefix by
default (a wider ``root``, or ``confined=False``, says otherwise). A row outside is refused
when it is read (``PATH_OUTSIDE_ROOT``), and each :class:`PairSpec` carries its roots to the
read, which checks them again on the file it opened.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import posixpath
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeAlias
from urllib.parse import urlsplit

from facematch_async._storage import (
    ImageLocation,
    Roots,
    display,
    is_url,
    join,
    list_folder,
    manifest_is_folder,
    normalize_roots,
    normalize_url,
    open_manifest,
    path_inside,
    prefix_of,
    url_inside,
)

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_PAIR_ID",
    "REQUIRED_COLUMNS",
    "ManifestProblem",
    "PairSpec",
    "is_url",
    "pair_key",
    "read_manifest",
    "scan_manifest",
]

RootArg: TypeAlias = "str | os.PathLike[str]"

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
        file_a: The first image (e.g. the selfie): a local path, or a URL string
            (``s3://...``); ``None`` only for a problem row. A string that is not a URL
            is taken as a path.
        file_b: The second image (e.g. the ID document).
        line: The manifest line the row ends on (``None`` for folders and API callers).
        extra: The manifest's other columns, copied to the output.
        problem: Set when the row is unusable; the pair is then recorded as an error.
        roots: The folders and URL prefixes its images must lie inside, checked again when
            they are opened (:func:`read_manifest` sets them); ``None``: anywhere.
    """

    pair_id: str
    file_a: Path | str | None
    file_b: Path | str | None
    line: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    problem: ManifestProblem | None = None
    roots: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("file_a", "file_b"):
            value = getattr(self, name)
            if isinstance(value, str) and not is_url(value):
                object.__setattr__(self, name, Path(value))

    def images(self) -> tuple[ImageLocation, ImageLocation]:
        """Both images as :class:`ImageLocation` objects confined to :attr:`roots`: what the
        runner hands the client (``client.prepare_soon(*spec.images())``).

        Raises:
            ValueError: a problem row, which has no images.
        """
        if self.file_a is None or self.file_b is None:
            raise ValueError(f"pair {self.key!r} has no images: {self.problem}")
        return ImageLocation(self.file_a, self.roots), ImageLocation(self.file_b, self.roots)

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
    path: str | os.PathLike[str],
    root: RootArg | Sequence[RootArg] | None = None,
    *,
    confined: bool = True,
) -> Iterator[PairSpec]:
    """Stream the pairs of a manifest, on disk or in a bucket.

    * ``.csv``: a header naming ``pair_id,file_a,file_b`` (any order); other columns are
      carried into the output as ``extra``.
    * ``.jsonl`` / ``.ndjson``: one JSON object per line with the same keys; blank lines
      are skipped.
    * a folder: each sub-folder ``<dir>/<pair_id>/`` holding exactly two files (hidden files
      ignored); they become ``file_a`` and ``file_b`` in name order.

    ``path`` may be an fsspec URL (``s3://bucket/jobs/pairs.csv``, or a prefix of pair
    folders), and so may each image (``s3://...``, ``gs://...``, ``az://...``,
    ``https://...``). Relative paths resolve against the manifest's folder or prefix (an
    absolute one against its bucket).

    Confined by default: every image must lie inside the manifest's folder (or prefix), or
    inside ``root`` (a folder or URL prefix, or a list of them) when given; a local path
    is judged with symlinks followed. One that does not (``../``, an absolute path, a
    symlink out, another bucket) is a per-pair ``PATH_OUTSIDE_ROOT`` problem, and the
    check is made again on the file actually opened. ``confined=False`` reads images
    wherever the rows point: only for a manifest you trust.

    Raises:
        FileNotFoundError: the manifest does not exist.
        OSError: a bucket manifest cannot be read (access denied, the store is down).
        ValueError: a CSV manifest without the required header; ``root`` together with
            ``confined=False``; a URL whose filesystem is not installed (the extra named).
    """
    return _manifest(os.fspath(path), root, confined, resolve=True)


def scan_manifest(path: str | os.PathLike[str]) -> Iterator[PairSpec]:
    """The rows of a manifest as :func:`read_manifest` gives them, their images not
    resolved (``file_a`` and ``file_b`` are ``None``): to count pairs and key them fast."""
    return _manifest(os.fspath(path), None, False, resolve=False)


def _manifest(
    text: str, root: RootArg | Sequence[RootArg] | None, confined: bool, *, resolve: bool
) -> Iterator[PairSpec]:
    if not confined and root is not None:
        raise ValueError("root confines the images and confined=False frees them: not both")
    if is_url(text):
        if manifest_is_folder(text):
            folder = text if text.endswith("/") else text + "/"
            roots = _roots(root, folder, confined)
            return _read_folder(_remote_folder(folder), roots, resolve)
        base = prefix_of(text)
        roots = _roots(root, base, confined)
        suffix = posixpath.splitext(urlsplit(text).path)[1].lower()
        opener: Callable[[], IO[bytes]] = lambda: open_manifest(text)  # noqa: E731
        name = display(text)
        row_base = base if resolve else None
        if suffix in _JSONL_SUFFIXES:
            return _read_jsonl(opener, row_base, roots)
        return _read_csv(opener, name, row_base, roots)
    source = Path(text)
    if source.is_dir():
        return _read_folder(_local_folder(source), _roots(root, source, confined), resolve)
    if not source.exists():
        raise FileNotFoundError(f"no such manifest: {source}")
    roots = _roots(root, source.parent, confined)
    local: Callable[[], IO[bytes]] = lambda: open(source, "rb")  # noqa: E731, SIM115
    if source.suffix.lower() in _JSONL_SUFFIXES:
        return _read_jsonl(local, source.parent if resolve else None, roots)
    return _read_csv(local, str(source), source.parent if resolve else None, roots)


def _roots(root: RootArg | Sequence[RootArg] | None, home: RootArg, confined: bool) -> Roots | None:
    """The roots of a manifest's images: ``root``, else the manifest's own folder or prefix."""
    if not confined:
        return None
    return normalize_roots(home if root is None else root)


def _outside(value: str) -> ManifestProblem:
    return ManifestProblem("PATH_OUTSIDE_ROOT", f"{display(value)!r} is outside the root")


def _resolve(base: Path | str, value: str, roots: Roots | None) -> Path | str | ManifestProblem:
    """A row's image: a local path or a normalized URL, or why it is refused."""
    if is_url(value) or isinstance(base, str):
        url = normalize_url(join(str(base), value))
        if url is None or (roots is not None and not url_inside(url, roots)):
            return _outside(value)
        return url
    candidate = base / value  # an absolute value replaces base
    if roots is not None and not path_inside(candidate, roots):
        return _outside(value)
    return candidate


def _make_spec(
    base: Path | str | None,
    roots: Roots | None,
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
        resolved = _resolve(base, str(fields[name]).strip(), roots)
        if isinstance(resolved, ManifestProblem):
            problem = ManifestProblem(resolved.sub_code, f"{where}: {name} {resolved.message}")
            return PairSpec(pair_id, None, None, line, extra, problem)
        paths.append(resolved)
    return PairSpec(pair_id, paths[0], paths[1], line, extra, roots=roots)


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


def _read_csv(
    opener: Callable[[], IO[bytes]], source: str, base: Path | str | None, roots: Roots | None
) -> Iterator[PairSpec]:
    # surrogateescape: a byte that is not UTF-8 fails its row, not the whole manifest.
    with io.TextIOWrapper(
        opener(), newline="", encoding="utf-8-sig", errors="surrogateescape"
    ) as file:
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
            yield _make_spec(base, roots, line, fields, extra)


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


def _bounded_lines(file: IO[bytes]) -> Iterator[bytes | None]:
    """The file's lines; ``None`` for one over ``MAX_LINE_BYTES`` (skipped, never held)."""
    while text := file.readline(MAX_LINE_BYTES + 1):
        if len(text) <= MAX_LINE_BYTES or text.endswith(b"\n"):
            yield text
            continue
        while (rest := file.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
            pass
        yield None


def _read_jsonl(
    opener: Callable[[], IO[bytes]], base: Path | str | None, roots: Roots | None
) -> Iterator[PairSpec]:
    with opener() as file:
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
            yield _make_spec(base, roots, line, fields, extra)


_Folders: TypeAlias = Iterator[tuple[str, "Path | str", Callable[[], list[str]]]]
"""A folder manifest's pair folders: each one's name, where it is, and how to list its files."""


def _files_on_disk(path: str) -> list[str]:
    return [name for name in os.listdir(path) if os.path.isfile(os.path.join(path, name))]


def _files_in_bucket(prefix: str) -> list[str]:
    return [name for name, is_folder in list_folder(prefix) if not is_folder]


def _local_folder(source: Path) -> _Folders:
    # os.scandir streams the entries: no list of a million names in memory.
    with os.scandir(source) as entries:
        for entry in entries:
            if entry.is_dir():
                yield entry.name, Path(entry.path), functools.partial(_files_on_disk, entry.path)


def _remote_folder(prefix: str) -> _Folders:
    for name, is_folder in list_folder(prefix):
        if is_folder:
            folder = f"{prefix}{name}/"
            yield name, folder, functools.partial(_files_in_bucket, folder)


def _read_folder(folders: _Folders, roots: Roots | None, resolve: bool) -> Iterator[PairSpec]:
    for entry_name, entry_path, list_files in folders:
        if entry_name.startswith("."):
            continue
        names = sorted(name for name in list_files() if not name.startswith("."))
        if len(names) != 2:
            problem = ManifestProblem(
                "MALFORMED_ROW", f"{entry_name}/ holds {len(names)} files, not 2"
            )
            yield PairSpec(_printable(entry_name), None, None, None, {}, problem)
            continue
        # A folder name that is not UTF-8 keeps its bytes for the paths; its pair id is
        # written with \\xe9-style escapes, so results and --resume agree on it.
        pair_id = _printable(entry_name)
        fields = {"pair_id": pair_id, "file_a": names[0], "file_b": names[1]}
        yield _make_spec(entry_path if resolve else None, roots, None, fields, {})
