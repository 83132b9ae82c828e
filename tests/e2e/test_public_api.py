"""The public surface: names exported, sorted, documented and typed."""

from __future__ import annotations

import inspect
from pathlib import Path

import facematch_async
from facematch_async import errors
from tests.helpers import ROOT


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted (constants, classes, then the rest, as ruff orders it) and complete."""
    names = facematch_async.__all__

    def kind(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert names == sorted(names, key=kind)
    for name in names:
        assert hasattr(facematch_async, name), name


def test_every_error_is_exported_at_top_level() -> None:
    """Each exception in facematch_async.errors is importable from the package root."""
    for name in errors.__all__:
        assert getattr(facematch_async, name) is getattr(errors, name)
        assert name in facematch_async.__all__


def test_every_error_derives_from_the_base_and_is_documented() -> None:
    """All errors subclass FaceMatchError, have a docstring and appear in the module's tree."""
    for name in errors.__all__:
        error = getattr(errors, name)
        assert issubclass(error, errors.FaceMatchError)
        assert inspect.getdoc(error)
        assert name in (errors.__doc__ or "")


def test_public_callables_are_documented() -> None:
    """Every exported class and function has a docstring."""
    for name in facematch_async.__all__:
        value = getattr(facematch_async, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), name


def test_package_is_marked_typed() -> None:
    """py.typed ships with the package."""
    assert (Path(facematch_async.__file__).parent / "py.typed").is_file()


def test_the_version_has_one_source() -> None:
    """The installed distribution's version is the package's __version__ (pyproject reads it)."""
    from importlib.metadata import version

    assert version("facematch-async") == facematch_async.__version__
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert facematch_async.__version__ not in pyproject
