"""Resident set size of this process (peak and current), in bytes, and giving freed heap back.

Linux keeps ``ru_maxrss`` across ``execve``: a worker forked from a big parent (a pytest run, a study
with plots in memory) would report the parent's peak. ``VmHWM`` in /proc/self/status belongs to the
process's own address space, which exec replaces, so it is the figure to use; ``ru_maxrss`` is the
fallback elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import resource

# glibc mallopt parameters (malloc.h) and the values :func:`steady_heap` fixes
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
STEADY_MMAP_THRESHOLD_BYTES = 4 << 20
STEADY_TRIM_THRESHOLD_BYTES = 8 << 20  # twice the mmap threshold, as glibc's own dynamic rule sets it
STEADY_HEAP_ENV = "MOOPT_STEADY_HEAP"  # "1": a child process calls steady_heap at start (steady_heap_if_asked)


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


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def trim_heap() -> bool:
    """Give the C heap's free memory back to the system (glibc ``malloc_trim(0)``): tensors freed by
    a finished trial otherwise stay in the process's arenas, counted in its RSS and unavailable to
    the other trials' processes. False where there is no glibc."""
    try:
        return bool(_libc().malloc_trim(0))
    except AttributeError:
        return False


_steady = False  # steady_heap() applied in this process


def trim_heap_if_steady() -> None:
    """:func:`trim_heap` in a process whose peak RSS is compared with a budget (:func:`steady_heap`
    applied): called as each evaluation starts (moopt.train.recipe.evaluate, and the probe's), in trials
    and probes alike. Training's batches come in many shapes and leave the heap's freed pages resident
    in holes that the evaluation's differently shaped tensors did not fit, so the evaluation's peak sat
    on top of training's: the guide's memory-constrained trial 0 (SmolLM2 bf16, batch 8, 38 steps, kernel
    caches bounded, fresh processes) peaked 1012 and 1024 MiB, 28-36 above training's own; with this
    trim, 977 and 980 (training's peak), at no cost in tokens/s. A trim after every step took it to 959
    and 961 but cost 15-20% of tokens/s on those short batches (0.82x at 4 x 512 in
    bench_steady_heap.py), so it is not done; a trim every 8 steps changed nothing (1011-1014)."""
    if _steady:
        trim_heap()


def steady_heap() -> bool:
    """Make this process's peak RSS a property of what it computes, not of the order its tensors were
    freed in: fix glibc's mmap threshold at 4 MiB (its trim threshold at 8 MiB).

    By default glibc raises the threshold to the size of each mmap'd block that is freed (up to 32 MiB),
    so after the first steps most tensors come from the heap, and how far the heap grows depends on how
    the frees of steps of varying shape interleave. The same trial (SmolLM2, bf16, batch 4, 12 steps),
    run ten times in a fresh process with the same seed, peaked at 0.964-0.968 GiB seven times and at
    1.075-1.097 GiB three times (the jump is in the final evaluation); with the thresholds fixed, five
    runs peaked at 0.962-0.963 GiB, and a batch-16 trial at 1.451-1.463 GiB (three runs) against
    1.444-1.541 (six). Tensors of 4 MiB and more are then
    mapped and unmapped every time: training tokens/s 0.99x at 8 x 128 and 0.93x at 4 x 512 tokens (fully
    labelled, bf16, all linears; benchmarks/bench_steady_heap.py). So only the processes whose peak RSS is
    compared with a budget use it: a study's CPU trials under ``--memory_constraint`` (or with
    ``peak_memory_gb`` as an objective) and the gate's CPU probes, so that a probe and a trial of the same
    configuration measure alike.

    Left alone where the user chose malloc's behaviour (``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_`` or a ``glibc.malloc`` tunable in ``GLIBC_TUNABLES``). True when applied;
    False there or without glibc."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ \
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    global _steady
    try:
        libc = _libc()
        _steady = bool(libc.mallopt(_M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD_BYTES)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, STEADY_TRIM_THRESHOLD_BYTES))
    except AttributeError:
        return False
    return _steady


def steady_heap_if_asked() -> bool:
    """:func:`steady_heap` when the parent asked for it (``STEADY_HEAP_ENV`` is "1"): a trial's worker and
    the gate's probe call this first thing."""
    return os.environ.get(STEADY_HEAP_ENV) == "1" and steady_heap()


# oneDNN's primitive cache and ideep's (PyTorch's oneDNN wrapper) LRU cache of matmul primitives: each
# distinct input shape of a bf16 linear on a CPU gets JIT-compiled kernels and buffers that both caches
# keep, up to 1024 entries each by default. A trial's batches come in many shapes (examples of varied
# length, padded to the longest of each batch), so its RSS grew with every new shape: SmolLM2 bf16, 3
# steps at 2 x 256, then 60 steps of distinct shorter lengths: peak 1344 -> 2284 MiB (+940); fp32 (MKL's
# sgemm, no per-shape kernels) +9 MiB. Bounded at 64 entries each, 140 such shapes added 95 MiB and
# stopped growing; a trial on data/longtail (bf16, 4 x <=512, 75 steps) peaked at 1847 MiB instead of
# 2543, in 66 s instead of 71 s. A step of one shape uses ~20 primitives, so 64 keeps its forward and
# backward; LRU_CACHE_CAPACITY=0 crashes, and oneDNN's cache at 16 halved a trial's speed (b1, 21 lengths).
KERNEL_CACHE_CAPACITY = 64
KERNEL_CACHE_ENV = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_kernel_caches(env: dict | None = None) -> None:
    """Bound oneDNN's and ideep's per-shape kernel caches (``KERNEL_CACHE_CAPACITY`` entries each) in
    ``env`` (default: this process's environment, read when torch runs its first CPU matmul, so calling
    this after ``import torch`` still works). A value the user set is kept."""
    env = os.environ if env is None else env
    for name in KERNEL_CACHE_ENV:
        env.setdefault(name, str(KERNEL_CACHE_CAPACITY))
