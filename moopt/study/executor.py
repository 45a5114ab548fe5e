"""Executors run trial specs and hand back results.

Contract: ``submit(spec, slot)`` starts a trial in a worker process of its own (a warm one of
:class:`LocalExecutor` may have run earlier trials); ``next_result(timeout)``
returns the next :class:`TrialResult` to finish (any order), or None on timeout. A worker that
dies without reporting (crash, ``kill -9``, the OOM killer) yields a FAIL result with its exit
status. Hooks ``on_progress(number, event)`` (every ``progress``, ``phase`` and ``heartbeat`` event
of a worker, as the dict it sent) and ``on_rung(number, step, metrics, rung) -> bool`` are called from
executor threads; the study serialises them with its own lock. ``stalled()`` kills the trials whose
worker has been silent past the watchdog's limit (:mod:`moopt.study.watchdog`); their result is a FAIL whose
error says why ("stalled: no optimizer step for 312 s ...").
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from moopt.memory.rss import STEADY_HEAP_ENV
from moopt.records import TrialResult, TrialSpec, TrialState
from moopt.study.placement import Slot
from moopt.study.watchdog import Liveness, StallPolicy
from moopt.train.worker import child_env


class ExecutorBase:
    """What every executor shares: the queue of finished results and the trials still active."""

    def __init__(self, on_progress: Callable | None = None, on_rung: Callable | None = None,
                 stall: StallPolicy | None = None):
        self.on_progress = on_progress or (lambda *a: None)
        self.on_rung = on_rung or (lambda *a: True)
        self.results: queue.Queue[TrialResult] = queue.Queue()
        self.active: dict[int, Any] = {}  # trial number -> process / task handle
        self._lock = threading.Lock()
        self.liveness = Liveness(stall or StallPolicy())
        self._display_failed = False  # said once

    def _event(self, number: int, msg: dict) -> None:
        """A progress / phase / heartbeat event from a trial: a sign of life, then the study's hook."""
        self.liveness.saw(number, msg)
        try:
            self.on_progress(number, msg)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - what is shown of a trial must not stop it
            if not self._display_failed:
                self._display_failed = True
                print(f"moopt: progress display failed ({type(e).__name__}: {e}); trials go on", file=sys.stderr, flush=True)

    def _rung(self, number: int, step: int, metrics: dict, rung: int) -> bool:
        """The study's answer at a trial's rung. Its failure must not leave the trial waiting for an answer
        (the watcher thread would die, and the trial with it): the trial goes on, and the error is said."""
        try:
            return bool(self.on_rung(number, step, metrics, rung))
        except Exception as e:  # noqa: BLE001 - any bug in the pruner costs a pruning decision, not the study
            print(f"moopt: trial {number}: the rung {rung} decision failed ({type(e).__name__}: {e}); it goes on",
                  file=sys.stderr, flush=True)
            return True

    def _finish(self, result: TrialResult) -> None:
        """Hand a trial's result to the study; a trial the watchdog killed fails with its reason."""
        seen = self.liveness.end(result.number)
        if seen is not None and seen.killed and result.state == TrialState.FAIL:
            result.error, result.oom = seen.killed, False
            result.steps, result.total_steps = result.steps or seen.step, result.total_steps or seen.total
        self.results.put(result)

    def stalled(self) -> list[tuple[int, str]]:
        """Kill every trial silent past its limit; (trial, reason) of those killed now."""
        out = self.liveness.stalled()
        for number, _ in out:
            self.kill(number)
        return out

    def overdue(self, grace_s: float) -> list[int]:
        """Past the time budget and ``grace_s``: kill the trials that still train (they ignore the deadline, which a
        trial checks after each optimizer step); a trial evaluating or saving goes on. Those killed now."""
        out = self.liveness.overdue(f"killed: still training {grace_s:.0f} s after the time budget ran out")
        for number in out:
            self.kill(number)
        return out

    def kill(self, number: int) -> None:
        """Stop one trial at once; its result (a FAIL) still arrives through ``next_result``."""
        raise NotImplementedError

    def next_result(self, timeout: float | None = None) -> TrialResult | None:
        try:
            return self.results.get(timeout=timeout)
        except queue.Empty:
            return None

    def running(self) -> int:
        with self._lock:
            return len(self.active)

    def close(self) -> None:
        """Release what the executor holds (nothing, unless overridden)."""

    def kill_all(self) -> None:
        """End every running trial now, without results (nothing to end, unless overridden)."""


