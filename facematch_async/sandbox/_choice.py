"""Choosing an engine by name: ``auto``, ``dlib`` or ``test``."""

from __future__ import annotations

from typing import Literal, get_args

from facematch_async.sandbox._dlib import DlibEngine, dlib_available
from facematch_async.sandbox._engines import FaceEngine, TestEngine

__all__ = ["ENGINE_NAMES", "EngineName", "choose_engine"]

EngineName = Literal["auto", "dlib", "test"]
ENGINE_NAMES: tuple[str, ...] = get_args(EngineName)


def choose_engine(name: str) -> FaceEngine:
    """The engine called ``name``; ``auto`` is dlib when the ``face`` extra is installed.

    Raises:
        ValueError: an unknown name.
        ModuleNotFoundError: ``dlib`` was asked for but the ``face`` extra is missing.
    """
    if name == "test":
        return TestEngine()
    if name == "dlib" or (name == "auto" and dlib_available()):
        return DlibEngine()
    if name == "auto":
        return TestEngine()
    raise ValueError(f"engine must be one of {', '.join(ENGINE_NAMES)}; got {name!r}")
