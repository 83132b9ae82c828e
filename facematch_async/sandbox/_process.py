"""The sandbox in a process of its own: for demos, benchmarks and tests of other processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

__all__ = ["LISTENING", "sandbox_process"]

LISTENING = "Sandbox listening on "
"""The first line the sandbox CLI prints, followed by its base URL."""


@contextmanager
def sandbox_process(
    *arguments: str,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
) -> Iterator[str]:
    """Run ``facematch-async sandbox --port 0 *arguments`` and yield its base URL.

    The process is terminated on exit (killed if it does not stop within 10 s)::

        with sandbox_process("--engine", "dlib", "--rate-limit", "business") as base_url:
            ...

    Args:
        arguments: More CLI flags (``--client-id``, fault flags, ...).
        env: The process's environment (default: this one's).
        command: A whole command line to run instead, for a script that calls
            :func:`serve` itself (a custom engine, say); it must print the same first line.

    Raises:
        RuntimeError: the process did not print ``Sandbox listening on URL`` first.
    """
    argv = (
        list(command)
        if command is not None
        else [sys.executable, "-m", "facematch_async.cli", "sandbox", "--port", "0", *arguments]
    )
    process = subprocess.Popen(  # noqa: S603 (our own interpreter, or the caller's command)
        argv, env=None if env is None else dict(env), stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith(LISTENING):
            raise RuntimeError(f"the sandbox did not start: {line!r}")
        yield line.removeprefix(LISTENING)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
