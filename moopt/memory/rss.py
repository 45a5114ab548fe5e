"""Resident set size of this process (peak and current), in bytes, and giving freed heap back.

Linux keeps ``ru_maxrss`` across ``execve``: a worker forked from a big parent (a pytest run, a study
with plots in memory) would report the parent's peak. ``VmHWM`` in /proc/self/status belongs to the
process's own address space, which exec replaces, so it is the figure to use; ``ru_maxrss`` is the
fallback elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource


def _status_bytes(key: str) -> int | None:
    """A ``kB`` line of /proc/self/status (``VmHWM``, ``VmRSS``) in bytes; None where it is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def current_rss_bytes() -> int:
    """This process's resident set size now (``VmRSS``); 0 where /proc is missing."""
    return _status_bytes("VmRSS") or 0


def trim_heap() -> bool:
    """Give the C heap's free memory back to the system (glibc ``malloc_trim(0)``): tensors freed by
    a finished trial otherwise stay in the process's arenas, counted in its RSS and unavailable to
    the other trials' processes. False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
