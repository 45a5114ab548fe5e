"""Peak resident set size of this process, in bytes.

Linux keeps ``ru_maxrss`` across ``execve``: a worker forked from a big parent (a pytest run, a study
with plots in memory) would report the parent's peak. ``VmHWM`` in /proc/self/status belongs to the
process's own address space, which exec replaces, so it is the figure to use; ``ru_maxrss`` is the
fallback elsewhere.
"""

from __future__ import annotations

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
