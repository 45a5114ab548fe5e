"""Ray executor: trials as Ray tasks, on a local Ray instance or a multi-node cluster.

Same contract as :class:`moopt.study.executor.LocalExecutor` (``submit``, ``next_result``, ``running``,
``kill``, ``kill_all``, ``stalled``). Each trial is a Ray task with ``max_calls=1``, so it gets a fresh worker process
(a crash or OOM kills only that trial) and asks Ray for ``num_cpus`` = the slot's threads and, on
GPUs, ``num_gpus`` = the fraction of a device its memory estimate needs (the slot's ``gpu_share``, from
:meth:`RayExecutor.gpu_memory`), so Ray packs trials onto GPUs by memory; on a cluster of mixed GPUs a trial
larger than the smallest asks for a kind of GPU that holds it (Ray's ``accelerator_type``). Progress and rung decisions
travel through one small actor (``_Channel``): the task pushes events, a driver thread drains them and
answers rungs. Paths in the trial spec (model, data, output_dir) must be visible on every node (a shared
filesystem). The stall watchdog judges a task from its first event on, not from submit: a task may wait
in Ray's queue for resources; a stalled one is cancelled with ``ray.cancel(force=True)`` (its worker
process is killed).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from moopt.records import TrialResult, TrialSpec, TrialState
from moopt.study.executor import ExecutorBase


def _ray():
    try:
        import ray
    except ImportError:
        from moopt.errors import ConfigError

        raise ConfigError("--executor ray needs Ray: pip install 'moopt[ray]'") from None
    return ray


ACCELERATOR = "accelerator_type:"  # Ray's resource on a node whose GPUs are of one kind, e.g. accelerator_type:A100


def node_gpu_kind(resources: dict) -> str | None:
    """The kind of a node's GPUs, as Ray names it (``A100``, ``H100``), from its resources; None if not one."""
    kinds = [k[len(ACCELERATOR):] for k in resources if k.startswith(ACCELERATOR)]
    return kinds[0] if len(kinds) == 1 else None


def largest_kind(gpus: list[tuple[float, str | None]]) -> str | None:
    """The kind of the cluster's largest GPU where GPUs of another kind are smaller (on one kind any GPU will do);
    None where it is unknown or not needed."""
    if not gpus:
        return None
    gib, kind = max(gpus, key=lambda g: (g[0], g[1] or ""))
    return kind if any(g < gib and k != kind for g, k in gpus) else None


def check_ray_address(address: str | None, option: str = "--ray_address") -> None:
    """One ConfigError, within seconds, where no Ray cluster answers at ``--ray_address`` (host:port, ray://host:port or
    auto): ``ray.init`` retried an address that answers nothing for as long as it was let, through Ctrl-C. Checked
    before the study writes anything."""
    import socket

    from moopt.errors import ConfigError

    if not address:
        return
    target = address.removeprefix("ray://")
    if address == "auto" or ":" not in target:
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die
        except ImportError:  # Ray moved its private helper: ray.init says what it says
            return
        try:
            target = canonicalize_bootstrap_address_or_die(address)
        except (ConnectionError, ValueError) as e:
            raise ConfigError(f"{option} {address}: {(str(e).splitlines() or [''])[0]}") from None
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            pass
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise ConfigError(f"{option} {address}: no Ray cluster answers at {target} ({why}); start one with "
                          "`ray start --head`, or " + ("leave --ray_address out" if option == "--ray_address" else f"unset {option}")
                          + " for a local Ray instance") from None


def _on_kind(kind: str | None) -> dict:
    """Ray task options that pin it to GPUs of ``kind`` (none where ``kind`` is None)."""
    return {"accelerator_type": kind} if kind else {}


def _node_gpu_gib() -> list[float]:
    """GiB of each NVIDIA GPU Ray may hand out on the node this runs on, through NVML; [] without a driver. Ray's
    GPUs are those of the raylet's CUDA_VISIBLE_DEVICES where ``ray start`` ran under one (a task asking for no GPU
    keeps it in recent Rays), by index or UUID, in its order; else all NVML sees. An empty one is what older Rays set
    in every task that asks for no GPU (as this one does), not the node's: all NVML sees, then (a node Ray gives no
    GPU is never asked)."""
    import os

    try:
        from moopt.memory.nvml import gpu_inventory

        gpus = gpu_inventory()
    except Exception:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        named = [next((g for g in gpus if g.named_by(v.strip())), None) for v in visible.split(",") if v.strip()]
        gpus = [g for g in named if g is not None]
    return [g.total_bytes / 2**30 for g in gpus]


