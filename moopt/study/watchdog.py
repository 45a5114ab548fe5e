"""The stall watchdog: a trial that shows no sign of progress for too long is killed and recorded FAIL.

A worker shows progress with the events it sends (``moopt.train.worker`` protocol): ``phase`` when it
moves on (loading model, tokenising, training, evaluating, saving), ``progress`` after each
optimizer step, ``heartbeat`` while it evaluates (at most once a second, from the loop over
evaluation batches, so a hung evaluation stops them too). The executor feeds every event to
:meth:`Liveness.saw`; the study's wait loop asks :meth:`Liveness.stalled` which trials to kill.

How long a trial may stay silent:

- after its first optimizer step (training, rung and final evaluations): ``--stall_timeout`` seconds
  when given, else ``factor`` x the slowest optimizer step seen in the study so far, at least
  ``floor_s``. An evaluation batch costs less than an optimizer step (one forward pass against
  ``gradient_accumulation_steps`` forward and backward passes), so the same limit covers the gaps
  between evaluation heartbeats.
- before its first optimizer step (model load, tokenisation, kernel compilation in the first step,
  the base model's evaluation): ``setup_factor`` x the slowest set-up seen (start to first step),
  at least ``setup_floor_s`` and at least ``--stall_timeout``. Loading a 70B model from a network
  disk takes minutes and sends no event, hence the larger floor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StallPolicy:
    timeout_s: float | None = None  # --stall_timeout: None = auto (below); 0 = never kill a trial
    factor: float = 10.0  # auto limit: this many times the slowest optimizer step seen
    floor_s: float = 120.0  # ... and never below this, seconds
    setup_factor: float = 3.0  # before the first step: this many times the slowest set-up seen
    setup_floor_s: float = 600.0  # ... and never below this, seconds

    @property
    def enabled(self) -> bool:
        return self.timeout_s != 0


@dataclass
class _Trial:
    started: float  # clock time of submit (or of the first event, for executors that queue tasks)
    last: float  # clock time of the last event
    steps: int = 0  # optimizer steps reported
    step: int = 0  # the last step number reported
    total: int = 0
    phase: str = "starting"
    killed: str | None = None  # why the watchdog killed it


@dataclass
class Liveness:
    """Last sign of life of each running trial and the study's slowest step and set-up (thread-safe:
    events arrive on executor threads, the wait loop asks from the main thread)."""

    policy: StallPolicy = field(default_factory=StallPolicy)
    clock: Callable[[], float] = time.monotonic
    slowest_step_s: float = 0.0
    slowest_setup_s: float = 0.0

    def __post_init__(self):
        self.trials: dict[int, _Trial] = {}
        self._ended: set[int] = set()  # a late event of an ended trial must not bring it back
        self._lock = threading.Lock()

    def start(self, number: int) -> None:
        now = self.clock()
        with self._lock:
            self.trials[number] = _Trial(started=now, last=now)
            self._ended.discard(number)

    def saw(self, number: int, msg: dict) -> None:
        """One event from trial ``number``'s worker (``{"event": "progress" | "phase" | "heartbeat", ...}``)."""
        now = self.clock()
        with self._lock:
            t = self.trials.get(number)
            if t is None:  # a queued task (Ray) is judged from its first event on
                if number in self._ended:
                    return
                t = self.trials[number] = _Trial(started=now, last=now)
            t.last = now
            ev = msg.get("event")
            if ev == "phase":
                t.phase = msg.get("phase", t.phase)
            elif ev == "progress":
                if t.steps == 0:
                    self.slowest_setup_s = max(self.slowest_setup_s, now - t.started)
                t.steps += 1
                t.step, t.total = int(msg.get("step", t.step)), int(msg.get("total", t.total))
                if msg.get("step_s"):
                    self.slowest_step_s = max(self.slowest_step_s, float(msg["step_s"]))

    def end(self, number: int) -> _Trial | None:
        with self._lock:
            self._ended.add(number)
            return self.trials.pop(number, None)

    def limit(self, number: int) -> tuple[float, str]:
        """(seconds of silence allowed to trial ``number`` now, how that figure came about)."""
        p = self.policy
        with self._lock:
            t = self.trials.get(number)
            if t is None:  # it ended since it was listed (events arrive on other threads)
                return float("inf"), "ended"
            stepped = t.steps > 0
        if not stepped:
            auto = max(p.setup_floor_s, p.setup_factor * self.slowest_setup_s)
            if p.timeout_s and p.timeout_s > auto:
                return p.timeout_s, "--stall_timeout"
            if auto > p.setup_floor_s:
                return auto, f"set-up allowance: {p.setup_factor:g} x the slowest set-up seen, floor {p.setup_floor_s:g} s"
            return auto, f"set-up allowance before the first step, floor {p.setup_floor_s:g} s"
        if p.timeout_s:
            return p.timeout_s, "--stall_timeout"
        auto = p.factor * self.slowest_step_s
        if auto > p.floor_s:
            return auto, f"{p.factor:g} x the slowest step seen, floor {p.floor_s:g} s"
        return p.floor_s, f"the floor; {p.factor:g} x the slowest step seen is {auto:.0f} s"

    def overdue(self, why: str) -> list[int]:
        """The running trials still training (or setting up) when the time budget's grace has run out: each is marked
        killed with ``why`` and listed (the caller kills it). One evaluating or saving what it trained goes on: that
        evaluation is what a cut trial keeps, and the stall limit still watches it."""
        out = []
        with self._lock:
            for n, t in self.trials.items():
                if t.killed is None and t.phase not in ("evaluating", "saving"):
                    t.killed = why
                    out.append(n)
        return out

    def stalled(self) -> list[tuple[int, str]]:
        """(trial, reason) for each running trial silent past its limit; each is reported once (it is
        marked killed: the caller kills it)."""
        if not self.policy.enabled:
            return []
        now = self.clock()
        out = []
        with self._lock:
            numbers = [n for n, t in self.trials.items() if t.killed is None]
        for n in numbers:
            limit, how = self.limit(n)
            with self._lock:
                t = self.trials.get(n)
                if t is None or t.killed is not None:
                    continue
                silent = now - t.last
                if silent <= limit:
                    continue
                if t.steps == 0:
                    what = f"no progress ({t.phase}) for {_secs(silent)} s before the first optimizer step"
                elif t.phase == "evaluating":
                    what = f"no progress in evaluation for {_secs(silent)} s after step {t.step}/{t.total}"
                else:
                    what = f"no optimizer step for {_secs(silent)} s after step {t.step}/{t.total}"
                t.killed = f"stalled: {what} (limit {_secs(limit)} s: {how})"
                out.append((n, t.killed))
        return out


def _secs(s: float) -> str:
    """Seconds as the stall reason says them: whole from 10 s on, else to a tenth (7.5, 8), under 1 s to two
    digits (a 0.5 s limit read "0 s", which --stall_timeout takes for never)."""
    return f"{s:.0f}" if s >= 10 else f"{s:.1f}".removesuffix(".0") if s >= 1 else f"{s:.2g}"
