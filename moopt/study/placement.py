"""Where each trial runs: CPU slots that split the cores, or GPUs that take trials by their memory
estimate (several on one device when their estimates fit, never over it).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


def usable_cores(cgroup: str | Path = "/sys/fs/cgroup") -> int:
    """The CPU cores this process may use: those of its affinity mask (a SLURM job's or ``taskset``'s cpuset,
    where ``os.cpu_count()`` says the whole node's), at most its cgroup's CPU quota (a container's
    ``--cpus``: cgroup v2 ``cpu.max``, v1 ``cpu/cpu.cfs_quota_us``), rounded up. On a 128-core node with 8
    cores granted, trials took 128 threads between them and ran oversubscribed."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    root = Path(cgroup)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = ((root / "cpu" / f).read_text().strip() for f in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
        except OSError:
            quota, period = "max", "1"
    try:
        if quota not in ("max", "-1") and float(period) > 0:
            cores = min(cores, max(1, math.ceil(float(quota) / float(period))))
    except ValueError:
        pass
    return max(1, cores)


@dataclass(frozen=True)
class Slot:
    """Where a trial runs: a CUDA device id (None on CPU) and how many CPU threads it may use."""

    device: str  # "cpu" or "cuda:<id>"
    threads: int
    gpu_share: float = 1.0  # Ray: the fraction of a GPU the trial asks for (its estimate over the smallest GPU's room)
    gpu_kind: str | None = None  # Ray: the kind of GPU it must run on (``accelerator_type``), where only the larger fit


class DevicePlacer:
    """Where the next trial runs.

    CPU: up to ``parallel`` trials, the cores split between them. GPUs: the visible device with the
    most room whose capacity (95% of its memory, minus the estimates of the trials already on it)
    holds the trial's estimated peak; several trials share a GPU when their estimates fit, never
    more. ``place`` returns None when no device has room now (the study waits for a trial to end).
    """

    HEADROOM = 0.95  # keep 5% of each GPU free: context growth, fragmentation

    def __init__(self, parallel: int, gpus: list[tuple[str, float]] | None = None):
        self.parallel = parallel
        self.gpus = dict(gpus if gpus is not None else _gpu_capacities())  # id -> GiB
        self.cores = usable_cores()
        self.placed: dict[int, tuple[str, float]] = {}  # trial number -> (device, GiB reserved)

    @property
    def on_gpu(self) -> bool:
        return bool(self.gpus)

    def largest_placeable(self) -> float:
        """GiB of the largest GPU a trial can be placed on: here, the largest visible (trials are placed by memory)."""
        return max(self.gpus.values(), default=0.0)

    def free(self) -> int:
        return self.parallel - len(self.placed)

    def place(self, number: int, need_gb: float | None = None) -> Slot | None:
        if self.free() <= 0:
            return None
        threads = max(1, self.cores // self.parallel)
        if not self.gpus:
            self.placed[number] = ("cpu", 0.0)
            return Slot("cpu", threads)
        need, room = need_gb or 0.0, self.room()
        gpu = self._most_room(need, room)
        if gpu is None:
            if self.placed:
                return None  # wait for a trial to end
            gpu = max(self.gpus, key=lambda g: room[g])  # alone on the largest: its own OOM tells
        self.placed[number] = (gpu, need)
        return Slot(f"cuda:{gpu}", threads)

    def release(self, number: int) -> None:
        self.placed.pop(number, None)

    def probe_device(self, need_gb: float, alone: bool = False) -> str | None:
        """The GPU a memory probe of up to ``need_gb`` (the gate's budget) runs on now: the one with the most room
        left beside the trials placed there (:meth:`room`) that holds it; where no GPU's room could, the largest
        once no trial is on it. None while the trials leave no GPU that room: a probe that ran out of memory beside
        them would rule its configuration out for good (the gate caches an OOM), though it fits the budget on a
        GPU of its own. ``alone`` (a configuration that ran out of memory beside others): only a GPU no trial is
        on, the largest of those."""
        busy = {dev for dev, _ in self.placed.values()}
        if alone:
            return max((g for g in self.gpus if g not in busy), key=lambda g: self.gpus[g], default=None)
        gpu = self._most_room(need_gb, self.room())
        if gpu is not None:
            return gpu
        # a budget above every GPU's room: the largest, once no trial is on it
        largest = max(self.gpus, key=lambda g: self.gpus[g], default=None)
        return largest if largest is not None and largest not in busy else None

    def on(self, gpu: str) -> list[int]:
        """The trials placed on GPU ``gpu`` now."""
        return sorted(n for n, (dev, _) in self.placed.items() if dev == gpu)

    def _most_room(self, need_gb: float, room: dict[str, float]) -> str | None:
        """The GPU with the most room of those whose room holds ``need_gb``; None if none does."""
        fits = [g for g in self.gpus if room[g] >= need_gb]
        return max(fits, key=lambda g: room[g]) if fits else None

    def room(self) -> dict[str, float]:
        """GiB each GPU has left: 95% of its memory less the estimates of the trials placed on it."""
        room = {g: self.gpus[g] * self.HEADROOM for g in self.gpus}
        for dev, gb in self.placed.values():
            if dev in room:
                room[dev] -= gb
        return room


class ClusterPlacer(DevicePlacer):
    """Where a Ray trial runs, from the cluster's live nodes (``ray.nodes()``' resources), not this machine's: the
    driver may be a head node without GPUs, whose placer would have sent every trial to a CPU. Ray picks the node
    and the GPU (the trial asks for ``num_gpus``); this says whether trials go on GPUs (any node has one) and with
    how many CPU threads: a GPU node's CPUs per GPU (the fewest of the GPU nodes), or on a CPU cluster the cores
    split ``parallel`` ways, at most one node's (a task asking more than any node has would never be scheduled).

    ``gpu_gib``: the memory of each GPU of the cluster (``RayExecutor.gpu_memory``; Ray's resources say only how
    many). With it a trial asks for the share of a GPU its estimate needs of the smallest GPU's room (95%), so Ray
    puts several on one GPU when they fit, as the local placer does, and never more than fit on any GPU; a trial
    larger than the smallest GPU's room goes to the smallest kind of GPU that holds it (Ray's ``accelerator_type``,
    e.g. ``A100``; a kind's room is that of its smallest GPU, as A100s of 40 and 80 GiB are both ``A100``), where it
    asks for its share of that kind; on a cluster of one kind, or where no kind is known to hold it, for a whole
    GPU. Each trial takes its share of the CPUs per GPU as threads. Without the sizes each trial asks for a whole
    GPU, anywhere.

    ``gpu_gib``: a GiB figure per GPU, or (GiB, kind) pairs (``kind`` None where the node's is unknown)."""

    def __init__(self, parallel: int, nodes: list[dict], gpu_gib: list | None = None):
        self.parallel = parallel
        self.placed = {}
        gpus = [(g, None) if isinstance(g, (int, float)) else (float(g[0]), g[1]) for g in gpu_gib or []]
        self.gpus = {str(i): gib for i, (gib, _) in enumerate(gpus)}  # GiB of each GPU in the cluster, if known
        self.kind_room: dict[str, float] = {}  # a kind of GPU -> the room of its smallest GPU
        for gib, kind in gpus:
            if kind:
                self.kind_room[kind] = min(self.kind_room.get(kind, math.inf), gib * self.HEADROOM)
        gpu_nodes = [r for r in nodes if r.get("GPU", 0) >= 1]
        self.cluster_gpu = bool(gpu_nodes)
        self.cores = max(1, int(sum(r.get("CPU", 0) for r in nodes)))  # the cluster's, all nodes together
        if gpu_nodes:
            self.threads = max(1, int(min(r.get("CPU", 1) / r["GPU"] for r in gpu_nodes)))
        else:
            one_node = max((int(r.get("CPU", 1)) for r in nodes), default=1)
            self.threads = max(1, min(self.cores // parallel, one_node))

    @property
    def on_gpu(self) -> bool:
        return self.cluster_gpu

    def share(self, need_gb: float | None) -> float:
        """The fraction of a GPU a trial of ``need_gb`` asks Ray for: of the smallest GPU's room (or of its kind's,
        :meth:`fit`), rounded up to a hundredth (Ray's fractional resources take a few decimals); 1 when the sizes or
        the need are unknown."""
        return self.fit(need_gb)[0]

    def largest_placeable(self) -> float:
        """GiB of the largest GPU Ray can be asked to put a trial on: the smallest GPU's (any GPU will do) or, where a
        kind's GPUs are all larger, that kind's smallest. On A100s of 40 and 80 GiB (both ``A100``) a whole-GPU ask
        may land on a 40: 80 GiB minus the headroom passed the budget, and the trial ran out of memory there."""
        if not self.gpus:
            return 0.0
        return max([min(self.gpus.values()), *(room / self.HEADROOM for room in self.kind_room.values())])

    def fit(self, need_gb: float | None) -> tuple[float, str | None]:
        """(share, kind): where a trial of ``need_gb`` fits every GPU's room, a share of the smallest and any kind;
        else the smallest kind of GPU whose room holds it and the share of that room; else a whole GPU, any kind."""
        if not self.gpus or not need_gb:
            return 1.0, None
        room, kind = min(self.gpus.values()) * self.HEADROOM, None
        if need_gb > room:
            holds = sorted((r, k) for k, r in self.kind_room.items() if r >= need_gb)
            if not holds:
                return 1.0, None
            room, kind = holds[0]
        return min(1.0, max(0.01, math.ceil(need_gb / room * 100) / 100)), kind

    def place(self, number: int, need_gb: float | None = None) -> Slot | None:
        if self.free() <= 0:
            return None
        if not self.cluster_gpu:
            self.placed[number] = ("cpu", 0.0)
            return Slot("cpu", self.threads)
        self.placed[number] = ("cuda", 0.0)
        # a trial on a share of a GPU takes that share of the CPUs per GPU, so CPUs never hold back the packing
        share, kind = self.fit(need_gb)
        return Slot("cuda", max(1, int(self.threads * share)), share, kind)


def plan_slots(parallel: int) -> list[Slot]:
    """N slots without memory estimates: round-robin over visible GPUs, or the CPU cores split N ways."""
    cores = usable_cores()
    gpus = [i for i, _ in _gpu_capacities()]  # GPUs this torch can use (a CPU build: none, whatever NVML sees)
    if gpus:
        return [Slot(f"cuda:{gpus[i % len(gpus)]}", max(1, cores // parallel)) for i in range(parallel)]
    return [Slot("cpu", max(1, cores // parallel)) for _ in range(parallel)]


def torch_has_cuda() -> bool:
    """Whether this torch was built with CUDA (a CPU wheel was not: its trials run on the CPU whatever GPUs NVML
    sees). Asked of the build, not the driver: nothing is initialised in the study's process."""
    import torch

    return bool(torch.backends.cuda.is_built())


def idle_gpus_note() -> str | None:
    """A note where NVML sees GPUs this torch cannot use (a CPU build), else None."""
    if torch_has_cuda():
        return None
    try:
        from moopt.memory.nvml import gpu_inventory

        n = len({g.index for g in gpu_inventory()})  # the GPUs NVML sees (not CUDA_VISIBLE_DEVICES' names)
    except Exception:  # noqa: BLE001 (a note only: an NVML error here must not stop a CPU study)
        return None
    if not n:
        return None
    import torch

    return (f"this machine has {n} NVIDIA GPU(s), but this torch ({torch.__version__}) was built without CUDA: "
            "trials run on the CPU; install a CUDA build of torch (pytorch.org) to train on them")


def _gpu_capacities() -> list[tuple[str, float]]:
    """(CUDA id, GiB) of the visible GPUs, through NVML; [] without an NVIDIA driver, or with a torch built without
    CUDA (the trials could not use them). CUDA_VISIBLE_DEVICES may name a GPU by index or by UUID (or a UUID's
    unique prefix, as CUDA accepts): matched on both."""
    if not torch_has_cuda():  # before NVML: a CPU build trains on the CPU whatever NVML says or fails to say
        return []
    ids = _visible_gpus()
    if not ids:
        return []
    from moopt.memory.nvml import gpu_inventory

    gpus = _nvml_call(gpu_inventory)  # [] without NVML; an error past that is said, not taken for "no GPU"
    named = {i: next((g for g in gpus if g.named_by(i)), None) for i in ids}
    return [(i, g.total_bytes / 2**30) for i, g in named.items() if g is not None]


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    from moopt.memory.nvml import gpu_inventory

    return [str(g.index) for g in _nvml_call(gpu_inventory)]  # [] without NVML


def _nvml_call(fn):
    """``fn()``, an NVML query: an NVML error (a GPU fallen off the bus, a driver mismatch) is one ConfigError line
    naming it, not a traceback, nor taken for "no GPU" (the study would plan for the CPU on a GPU machine)."""
    from moopt.errors import ConfigError

    try:
        return fn()
    except Exception as e:  # noqa: BLE001 (pynvml.NVMLError and its many subclasses, imported only with NVML)
        if type(e).__name__.startswith("NVMLError"):
            raise ConfigError(f"NVML: querying the GPUs failed ({e}); check the driver with nvidia-smi, or hide the GPUs "
                              "with CUDA_VISIBLE_DEVICES= to run on the CPU") from None
        raise