class RayExecutor(ExecutorBase):
    def __init__(self, on_progress: Callable | None = None, on_rung: Callable | None = None,
                 address: str | None = None, stall=None, steady_heap: bool = False):
        super().__init__(on_progress, on_rung, stall)
        self.steady_heap = steady_heap  # CPU trials fix glibc's malloc thresholds, as LocalExecutor's do
        ray = _ray()
        self.ray = ray
        if not ray.is_initialized():
            import logging
            import os

            from moopt.errors import ConfigError
            from moopt.study.placement import usable_cores

            os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no ANSI codes in a log file from Ray's "(raylet)" lines
            # a local instance gets the cores this process may use (a cpuset, a SLURM allocation), not the node's; not
            # where RAY_ADDRESS names a cluster to join (ray.init refuses num_cpus there)
            kwargs = {"address": address} if address else {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": usable_cores()}
            try:  # logging_level: without Ray's start-up INFO/WARNING lines on the study's console
                ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR, **kwargs)
            except ConnectionError as e:  # --ray_address auto with no cluster: was a 48-line traceback
                where = f"--ray_address {address}" if address else f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS', '')}"
                raise ConfigError(f"{where}: {(str(e).splitlines() or [''])[0]}") from None
        self.channel = ray.remote(_Channel).options(num_cpus=0).remote()
        self.probe_kind: str | None = None  # the kind of GPU a probe asks for (gpu_memory), on a mixed cluster
        # the GPUs each running GPU trial holds, as its task reports them (node id, GPU ids); None until it has
        self.gpus_held: dict[int, tuple[str, tuple[str, ...]] | None] = {}
        self._stop = False
        self._task = None
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def nodes(self) -> list[dict]:
        """The resources (``CPU``, ``GPU``, ...) of each live node of the cluster: where trials can run."""
        return [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]

    def gpu_memory(self, reader: Callable[[], list[float]] | None = None,
                   timeout_s: float = 120) -> list[tuple[float, str | None]]:
        """(GiB, kind) of each GPU of the cluster (Ray's resources say only how many, and of which kind): the GiB
        read through NVML on each GPU node by a task pinned to it that asks for no CPU and no GPU, so it runs even
        where trials fill the node; the kind is the node's ``accelerator_type`` (None if Ray names none, or several).
        A node that does not answer within ``timeout_s`` (or has no NVIDIA driver) is left out: [] when none answers.
        From then on a probe (:meth:`call` with ``num_gpus``) asks for the kind of the largest GPU, where a
        configuration that runs out of memory runs out on every GPU of the cluster."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = self.ray.remote(max_retries=0)(reader or _node_gpu_gib)
        nodes = [n for n in self.ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) >= 1]
        refs = [task.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
                for n in nodes]
        ready, late = self.ray.wait(refs, num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
        for ref in late:
            self.ray.cancel(ref, force=True)
        gpus = []
        for node, ref in zip(nodes, refs):
            if ref not in ready:
                continue
            try:
                # as many as Ray gives trials there (``ray start --num-gpus 2`` on a node of 8 holds 2), from the first
                gpus += [(float(g), node_gpu_kind(node["Resources"]))
                         for g in self.ray.get(ref)[:int(node["Resources"]["GPU"])]]
            except Exception:  # the node went away, or its NVML failed: its GPUs stay unknown
                pass
        self.probe_kind = largest_kind(gpus)
        return gpus

    def call(self, fn: Callable, *args, num_gpus: float = 0, num_cpus: float = 1, **kwargs):
        """``fn(*args, **kwargs)`` as a one-off Ray task in a fresh worker process where the cluster has
        ``num_gpus`` and ``num_cpus`` free (the memory gate's probes: on the kind of node trials run on, which
        this machine may not be); blocks until it returns its result (raises what the task raised). With
        ``num_gpus`` on a cluster of mixed GPUs, on the kind of its largest (:meth:`gpu_memory`)."""
        task = self.ray.remote(max_calls=1, max_retries=0)(fn).options(
            num_cpus=num_cpus, num_gpus=num_gpus, **_on_kind(self.probe_kind if num_gpus else None))
        return self.ray.get(task.remote(*args, **kwargs))

    def probe_room(self) -> bool:
        """Whether the cluster has a whole GPU free now, what a probe (:meth:`call` with ``num_gpus``) asks for:
        while the study's trials hold a share of each, the study waits for one to end rather than block on the
        probe (Ray's figure lags the cluster by a moment: the probe may still wait a little).
        On a cluster of mixed GPUs the probe asks for :attr:`probe_kind`: only a node of that kind with a whole GPU
        free counts (a free smaller GPU would leave the probe blocked on Ray).
        Ray's free figure adds up fractions (two GPUs, each half-held by a trial, read as one GPU free), so a GPU
        counts as free only where the study's own trials (each reports the GPUs it holds, :attr:`gpus_held`) leave
        one of the node's GPUs untouched, a trial that has not reported yet counting as one on every node."""
        whole = 1 - 1e-6
        if self.ray.available_resources().get("GPU", 0.0) < whole:
            return False
        try:  # Ray has no public per-node figure of what is free
            from ray._private.state import available_resources_per_node

            free = available_resources_per_node()
        except Exception:  # another Ray version: the cluster's total
            free = None
        with self._lock:
            held = dict(self.gpus_held)
        unknown = sum(1 for v in held.values() if v is None)
        for node in self.ray.nodes():
            res = node.get("Resources", {})
            if not node.get("Alive") or res.get("GPU", 0) < 1:
                continue
            if self.probe_kind is not None and node_gpu_kind(res) != self.probe_kind:
                continue
            if free is not None and free.get(node["NodeID"], {}).get("GPU", 0.0) < whole:
                continue
            mine = {g for v in held.values() if v is not None and v[0] == node["NodeID"] for g in v[1]}
            if int(res["GPU"]) - len(mine) - unknown >= 1:
                return True
        return False

    def submit(self, spec: TrialSpec, slot) -> None:
        on_gpu = slot.device.startswith("cuda")
        spec.device = "cuda" if on_gpu else "cpu"
        spec.threads = slot.threads
        if self._task is None:
            self._task = self.ray.remote(max_calls=1, max_retries=0)(_run_trial_task)
        task = self._task.options(num_cpus=slot.threads, num_gpus=slot.gpu_share if on_gpu else 0,
                                  **_on_kind(slot.gpu_kind if on_gpu else None))
        ref = task.remote(spec.to_json(), self.channel, self.steady_heap and not on_gpu)
        with self._lock:
            self.active[spec.number] = ref
            if on_gpu:
                self.gpus_held[spec.number] = None  # until its task says which
        threading.Thread(target=self._wait, args=(spec, ref), daemon=True).start()

    def _wait(self, spec: TrialSpec, ref) -> None:
        try:
            result = TrialResult(**self.ray.get(ref))
        except Exception as e:  # worker crash, OOM kill, cancelled (TaskCancelledError's text is empty)
            first = (str(e).splitlines() or [""])[0][:300]
            error = f"ray task failed: {type(e).__name__}: {first}"
            oom = isinstance(e, getattr(self.ray.exceptions, "OutOfMemoryError", ())) or "out of memory" in error.lower()
            result = TrialResult(number=spec.number, state=TrialState.FAIL, error=error, oom=oom)
        with self._lock:
            self.active.pop(spec.number, None)
            self.gpus_held.pop(spec.number, None)
        self._finish(result)

    def _pump(self) -> None:
        """Drain the channel: progress to the hook, rung questions answered by the study."""
        while not self._stop and self.ray.is_initialized():
            try:
                events = self.ray.get(self.channel.pop_events.remote())
            except Exception:
                return
            for ev in events:
                if ev["event"] in ("progress", "phase", "heartbeat"):
                    self._event(ev.pop("number"), ev)
                elif ev["event"] == "placed":
                    with self._lock:
                        if ev["number"] in self.gpus_held:  # (not ended meanwhile)
                            self.gpus_held[ev["number"]] = (ev["node"], tuple(ev["gpus"]))
                elif ev["event"] == "rung":
                    go = self._rung(ev["number"], ev["step"], ev["metrics"], ev["rung"])
                    self.channel.set_reply.remote(f"{ev['number']}:{ev['step']}", go)
            time.sleep(0.1)

    def kill(self, number: int) -> None:
        with self._lock:
            ref = self.active.get(number)
        if ref is not None:
            self.ray.cancel(ref, force=True)

    def kill_all(self) -> None:
        with self._lock:
            numbers = list(self.active)
        for n in numbers:
            self.kill(n)

    def close(self) -> None:
        """Stop the event pump before Ray may be shut down (a call after shutdown makes Ray's core
        worker wait for its GCS and then abort the process)."""
        self._stop = True
        if self._pump_thread.is_alive():
            self._pump_thread.join(timeout=5)


class _Channel:
    """A Ray actor: events from tasks, replies to their rung questions."""

    def __init__(self):
        self.events, self.replies = [], {}

    def push_event(self, ev: dict) -> None:
        self.events.append(ev)

    def pop_events(self) -> list[dict]:
        out, self.events = self.events, []
        return out

    def set_reply(self, key: str, go: bool) -> None:
        self.replies[key] = go

    def get_reply(self, key: str):
        return self.replies.pop(key, None)


class _ChannelReporter:
    def __init__(self, channel, number: int):
        import ray

        self.ray, self.channel, self.number = ray, channel, number
        self.last_beat = 0.0

    def progress(self, step, total, loss, tokens_per_s=None, step_s=None):
        self.channel.push_event.remote({"event": "progress", "number": self.number, "step": step, "total": total,
                                        "loss": loss, "tokens_per_s": tokens_per_s, "step_s": step_s})

    def phase(self, name, detail=""):
        self.channel.push_event.remote({"event": "phase", "number": self.number, "phase": name, "detail": detail})

    def heartbeat(self, done, total):
        from moopt.train.worker import HEARTBEAT_S

        now = time.monotonic()
        if now - self.last_beat >= HEARTBEAT_S or done == total:
            self.last_beat = now
            self.channel.push_event.remote({"event": "heartbeat", "number": self.number, "done": done, "total": total})

    def rung(self, step, metrics, rung):
        self.channel.push_event.remote({"event": "rung", "number": self.number, "step": step, "metrics": metrics,
                                        "rung": rung})
        key = f"{self.number}:{step}"
        while True:
            go = self.ray.get(self.channel.get_reply.remote(key))
            if go is not None:
                return go
            time.sleep(0.1)


def report_placement(channel, number: int) -> None:
    """From a trial's task: the node and GPU ids Ray gave it (RayExecutor.probe_room counts whole free GPUs)."""
    import ray

    channel.push_event.remote({"event": "placed", "number": number, "node": ray.get_runtime_context().get_node_id(),
                               "gpus": [str(g) for g in ray.get_gpu_ids()]})


def _run_trial_task(spec_json: dict, channel, steady_heap: bool = False) -> dict:
    """One trial in a Ray worker process (``max_calls=1``: a fresh one per trial). ``steady_heap``: the
    trial's peak RSS is compared with a budget; fix glibc's malloc thresholds first
    (moopt.memory.rss.steady_heap; later than in a local worker, after Ray's own imports, but before the
    model and the trial allocate)."""
    from dataclasses import asdict
    from pathlib import Path

    from moopt.memory import rss
    from moopt.records import TrialSpec
    from moopt.train.recipe import run_trial
    from moopt.train.worker import point_logs_at

    if spec_json.get("output_dir"):  # the trial's warnings and errors in its log.txt, as a local worker's (not Ray's logs)
        point_logs_at(Path(spec_json["output_dir"]) / "log.txt")
    if spec_json.get("device") == "cuda":
        report_placement(channel, int(spec_json["number"]))
    rss.bound_kernel_caches()  # before the trial's first matmul, as a local worker's environment does
    if steady_heap:
        rss.steady_heap()

    spec = TrialSpec.from_json(spec_json)
    return asdict(run_trial(spec, _ChannelReporter(channel, spec.number)))
