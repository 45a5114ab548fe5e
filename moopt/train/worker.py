"""The trial process: ``python -m moopt.train.worker``.

Protocol (JSON lines): the parent writes a TrialSpec line on stdin. The worker writes
``{"event": "phase" | "progress" | "heartbeat" | "rung" | "result", ...}`` lines on its original
stdout; after a ``rung`` line it reads one line ``{"continue": true|false}`` from stdin. ``phase``,
``progress`` (each optimizer step) and ``heartbeat`` (inside evaluations, at most one a second) are
the signs of life the stall watchdog goes by (``moopt.study.watchdog``). Everything else the libraries
print goes to stderr, which the worker points at each trial's ``log.txt``.

A worker is warm (``MOOPT_WARM_WORKERS`` unset or 1): after a trial's ``result`` line, whose
``reusable`` says so, it waits for the next TrialSpec line and keeps the base model and tokenised data
of the trial before (moopt.train.warm). A trial that ended in an exception (crash, out of memory) ends
the worker, as does EOF on stdin.

``MOOPT_STEADY_HEAP=1``: the trial's peak RSS is compared with a budget; fix glibc's malloc thresholds
first (moopt.memory.rss.steady_heap).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from moopt.memory.rss import bound_kernel_caches

HEARTBEAT_S = 1.0  # at most one heartbeat a second: evaluation batches of a tiny model take milliseconds


def child_env(threads: int | None = None, cuda_visible: str | None = None) -> dict[str, str]:
    """The environment of a process that trains or probes one configuration (this worker, the probe).

    - ``PYTHONSAFEPATH``: ``python -m`` would put the working directory first on sys.path, where a
      user's folder could shadow an installed package (Python >= 3.11 keeps it out).
    - ``HF_HUB_OFFLINE``: the study resolved the base model to a local folder before any trial, so a
      trial never needs the Hub. Without it, importing bitsandbytes (quantised loading does) on a CPU
      with avx512_bf16 asks the Hub for a kernels-community kernel once Hugging Face's ``kernels``
      package is installed (transformers >= 5.25 requires it): a request per worker, which breaks a
      resumed study's promise of no request at all and waits on the network when there is none.
      bitsandbytes falls back to its own kernels (that one serves batch-1 inference only).
    - ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (unless set) with the slot's GPU: placement numbers GPUs as NVML does (PCI
      order), CUDA fastest first by default, so on a machine of mixed GPUs an index named another device.
    - oneDNN's and ideep's kernel caches bounded (moopt.memory.rss.bound_kernel_caches): a bf16 trial's
      RSS otherwise grows with each new batch shape.
    """
    env = dict(os.environ)
    bound_kernel_caches(env)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONSAFEPATH"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if cuda_visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible
        # the slot's GPU is NVML's index (PCI order); CUDA numbers devices fastest first unless told otherwise
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return env


class PipeReporter:
    def __init__(self, out, inp):
        self.out, self.inp = out, inp
        self.last_beat = 0.0

    def send(self, msg: dict) -> None:
        self.out.write(json.dumps(msg, default=float) + "\n")
        self.out.flush()

    def progress(self, step: int, total: int, loss: float, tokens_per_s: float | None = None,
                 step_s: float | None = None) -> None:
        self.send({"event": "progress", "step": step, "total": total, "loss": loss, "tokens_per_s": tokens_per_s,
                   "step_s": step_s})

    def phase(self, name: str, detail: str = "") -> None:
        self.send({"event": "phase", "phase": name, "detail": detail})

    def heartbeat(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last_beat >= HEARTBEAT_S or done == total:
            self.last_beat = now
            self.send({"event": "heartbeat", "done": done, "total": total})

    def rung(self, step: int, metrics: dict, rung: int) -> bool:
        self.send({"event": "rung", "step": step, "metrics": metrics, "rung": rung})
        line = self.inp.readline()
        return bool(json.loads(line).get("continue", True)) if line else False


def die_with_parent() -> None:
    """Linux: get SIGKILL when the optimizer dies, so an orphan never writes into a resumed study."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except Exception:
        pass


def point_logs_at(path: Path) -> None:
    """Send this process's stderr (and stray stdout) to ``path`` from now on (appending)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stderr.flush()
    os.dup2(fd, 2)
    os.dup2(fd, 1)
    os.close(fd)


def ignore_stop_signals() -> None:
    """A stop meant for the study (SIGTERM from pkill or a job scheduler, SIGINT, SIGHUP) that reached this worker
    first killed the trial, which the study then recorded as FAIL (worker killed by SIGTERM) and --resume did not
    rerun. The study ends its workers itself (SIGKILL to their group; PR_SET_PDEATHSIG when it dies), so a worker
    leaves these signals to it."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except (OSError, ValueError):
            pass


def main() -> int:
    die_with_parent()
    ignore_stop_signals()
    from moopt.memory.rss import steady_heap_if_asked

    steady_heap_if_asked()  # before torch allocates anything
    # Keep the protocol channel private: stray prints from libraries go to stderr.
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    from dataclasses import asdict

    from moopt.records import TrialSpec, TrialState
    from moopt.train.recipe import run_trial
    from moopt.train.warm import WarmBase

    warm = WarmBase() if os.environ.get("MOOPT_WARM_WORKERS", "1") != "0" else None
    reporter = PipeReporter(proto, sys.stdin)
    first = True
    while True:
        line = sys.stdin.readline()
        if not line.strip():
            return 0
        spec = TrialSpec.from_json(json.loads(line))
        if not first:  # the first trial's log is this process's stderr already
            point_logs_at(Path(spec.output_dir) / "log.txt")
        first = False
        result = run_trial(spec, reporter, warm)
        reusable = warm is not None and result.state not in (TrialState.FAIL, TrialState.INFEASIBLE)
        if reusable:
            warm.release()
        reporter.send({"event": "result", "result": asdict(result), "reusable": reusable})
        if not reusable:
            return 0


if __name__ == "__main__":
    sys.exit(main())
