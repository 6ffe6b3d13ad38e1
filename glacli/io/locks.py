"""Output locks: one run at a time writes an output (an extraction, evaluate's JSON and figure)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from glacli.base.errors import GlaInputError


_HELD_LOCKS: set[int] = set()
"""Descriptors of the output locks this process holds. A forked child (a DataLoader worker)
closes its copies, so a worker that outlives a killed run (stuck reading a file) holds no lock."""


def _close_inherited_locks() -> None:
    for fd in _HELD_LOCKS:
        os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


@contextlib.contextmanager
def output_lock(output: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.NAME.lock`` beside ``output``; a second holder is refused at once
    with ``busy`` (formatted with ``holder``, what the lock file says of the run holding it).

    The file names the holder (pid, host, start time) for the refusal message. The kernel drops a
    flock when its process dies, even by SIGKILL, so a killed run leaves no stale lock: the file it
    leaves is simply taken by the next run, which resumes. The holder removes the file when done; a
    run that opened it just before then locks a removed file, notices, and opens the path again.
    """
    path = output.with_name(f".{output.name}.lock")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise GlaInputError(f"cannot create the lock file {path.name} ({exc.strerror})", output) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "starting"
            os.close(fd)
            raise GlaInputError(busy.format(holder=holder), output) from None
        except OSError as exc:
            os.close(fd)
            raise GlaInputError(f"cannot lock {path.name} ({exc.strerror}); the file system must support "
                                f"flock", output) from exc
        if _is_at(fd, path):
            break
        os.close(fd)
    _HELD_LOCKS.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        _HELD_LOCKS.discard(fd)
        os.close(fd)


def _is_at(fd: int, path: Path) -> bool:
    """True if ``path`` still names the file open as ``fd`` (its holder may have removed it meanwhile)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
