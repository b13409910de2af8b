"""The run lock: one writer per ledger (invariant 4 of :mod:`runner.ledger`).

Invariants: the lock is an OS file lock on ``<ledger>.lock`` taken through ``filelock``
(``flock`` on POSIX, ``LockFileEx`` on Windows), never a soft lock: the kernel drops it
when its process ends, even on ``kill -9``, so a crashed run never blocks the next one.
It is exclusive and never waited for: a second run fails at once with
:class:`LedgerLocked`, naming the holder's pid when the lock file tells it.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any

import filelock

from runner.errors import LedgerError, LedgerLocked

#: the OS lock of this platform (never filelock's soft lock, which outlives a kill -9)
_OS_LOCK: type[filelock.BaseFileLock] = (
    filelock.WindowsFileLock if sys.platform == "win32" else filelock.UnixFileLock
)


def _os_lock_options() -> dict[str, Any]:
    # newer filelock falls back to a soft lock on a filesystem without flock; a soft
    # lock would survive a killed run, so refuse that fallback where it exists
    params = inspect.signature(_OS_LOCK.__init__).parameters
    return {"fallback_to_soft": False} if "fallback_to_soft" in params else {}


#: every lock taken and not yet released: filelock lets a lock go when its object is
#: garbage collected, while the run lock must last until released or the process ends
_HELD: set[filelock.BaseFileLock] = set()


def lock_path_of(ledger_path: Path) -> Path:
    return ledger_path.with_name(ledger_path.name + ".lock")


class RunLock:
    """The held lock of one ledger; :meth:`release` (or the process's end) lets it go."""

    def __init__(self, lock: filelock.BaseFileLock) -> None:
        self._lock = lock

    @classmethod
    def take(cls, ledger_path: Path, *, held_by: str | None = None) -> RunLock:
        """Take the lock of ``ledger_path`` now, or raise :class:`LedgerLocked`
        (``held_by`` says what holds it, e.g. "another pixrun watch is watching X")."""
        path = lock_path_of(ledger_path)
        lock = _OS_LOCK(str(path), timeout=0, **_os_lock_options())
        # read first: an older filelock truncates the file on a failed attempt
        holder = _holder_pid(path)
        try:
            lock.acquire()
        except filelock.Timeout as exc:
            holder = _holder_pid(path) or holder
            raise LedgerLocked(
                (held_by or f"another pixrun run is using the ledger {ledger_path}")
                + (f" (pid {holder})" if holder else ""),
                hint="wait for it to finish, or watch it with 'pixrun status --watch'"
                if held_by is None
                else "stop it first; one process watches a folder",
            ) from exc
        except OSError as exc:
            raise LedgerError(
                f"cannot create the ledger lock {path}: {exc.strerror or exc}",
                hint="the ledger's folder must be writable",
            ) from exc
        # the holder's pid, for the message of a second run (the lock does not depend
        # on it: on Windows the locked byte may refuse the write, which is fine)
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        _HELD.add(lock)
        return cls(lock)

    def release(self) -> None:
        self._lock.release()
        _HELD.discard(self._lock)


def _holder_pid(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = path.read_bytes()[:32].decode().strip()
        if text.isdigit():
            return text
    return ""
