"""One writer per results file: an exclusive lock, held from open to close.

The lock is ``flock`` on a sidecar file, ``<results>.lock``, which also says who holds it
(pid, host, start time, command line with any password masked) so that a second writer can
name the holder in its one-line refusal. The results file itself is not the lock: its
compaction replaces it with a new file (``os.replace``), and a lock on the old one would
leave the new one unguarded.

* **A second writer fails at once**: another process, or a second ``ResultsFile`` in this
  process (``flock`` locks belong to each open of the file), raises
  :class:`ResultsFileLockedError`; nothing waits.
* **A dead holder never blocks**: the system drops a process's locks when it dies, even by
  ``kill -9``; the stale sidecar it leaves is locked afresh by the next run.
* **Unlinked while held**: a holder removes the sidecar before it lets go; a run that
  locked the file just as it was removed sees that the path no longer names what it locked
  and tries again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from facematch_async.batch._records import ResultsFileError

__all__ = ["LockHolder", "ResultsFileLock", "ResultsFileLockedError"]

logger = logging.getLogger("facematch_async")
_ATTEMPTS = 10  # a sidecar removed between open and lock, that many times in a row: give up
_MAX_COMMAND = 300

if sys.platform == "win32":  # pragma: no cover (the suite runs on Linux)
    import msvcrt

    def _try_lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds a results file, as its lock file says.

    Attributes:
        pid: The holder's process id.
        host: The machine it runs on.
        started: When it took the lock (epoch seconds).
        command: Its command line (passwords masked), when known.
    """

    pid: int | None = None
    host: str | None = None
    started: float | None = None
    command: str | None = None

    def describe(self) -> str:
        """``pid 4242 on host-a since 2024-06-01 02:00:00 (facematch-async batch ...)``."""
        parts = [f"pid {self.pid}" if self.pid is not None else "a process"]
        if self.host:
            parts.append(f"on {self.host}")
        if self.started is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
            parts.append(f"since {stamp}")
        text = " ".join(parts)
        return f"{text} ({self.command})" if self.command else text


class ResultsFileLockedError(ResultsFileError):
    """Another run writes to this results file (another process, or another
    ``ResultsFile`` of this one): two writers would send every pair twice and a compaction
    could drop the other's lines. The message names the holder.

    Attributes:
        holder: Who holds it, when its lock file says.
    """

    def __init__(self, path: Path, holder: LockHolder | None) -> None:
        super().__init__(path, "lock", OSError(errno.EAGAIN, "in use"))
        self.holder = holder
        who = holder.describe() if holder is not None else "another process"
        if holder is not None and holder.pid == os.getpid() and holder.host == _HOST:
            who = f"this process, through another ResultsFile ({who})"
        self.message = (
            f"{path} is being written by another run: {who}; wait for it to end or stop it "
            "(a run that died holds nothing)"
        )


_HOST = socket.gethostname()


def _masked(argv: list[str]) -> str:
    """The command line, safe to show: URL passwords, ``password=`` parameters and the
    values of flags named like a secret shown as ``***``; cut to a few hundred characters."""
    shown: list[str] = []
    secret_next = False
    for arg in argv:
        if secret_next:
            shown.append("***")
            secret_next = False
            continue
        flag, eq, _value = arg.partition("=")
        secret_flag = flag.startswith("-") and not flag.endswith("-file")
        if secret_flag and re.search(r"(?i)secret|password|token", flag):
            if eq:
                shown.append(f"{shlex.quote(flag)}=***")
                continue
            secret_next = True
        arg = re.sub(r"(?i)((?:password|secret|token)=)[^&\s]*", r"\1MASKED", arg)
        arg = re.sub(r"://[^/@\s]*@", _mask_userinfo, arg)
        shown.append(shlex.quote(arg).replace("MASKED", "***"))
    text = " ".join(shown)
    return text if len(text) <= _MAX_COMMAND else text[: _MAX_COMMAND - 3] + "..."


def _mask_userinfo(found: re.Match[str]) -> str:
    userinfo = found.group(0)[3:-1]
    user, colon, _ = userinfo.partition(":")
    return f"://{user}:MASKED@" if colon else "://MASKED@"


def _command() -> str:
    argv = list(sys.argv) or ["python"]
    argv[0] = os.path.basename(argv[0]) or "python"
    return _masked(argv)


class ResultsFileLock:
    """The exclusive lock on one results file (``<results>.lock`` beside it).

    Args:
        results: The results file it guards.
    """

    def __init__(self, results: Path) -> None:
        self.path = results.with_name(results.name + ".lock")
        self.results = results
        self._fd: int | None = None
        self._unguarded = False  # taken on a file system without locks

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now (or took the file where no lock exists)."""
        return self._fd is not None or self._unguarded

    def acquire(self) -> None:
        """Take the lock, or fail at once.

        Raises:
            ResultsFileLockedError: another run holds it.
            ResultsFileError: the lock file cannot be created (a read-only folder, say).
        """
        for _ in range(_ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as exc:
                raise ResultsFileError(self.path, "create the lock file", exc) from None
            try:
                _try_lock(fd)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise ResultsFileLockedError(self.results, holder) from None
                # A file system without locks (some network and FUSE mounts): go on, as
                # before locks existed, and say what is not guarded.
                logger.warning(
                    "%s cannot be locked (%s): make sure no other run writes to %s",
                    self.path,
                    exc.strerror or exc,
                    self.results,
                )
                self._unguarded = True
                return
            if self._names(fd):
                self._fd = fd
                self._write_holder(fd)
                return
            os.close(fd)  # its holder removed it as we locked it: lock the new one
        raise ResultsFileError(
            self.path, "lock", OSError(errno.EAGAIN, "it keeps being removed and created")
        )

    def _names(self, fd: int) -> bool:
        """Whether the path still names the file ``fd`` locked."""
        try:
            here, there = os.fstat(fd), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    @staticmethod
    def _write_holder(fd: int) -> None:
        holder = {"pid": os.getpid(), "host": _HOST, "started": time.time(), "command": _command()}
        data = json.dumps(holder).encode("utf-8", "backslashreplace")
        with contextlib.suppress(OSError):  # who holds it is a courtesy; the lock is the rule
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, data)

    def release(self) -> None:
        """Let go (removing the lock file first). Safe to call twice."""
        fd, self._fd = self._fd, None
        self._unguarded = False
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(fd)


def _read_holder(fd: int) -> LockHolder | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        fields = json.loads(data.decode("utf-8"))
    except (OSError, ValueError):
        return None  # written just now, or not by us
    if not isinstance(fields, dict):
        return None
    pid, host = fields.get("pid"), fields.get("host")
    started, command = fields.get("started"), fields.get("command")
    return LockHolder(
        pid if isinstance(pid, int) else None,
        host if isinstance(host, str) else None,
        float(started) if isinstance(started, int | float) else None,
        command if isinstance(command, str) else None,
    )
