"""GPU inventory and per-process memory through NVML (``nvidia-ml-py``, imported lazily).

Pitfalls handled:
- ``nvmlDeviceGetMemoryInfo`` v1 "used" includes ~300 MB the driver reserves; v2 is asked for with
  ``version=nvmlMemory_v2`` (the struct version constant, not the integer 2).
- Under MIG the memory that matters is the MIG instance's: its handles come from
  ``nvmlDeviceGetMigDeviceHandleByIndex``.
- Per-process lists may lack ``usedGpuMemory`` (None / NVML_VALUE_NOT_AVAILABLE) or show host PIDs
  inside a container: callers fall back to a device-level delta (used now - used before the child).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

NO_NVIDIA_SUFFIX = "memory is accounted on CPU (peak RSS)"


@dataclass(frozen=True)
class GpuInfo:
    index: int  # device index; for a MIG instance "parent index" stays in name
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int  # v2: excludes the driver's reserved memory; v1: includes it
    mig: bool = False
    uuid: str = ""  # "GPU-..." / "MIG-...": what CUDA_VISIBLE_DEVICES may name instead of the index

    def named_by(self, visible: str) -> bool:
        """Whether a CUDA_VISIBLE_DEVICES entry names this GPU: its index, or its UUID or a prefix of it (as CUDA
        takes)."""
        return visible == str(self.index) or (visible.startswith(("GPU-", "MIG-")) and self.uuid.startswith(visible))


def _nvml() -> Any:
    import pynvml  # provided by nvidia-ml-py

    pynvml.nvmlInit()
    return pynvml


def has_nvidia() -> tuple[bool, str]:
    """(True, "<n> GPU(s): ...") or (False, "NVML unavailable: <reason>; memory is accounted on CPU ...")."""
    try:
        nv = _nvml()
        count = nv.nvmlDeviceGetCount()
    except Exception as e:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
        reason = str(e) or type(e).__name__
        return False, f"NVML unavailable: {reason}; {NO_NVIDIA_SUFFIX}"
    if count == 0:
        return False, f"NVML unavailable: no NVIDIA GPU found; {NO_NVIDIA_SUFFIX}"
    return True, f"{count} NVIDIA GPU(s) visible through NVML"


def _memory_info(nv: Any, handle: Any) -> tuple[int, int, int]:
    """(total, free, used) with the v2 struct where the driver and bindings offer it."""
    v2 = getattr(nv, "nvmlMemory_v2", None)
    if v2 is not None:
        try:
            info = nv.nvmlDeviceGetMemoryInfo(handle, version=v2)
            return int(info.total), int(info.free), int(info.used)
        except TypeError:  # old bindings: no version keyword
            pass
        except nv.NVMLError:  # old driver: v2 not supported
            pass
    info = nv.nvmlDeviceGetMemoryInfo(handle)
    return int(info.total), int(info.free), int(info.used)


def _name(nv: Any, handle: Any) -> str:
    name = nv.nvmlDeviceGetName(handle)
    return name.decode() if isinstance(name, bytes) else str(name)


def _uuid(nv: Any, handle: Any) -> str:
    try:
        u = nv.nvmlDeviceGetUUID(handle)
    except Exception:  # old bindings or driver
        return ""
    return u.decode() if isinstance(u, bytes) else str(u)


def _mig_handles(nv: Any, handle: Any) -> list[Any]:
    try:
        current, _pending = nv.nvmlDeviceGetMigMode(handle)
    except Exception:  # not MIG-capable
        return []
    if current != getattr(nv, "NVML_DEVICE_MIG_ENABLE", 1):
        return []
    out = []
    for i in range(nv.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            out.append(nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, i))
        except Exception:  # empty slot
            continue
    return out


def gpu_inventory() -> list[GpuInfo]:
    """Every visible GPU, or every MIG instance of a GPU in MIG mode. Empty without NVML."""
    ok, _ = has_nvidia()
    if not ok:
        return []
    nv = _nvml()
    out: list[GpuInfo] = []
    for i in range(nv.nvmlDeviceGetCount()):
        handle = nv.nvmlDeviceGetHandleByIndex(i)
        migs = _mig_handles(nv, handle)
        for h, is_mig in ([(m, True) for m in migs] or [(handle, False)]):
            total, free, used = _memory_info(nv, h)
            out.append(GpuInfo(index=i, name=_name(nv, h), total_bytes=total, free_bytes=free, used_bytes=used, mig=is_mig,
                               uuid=_uuid(nv, h)))
    return out


def _process_lists(nv: Any, handle: Any) -> list[Any]:
    procs: list[Any] = []
    for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        try:
            procs += list(getattr(nv, fn)(handle))
        except Exception:
            continue
    return procs


def _device_handles(index: int) -> tuple[Any, list[Any]] | None:
    """(pynvml, the handles of device ``index``: its MIG instances, or the device itself); None without NVML."""
    ok, _ = has_nvidia()
    if not ok:
        return None
    nv = _nvml()
    handle = nv.nvmlDeviceGetHandleByIndex(index)
    return nv, _mig_handles(nv, handle) or [handle]


def process_used_bytes(pid: int, index: int = 0, baseline_used_bytes: int | None = None) -> int | None:
    """GPU memory of process ``pid`` on device ``index``.

    Per-process figure when NVML lists ``pid`` with a usable ``usedGpuMemory``. Otherwise (value
    missing, or the list shows host PIDs as inside a container) the device-level delta
    ``used - baseline_used_bytes`` when a baseline was taken before the process started; else None.
    """
    found = _device_handles(index)
    if found is None:
        return None
    nv, handles = found
    not_available = getattr(nv, "NVML_VALUE_NOT_AVAILABLE", None)
    for h in handles:
        for p in _process_lists(nv, h):
            used = getattr(p, "usedGpuMemory", None)
            if int(getattr(p, "pid", -1)) == int(pid) and used is not None and used != not_available:
                return int(used)
    if baseline_used_bytes is None:
        return None
    used_now = sum(_memory_info(nv, h)[2] for h in handles)
    return max(0, used_now - int(baseline_used_bytes))


def device_used_bytes(index: int = 0) -> int | None:
    """Device-level used bytes (summed over MIG instances), the baseline for process_used_bytes."""
    found = _device_handles(index)
    if found is None:
        return None
    nv, handles = found
    return sum(_memory_info(nv, h)[2] for h in handles)


def nvml_index(visible: str | None = None) -> int:
    """NVML's index of the GPU this process uses (or the first one ``visible`` names): NVML ignores
    CUDA_VISIBLE_DEVICES, which the executor sets to one GPU per slot, by index or UUID; 0 when unset or unknown."""
    first = (os.environ.get("CUDA_VISIBLE_DEVICES", "") if visible is None else visible).split(",")[0].strip()
    if first.isdigit():
        return int(first)
    if first.startswith(("GPU-", "MIG-")):
        return next((g.index for g in gpu_inventory() if g.named_by(first)), 0)
    return 0
