"""Processes a run starts die with the process that started them.

Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) makes the kernel send a signal to a
child when its parent dies, however it dies — ``kill -9`` included — so a crashed launcher never
leaves its broker and workers running. Elsewhere this does nothing, and says so once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
_LINUX = sys.platform.startswith("linux")
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True) if _LINUX \
    else None
"""Loaded once here, so that the child-side hook below only makes one system call."""


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies; True if it will."""
    if _libc is None:
        log.warning("no parent-death signal on %s: this process outlives its launcher",
                    sys.platform)
        return False
    if _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def pdeathsig_in_child() -> None:
    """``preexec_fn`` for a child process: one prctl call, nothing that takes a lock."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def exit_if_orphaned(expected_parent: int) -> None:
    """Close the race in which the parent died before :func:`die_with_parent` was called."""
    if os.getppid() != expected_parent:
        os.kill(os.getpid(), signal.SIGTERM)