@dataclass
class Worker:
    """A worker process (``python -m moopt.train.worker``) and what its warm state is good for."""

    proc: subprocess.Popen
    key: tuple  # (device, threads, base model, dtype, quantization): trials it can take warm
    log: Any  # the file its stderr was started on (the first trial's log.txt)


class LocalExecutor(ExecutorBase):
    """The embedded executor: trials run in worker subprocesses (``python -m moopt.train.worker``).

    Warm workers (``warm=True``, the default): a worker that ends a trial cleanly waits for the next
    one and keeps its loaded base model; a trial with the same base model, dtype, quantisation, device
    and threads goes to such an idle worker. A worker is started for any other trial, after the idle
    workers on that device are ended (so the processes alive on a device never hold more base models
    than the trials placed there). A crash, an out-of-memory or a kill ends the worker with its trial.
    ``warm=False``: a fresh process per trial. ``steady_heap``: the trials' peak RSS is compared with a
    budget; their processes fix glibc's malloc thresholds (moopt.memory.rss.steady_heap)."""

    def __init__(self, *args, warm: bool = True, steady_heap: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.warm = warm
        self.steady_heap = steady_heap
        self.idle: list[Worker] = []
        self.started = 0  # worker processes started (a warm study starts fewer than it runs trials)
        self.closing = False

    @staticmethod
    def worker_key(spec: TrialSpec, slot: Slot) -> tuple:
        m = spec.config.model
        return (slot.device, slot.threads, spec.base_model, m.dtype, m.quantization)

    def warm_ready(self, cfg) -> bool:
        """Whether a trial of TrialConfig ``cfg`` would find an idle worker that holds its base model (its dtype and
        quantisation; a study has one base model): else it pays a process start and a model load, which the time
        budget's prediction counts (Study.fits_time)."""
        m = cfg.model
        with self._lock:
            return self.warm and any(w.key[3:] == (m.dtype, m.quantization) and w.proc.poll() is None for w in self.idle)

    def submit(self, spec: TrialSpec, slot: Slot) -> None:
        self.liveness.start(spec.number)
        spec.device = "cuda" if slot.device.startswith("cuda:") else "cpu"
        spec.threads = slot.threads
        Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
        key = self.worker_key(spec, slot)
        with self._lock:
            worker = next((w for w in self.idle if w.key == key and w.proc.poll() is None), None)
            if worker is not None:
                self.idle.remove(worker)
            else:  # a new process: first end the idle ones on this device (their models would share it)
                for w in [w for w in self.idle if w.key[0] == slot.device]:
                    self.idle.remove(w)
                    self._end(w)
        if worker is None:
            worker = self._start(spec, slot, key)
            self._event(spec.number, {"event": "phase", "phase": "starting", "detail": "importing torch"})
        with self._lock:
            self.active[spec.number] = worker.proc
        worker.proc.stdin.write(json.dumps(spec.to_json()) + "\n")
        worker.proc.stdin.flush()
        threading.Thread(target=self._watch, args=(spec, worker), daemon=True).start()

    def _start(self, spec: TrialSpec, slot: Slot, key: tuple) -> Worker:
        env = child_env(slot.threads, slot.device.split(":", 1)[1] if slot.device.startswith("cuda:") else "")
        env["MOOPT_WARM_WORKERS"] = "1" if self.warm else "0"
        if self.steady_heap and not slot.device.startswith("cuda:"):
            env[STEADY_HEAP_ENV] = "1"
        log = open(Path(spec.output_dir) / "log.txt", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "moopt.train.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=log, env=env, text=True, bufsize=1, start_new_session=True,
        )
        self.started += 1
        return Worker(proc, key, log)

    def _watch(self, spec: TrialSpec, worker: Worker) -> None:
        proc, result, reusable, broken = worker.proc, None, False, None
        try:
            while True:
                line = proc.stdout.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    continue
                ev = msg.get("event")
                if ev in ("progress", "phase", "heartbeat"):
                    self._event(spec.number, msg)
                elif ev == "rung":
                    go = self._rung(spec.number, msg["step"], msg["metrics"], msg["rung"])
                    try:
                        proc.stdin.write(json.dumps({"continue": go}) + "\n")
                        proc.stdin.flush()
                    except (BrokenPipeError, OSError):
                        pass
                elif ev == "result":
                    result = TrialResult.from_event(msg["result"])  # fields this process knows
                    reusable = bool(msg.get("reusable")) and self.warm
                    break
        except (OSError, ValueError):
            pass
        except Exception as e:  # noqa: BLE001 - a bug on the study's side fails this trial, not the study
            broken = f"the study's watch of this trial failed ({type(e).__name__}: {e})"
        with self._lock:
            self.active.pop(spec.number, None)
            keep = reusable and proc.poll() is None and not self.closing  # (a killed worker has exited)
            if keep:
                self.idle.append(worker)
        if not keep:
            code = self._end(worker)
            if result is None and broken:
                result = TrialResult(number=spec.number, state=TrialState.FAIL, error=broken)
            elif result is None:
                oom = code == -signal.SIGKILL  # what the kernel's OOM killer sends
                if code < 0:
                    name = signal.Signals(-code).name
                    why = f"worker killed by {name}" + (" (out of memory, or killed from outside)" if oom else "")
                else:
                    why = f"worker exited with code {code} without a result; see {spec.output_dir}/log.txt"
                result = TrialResult(number=spec.number, state=TrialState.FAIL, error=why, oom=oom)
        self._finish(result)

    def _end(self, worker: Worker, grace_s: float = 5.0) -> int:
        """End a worker: EOF on its stdin (it exits between trials), SIGKILL after ``grace_s``; its exit code."""
        proc = worker.proc
        try:
            proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            code = proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._killpg(proc)
            code = proc.wait()
        worker.log.close()
        return code

    @staticmethod
    def _killpg(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self, number: int) -> None:
        """SIGKILL the trial's process group (the worker and anything it started)."""
        with self._lock:
            proc = self.active.get(number)
        if proc is not None:
            self._killpg(proc)

    def kill_all(self) -> None:
        with self._lock:
            numbers = list(self.active)
            idle, self.idle = self.idle, []
        for n in numbers:
            self.kill(n)
        for w in idle:
            self._killpg(w.proc)

    def close(self) -> None:
        """End the idle workers (the running ones end with their trials)."""
        with self._lock:
            self.closing = True
            idle, self.idle = self.idle, []
        for w in idle:
            self._end(w)


DEADLINE_GRACE_S = 60  # after --time_budget_hours: a trial still training this long after the deadline is killed


def wait_for_any(executor: LocalExecutor, poll: float = 0.5, deadline: float | None = None,
                 on_poll: Callable[[], None] | None = None) -> TrialResult:
    """Block until a result arrives. Meanwhile, every ``poll`` seconds: kill the trials the stall
    watchdog gives up on (they come back as FAIL results), call ``on_poll`` (the progress view), and
    past ``deadline`` (+ DEADLINE_GRACE_S) kill the trials that still train (:meth:`Executor.overdue`; one that
    evaluates what it trained goes on, as the time budget's cut promises)."""
    while True:
        r = executor.next_result(timeout=poll)
        if r is not None:
            return r
        stalled = getattr(executor, "stalled", None)  # test doubles of executors have no watchdog
        if stalled is not None:
            stalled()
        if on_poll is not None:
            on_poll()
        if deadline is not None and time.time() > deadline + DEADLINE_GRACE_S and executor.running():
            overdue = getattr(executor, "overdue", None)  # (test doubles of executors have no watchdog)
            if overdue is not None:
                overdue(DEADLINE_GRACE_S)
            else:
                executor.kill_all()
