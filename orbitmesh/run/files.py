"""Result files written whole or not at all, and disk errors said in one line.

Every result file of a run (``summary.json``, ``trace.json``, ``stats-w<k>.json``, ``run.json``,
``pids.json``) goes through :func:`atomic_write`: the bytes go to a temporary file beside the
target, are flushed to disk, and the temporary file is renamed over the target. A crash or a
full disk therefore leaves the previous version (or no file), never half of one; the temporary
file is removed when the write fails.

A full disk (``ENOSPC``, ``EDQUOT``) or an I/O error (``EIO``) becomes :class:`DiskError`, a
``RunError`` whose message names the file: ``disk full writing runs/x/summary.json: ...``.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from orbitmesh.errors import RunError

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})
_TEMP_SERIAL = itertools.count()  # next() on a count is atomic under the GIL


class DiskError(RunError):
    """A result file could not be written: the disk is full or failing."""

    def __init__(self, path: Path | str, exc: OSError) -> None:
        self.path = Path(path)
        what = ("disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                else "I/O error")
        super().__init__(f"{what} writing {path}: {exc.strerror or exc} "
                         f"(free space under {self.path.parent} or give --out on another disk)")


def is_disk_error(exc: BaseException) -> bool:
    """True for the OSErrors that mean the disk is full or failing (not a programming error)."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def atomic_write(path: Path | str, data: bytes | str, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` via a temporary file and a rename; DiskError on a full disk.

    ``durable=False`` skips the fsync: still whole-or-nothing against a crashed process, not
    against a power cut (for snapshots rewritten every second).
    """
    path = Path(path)
    body = data.encode("utf-8") if isinstance(data, str) else data
    tmp = _temporary_beside(path)
    try:
        with tmp.open("wb") as fh:
            fh.write(body)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_disk_error(exc):
            raise DiskError(path, exc) from exc
        raise
    return path


@contextlib.contextmanager
def partial_output(path: Path | str, mode: str = "w") -> Iterator[IO[Any]]:
    """A file to stream into, renamed to ``path`` only if the block ends without an error."""
    path = Path(path)
    tmp = _temporary_beside(path)
    try:
        binary = "b" in mode
        with open(tmp, mode, encoding=None if binary else "utf-8",
                  newline=None if binary else "") as fh:
            yield fh
        tmp.replace(path)
    except OSError as exc:
        if is_disk_error(exc):
            raise DiskError(path, exc) from exc
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _temporary_beside(path: Path) -> Path:
    """A temporary file name in ``path``'s directory, unique to this process, thread and call.

    Unique per call, not per process: a worker's periodic snapshot (on a thread) and its final
    write (on the loop) once shared ``.<name>.<pid>.tmp``, and the second rename found it gone.
    The file is then created by ``open``, so it gets the usual umask mode (mkstemp's is 0600).
    """
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}."
                          f"{next(_TEMP_SERIAL)}.tmp")


def close_reporting(fh: IO[Any], path: Path | str) -> DiskError | None:
    """Close a file opened for writing; the DiskError a full disk caused, or None."""
    close = fh.close
    try:
        close()
    except OSError as exc:
        if not is_disk_error(exc):
            raise
        # The buffered tail is lost; closing again releases the descriptor without retrying.
        with contextlib.suppress(OSError):
            close()
        return DiskError(path, exc)
    return None
