"""Kernel-level thread names, so ``top -H``, ``/proc/<pid>/task`` and native profilers show
which of a process's threads is busy (Python before 3.14 leaves every thread named after the
process)."""

from __future__ import annotations

import ctypes
import sys

PR_SET_NAME = 15  # prctl(2)
MAX_NAME_BYTES = 15  # the kernel keeps 16 bytes, the last one NUL


def name_os_thread(name: str) -> None:
    """Give the calling thread the kernel name ``name`` (cut to 15 bytes). Linux only; elsewhere,
    or if the call is not available, nothing happens: a name is a convenience."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:MAX_NAME_BYTES]), 0, 0, 0)
    except (OSError, AttributeError):
        return
