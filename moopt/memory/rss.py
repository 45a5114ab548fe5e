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


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def current_rss_bytes() -> int:
    """This process's resident set size now (``VmRSS``); 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def trim_heap() -> bool:
    """Give the C heap's free memory back to the system (glibc ``malloc_trim(0)``): tensors freed by
    a finished trial otherwise stay in the process's arenas, counted in its RSS and unavailable to
    the other trials' processes. False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
