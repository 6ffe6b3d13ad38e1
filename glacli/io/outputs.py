"""Output paths: checked before the work, written atomically, locked against a second writer.

Every output of gla (the HDF5 kinds, the formats, figures, JSON, checkpoints, extraction parts) is
written through :func:`atomic_output`, so a crash or an error never leaves a partial file and an
existing file stays untouched until the new one is whole.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

from glacli.base.errors import GlaInputError, one_line
from glacli.io import locks


def check_output_path(path: str | Path) -> Path:
    """Refuse an output path that cannot be written, naming it (call early, before the work)."""
    path = Path(path)
    if path.is_dir():
        raise GlaInputError("is a directory, not an output file", path)
    folder = path.parent
    if not folder.is_dir():
        raise GlaInputError(f"output folder {folder} does not exist", path)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise GlaInputError(f"cannot write to folder {folder} ({_unwritable_reason(folder)})", path)
    return path


def check_outputs(*paths: str | Path | None) -> list[Path]:
    """Every output of a command checked at once, before any work: writable, and no two the same."""
    checked = [check_output_path(p) for p in paths if p is not None and str(p) != "-"]
    seen: dict[Path, Path] = {}
    for path in checked:
        key = path.resolve()
        if key in seen:
            raise GlaInputError(f"is given as two different outputs ({seen[key]} and {path})", path)
        seen[key] = path
    return checked


def _unwritable_reason(folder: Path) -> str:
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "read-only file system" if read_only else "permission denied"


_TEMPORARY = re.compile(r"\.(?P<name>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}(?P<suffix>.*)$")
"""``.NAME.tmp-HOST-PID-XXXXXXXX.SUFFIX``: the temporary of :func:`atomic_output`, named by its writer."""


def _temporary_name(path: Path) -> str:
    return f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}"


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` left by writers on this host that are no longer running
    (killed before their rename); a live writer's temporary is left alone. Returns what was removed."""
    removed = []
    host = socket.gethostname()
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        match = _TEMPORARY.match(candidate.name)
        if (match is None or match["name"] != path.name or match["host"] != host
                or _process_alive(int(match["pid"]))):
            continue
        with contextlib.suppress(OSError):
            candidate.unlink()
            removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A hidden temporary path beside ``path``, renamed over it only if the block succeeds.

    Every output of gla goes through this: a crash or an error never leaves a partial file, and
    an existing file stays untouched until the new one is whole. The temporary's name carries the
    host and pid of its writer (``.NAME.tmp-HOST-PID-XXXXXXXX.SUFFIX``), so that the next write of
    the same output removes the temporaries of writers that were killed; it keeps the suffix, for
    writers (like ``np.save``) that add one when it is missing. A file system that refuses the
    write (read-only, permission, no space) is one user error naming ``path``, not the temporary.
    """
    path = check_output_path(path)
    remove_stale_temporaries(path)
    tmp = path.with_name(_temporary_name(path))
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except OSError as exc:
        raise GlaInputError(f"cannot write ({_os_reason(exc)})", path) from exc
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS or exc.filename not in (None, str(tmp)):  # not an input's error
            raise
        raise GlaInputError(f"cannot write ({_os_reason(exc)})", path) from exc
    finally:
        with contextlib.suppress(OSError):  # never let the clean-up hide the error that brought us here
            tmp.unlink(missing_ok=True)


_WRITE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
"""Errors of the file system that refused an output (reported as user errors naming it)."""


def _os_reason(exc: OSError) -> str:
    return os.strerror(exc.errno).lower() if exc.errno else one_line(exc)


WRITER_BUSY = "another gla run is writing this output ({holder}); wait for it to finish"


@contextlib.contextmanager
def writer_lock(*paths: str | Path | None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.NAME.lock`` beside each output for the whole run, so that two runs
    writing the same outputs cannot interleave them (one run's JSON beside the other's figure): a second
    writer is refused at once. The kernel drops the lock of a killed run; the next run takes its file."""
    with contextlib.ExitStack() as stack:
        for path in sorted({Path(p) for p in paths if p is not None and str(p) != "-"}):
            stack.enter_context(locks.output_lock(path, WRITER_BUSY))
        yield


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
