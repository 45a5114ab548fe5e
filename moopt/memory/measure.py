"""The measured peak memory of this process, and whether an exception was an out-of-memory.

One measurement for the trial (``peak_memory_gb`` in its metrics) and the memory probe, so that
what the probe measures is what a trial reports:

- ``cpu``: the peak resident set of this process (``VmHWM``, :func:`moopt.memory.rss.peak_rss_bytes`).
- ``cuda``: ``torch.cuda.max_memory_reserved()`` (the caching allocator's peak) plus the CUDA
  context, i.e. NVML's per-process used bytes less ``torch.cuda.memory_reserved()`` now (0 when NVML
  gives no figure).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from moopt.memory.rss import peak_rss_bytes

GIB = 1024**3


@dataclass(frozen=True)
class PeakMemory:
    peak_bytes: int  # cpu: peak RSS; cuda: max_reserved + context_bytes
    max_allocated: int = 0  # cuda: torch.cuda.max_memory_allocated(); cpu: 0 (no allocator statistics)
    max_reserved: int = 0  # cuda: torch.cuda.max_memory_reserved(); cpu: 0
    num_alloc_retries: int = 0  # cuda: memory_stats()["num_alloc_retries"]; > 0 means near the limit
    context_bytes: int = 0  # cuda: NVML used - memory_reserved() (CUDA context); cpu: 0


def measure_peak(device_type: str, nvml_baseline: int | None = None) -> PeakMemory:
    """The peak memory of this process so far on ``device_type`` ("cuda" or "cpu").
    ``nvml_baseline``: the device's used bytes before this process started, for NVML's device-level
    fallback when it lists no per-process figure (:func:`moopt.memory.nvml.process_used_bytes`)."""
    if device_type != "cuda":
        return PeakMemory(peak_bytes=peak_rss_bytes())
    import torch

    ctx = 0
    try:
        from moopt.memory.nvml import nvml_index, process_used_bytes

        used = process_used_bytes(os.getpid(), nvml_index(), nvml_baseline)
        if used:
            ctx = max(0, used - torch.cuda.memory_reserved())
    except Exception:  # no NVML (library, driver or bindings missing): no context figure
        ctx = 0
    max_reserved = torch.cuda.max_memory_reserved()
    return PeakMemory(peak_bytes=max_reserved + ctx, max_allocated=torch.cuda.max_memory_allocated(),
                      max_reserved=max_reserved,
                      num_alloc_retries=int(torch.cuda.memory_stats().get("num_alloc_retries", 0)), context_bytes=ctx)


def reset_peak(device_type: str) -> None:
    """Start a new peak from now (a warm worker's next trial): CUDA resets the allocator's peak
    statistics; Linux resets the process's VmHWM to its current RSS (``/proc/self/clear_refs``)."""
    if device_type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not allowed: the peak stays the process's own
        pass


def peak_memory_gb(device) -> float:
    """:func:`measure_peak`'s peak in GiB, the ``peak_memory_gb`` a trial reports; ``device``: a
    ``torch.device`` or its type."""
    return measure_peak(getattr(device, "type", device)).peak_bytes / GIB


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an out-of-memory: torch's ``OutOfMemoryError`` (CUDA), or a message saying so
    (CUDA errors raised as RuntimeError, the CPU allocator's "can't allocate memory")."""
    import torch

    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text
