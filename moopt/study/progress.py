"""Live progress of a study: what each running trial is doing, and where the study stands.

:class:`ProgressBoard` is the data (fed with the workers' ``phase`` / ``progress`` / ``heartbeat``
events and the trials' ends); :class:`ProgressView` draws it. On a terminal: a live rich display, one
line for the study (trials done, the best trial so far, elapsed, about how long is left, time left of
the budget) and one per running trial (step/total, loss, tokens/s, ETA). Elsewhere (a pipe, CI, a log file): plain
lines at a modest rate:

- each phase of a trial (loading model, tokenising, training, evaluating) until the first trial of
  the run has made its first optimizer step: the first set-up (cold disk cache, kernel compilation)
  is the slow, silent part a user needs to see; after it, a new worker's "loading model" (a second
  slot's first trial, a worker replaced after a crash), which can take minutes on a large model;
- a trial's first step, then a line each 10% of its steps when at least ``min_gap_s`` passed since its
  last one, and a line whenever it has been quiet for ``quiet_s`` (slow steps, a long evaluation);
- the study's line after each trial ends.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from moopt.records import NOT_TRAINED, TrialResult, TrialState


def fmt_duration(s: float) -> str:
    s = max(0, round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"



STUCK_STEPS, STUCK_MIN_S = 10, 10.0  # a step running this many mean steps, and seconds, is shown as running that long


@dataclass
class TrialProgress:
    label: str  # "Trial 3" | "Base model"
    started: float
    phase: str = "starting"
    detail: str = ""
    phase_since: float = 0.0
    step: int = 0
    total: int = 0
    loss: float | None = None
    tokens_per_s: float | None = None
    busy_s: float = 0.0  # seconds spent in optimizer steps so far (from the workers' step_s)
    steps_seen: int = 0  # optimizer steps reported (fewer than ``step`` in a trial resumed from a checkpoint)
    first_s: float = 0.0  # the first reported step's seconds: warm-up, left out of the mean step time
    step_at: float = 0.0  # when the last step was reported
    eval_done: int = 0
    eval_total: int = 0
    printed_at: float = 0.0  # when a plain line about it was last printed
    printed_decile: int = 0  # the last 10% mark of its steps printed

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds left of training at the mean step time so far (evaluations not included); at ``now``,
        less the time since the last step was reported (a slow step's line, printed again while it runs,
        counts down instead of repeating), but never less than the steps after the one running.

        The first step is left out of the mean, and there is no ETA before a second: it pays the warm-up
        (oneDNN's kernels JIT-compiled for a new batch shape, Triton's autotuning, cuBLAS's handles). Seen
        in the demo: step 1 at 43 tok/s said "ETA 4m01s" for a trial that trained in 40 s."""
        if not self.step or not self.total or self.steps_seen < 2 or self.busy_s <= self.first_s:
            return None
        mean = (self.busy_s - self.first_s) / (self.steps_seen - 1)
        left = (self.total - self.step) * mean
        if now is None or not self.step_at:
            return left
        if self.stuck_s(now) is not None:  # its pace says nothing of when it ends: no ETA
            return None
        return max(left - (now - self.step_at), (self.total - self.step - 1) * mean, 0.0)

    def stuck_s(self, now: float) -> float | None:
        """How long the running step has taken, once that is over STUCK_STEPS mean steps and STUCK_MIN_S seconds (a
        stuck trial said "ETA 0s" for minutes; --stall_timeout decides when it is ended); else None. Not during an
        evaluation, nor after the last step."""
        if self.phase != "training" or not self.step_at or self.steps_seen < 2 or self.step >= self.total:
            return None
        mean = (self.busy_s - self.first_s) / (self.steps_seen - 1)
        since = now - self.step_at
        return since if since > max(STUCK_MIN_S, STUCK_STEPS * mean) else None


def _left(expected: float, taken: float) -> tuple[float, bool]:
    """What is left of ``expected`` seconds after ``taken`` (0 once it ran past them), and whether it did (overdue)."""
    return max(expected - taken, 0.0), taken >= expected


class ProgressBoard:
    """The state the progress view draws. Thread-safe: events arrive on executor threads."""

    def __init__(self, total: int = 0, objective: str | None = None, minimize: bool = True, done: int = 0,
                 deadline: float | None = None, clock: Callable[[], float] = time.time, began: float | None = None,
                 score: Callable[[dict[str, float]], float] | None = None, shown: tuple[str, ...] = (),
                 rescore: Callable[[list[dict[str, float]]], list[float]] | None = None,
                 to_minimize: Callable[[dict[str, float]], Any] | None = None):
        """``objective``: the best trial is the one best on it. ``score`` (several objectives): the best trial
        is the one with the highest weighted score (the summary's ``Best value``), shown with its ``shown``
        metrics. ``rescore`` (several objectives and no fixed start, e.g. --no-baseline): the scores of all COMPLETE
        trials' metrics at once, as the summary computes them (from the worst trial's values), after each end."""
        self.total, self.objective, self.minimize, self.done = total, objective, minimize, done
        self.taken = 0  # ended trials --warm_start took over (not trained): counted beside --num_trials, not in it
        self.deadline, self.clock, self.score, self.shown = deadline, clock, score, shown
        self.rescore, self.complete = rescore, []  # [(trial, metrics)] of the COMPLETE trials, for rescore
        self.to_minimize = to_minimize  # metrics -> objective vector (minimised): the best is picked on the front
        self.t0 = clock()  # the pace (eta_s) counts from here
        self.began = self.t0 if began is None else began  # "elapsed": from where the time budget's clock starts
        self.best: tuple[float, int] | None = None  # (value of the objective, or score; trial)
        self.best_metrics: dict[str, float] = {}
        self.done_here = 0  # trials that ended in this run (a resumed study's earlier ones excluded): the pace
        self.ran_here = 0  # of those, the ones that ran (not ruled out by the memory gate before they started)
        self.last_end = self.t0  # when the last of them ended: the pace counts up to here, not the running ones' time
        self.durations: list[float] = []  # seconds from its first event to its end, of each of them on the board
        self.tails: list[float] = []  # seconds from its last optimizer step to its end (the last evaluation, saving)
        self.slots = 0  # the most trials seen running at once: the study's slots, as far as the board can tell
        self.trials: dict[int, TrialProgress] = {}
        # a late event of an ended trial (Ray sends them asynchronously) must not bring it back on the board
        self.gone: set[int] = set()
        self.stepped = False  # a trial of this run has made an optimizer step (set-up is known to work)
        self.lock = threading.Lock()

    def _trial(self, number: int, now: float) -> TrialProgress:
        t = self.trials.get(number)
        if t is None:
            label = "Base model" if number < 0 else f"Trial {number}"
            t = self.trials[number] = TrialProgress(label=label, started=now, phase_since=now, printed_at=now)
            self.slots = max(self.slots, sum(n >= 0 for n in self.trials))
        return t

    def event(self, number: int, msg: dict) -> TrialProgress | None:
        """Apply one worker event; the trial's state after it (None: the trial ended already, the event came late)."""
        now = self.clock()
        with self.lock:
            if number in self.gone:
                return None
            t = self._trial(number, now)
            ev = msg.get("event")
            if ev == "phase":
                t.phase, t.detail, t.phase_since = msg.get("phase", ""), msg.get("detail", ""), now
                t.eval_done = t.eval_total = 0
                if t.phase == "training" and t.step:  # back from a rung's evaluation: the next step starts now (it
                    t.step_at = now  # read "step 6 running for 10s" of 3 s of training after 7 of evaluation)
            elif ev == "progress":
                t.phase = "training"
                t.step, t.total, t.loss = int(msg["step"]), int(msg["total"]), msg.get("loss")
                t.tokens_per_s = msg.get("tokens_per_s") or t.tokens_per_s
                step_s = float(msg.get("step_s") or 0.0)
                t.busy_s += step_s
                t.first_s = step_s if not t.steps_seen else t.first_s
                t.steps_seen += 1
                t.step_at = now
            elif ev == "heartbeat":
                t.eval_done, t.eval_total = int(msg.get("done", 0)), int(msg.get("total", 0))
            return t

    def ended(self, end: TrialResult, earlier: bool = False) -> None:
        """A trial ended (any state): it leaves the board and counts as done; a COMPLETE one may be the best.
        ``earlier``: it ended in an earlier run of a resumed study (not part of this run's pace). A trial taken
        over from --warm_start (``taken_from``) counts beside the total, as --num_trials does not count it."""
        now = self.clock()
        with self.lock:
            t = self.trials.pop(end.number, None)
            self.gone.add(end.number)
            ran = not (end.error or "").startswith(NOT_TRAINED)
            self.done += 1
            self.taken += bool(end.taken_from)
            self.done_here += not earlier
            self.ran_here += ran and not earlier
            if not earlier:
                self.last_end = now
                if t is not None and ran and end.number >= 0:
                    self.durations.append(now - t.started)
                    if t.step and t.step >= t.total and t.step_at:
                        self.tails.append(now - t.step_at)
            m = end.metrics or {}
            if self.rescore is not None or (self.score is not None and self.to_minimize is not None):
                # as the summary picks it: the highest score on the Pareto front of the COMPLETE trials, the earliest
                # on a tie (a weight of 0 ties a dominated trial with the one that dominates it)
                if end.state == TrialState.COMPLETE and all(n in m and math.isfinite(m[n]) for n in self.shown):
                    self.complete.append((end.number, dict(m)))
                    ms = [x[1] for x in self.complete]
                    scores = self.rescore(ms) if self.rescore is not None else [self.score(x) for x in ms]
                    front = range(len(ms))
                    if self.to_minimize is not None:
                        from moopt.search.pareto import nondominated_mask

                        mask = nondominated_mask(np.array([self.to_minimize(x) for x in ms], dtype=float))
                        front = [k for k in front if mask[k]]
                    i = max(front, key=lambda k: (scores[k], -self.complete[k][0]))
                    self.best, self.best_metrics = (float(scores[i]), self.complete[i][0]), dict(self.complete[i][1])
                return
            if self.score is not None:
                v = self.score(m) if all(n in m for n in self.shown) else None
            else:
                v = m.get(self.objective) if self.objective else None
            if v is None or not math.isfinite(v):  # e.g. an infinite perplexity: no best
                better = False
            elif self.best is None:
                better = True
            else:  # a score is higher-is-better
                better = v > self.best[0] if (self.score is not None or not self.minimize) else v < self.best[0]
            if end.state == TrialState.COMPLETE and better:
                self.best, self.best_metrics = (float(v), end.number), dict(m)

    # -- lines -----------------------------------------------------------------------------------
    def study_line(self) -> str:
        now = self.clock()
        parts = [f"Study: {self.done - self.taken}/{self.total} trials done"
                 + (f" (+{self.taken} taken over)" if self.taken else "")]
        if self.score is not None or self.rescore is not None:  # the weighted score (rescore: without a base model)
            shown = ", ".join(f"{n} {self.best_metrics[n]:.4f}" for n in self.shown) if self.best else ""
            parts.append(f"best value {self.best[0]:.3f} (trial {self.best[1]}: {shown})" if self.best else "best value -")
        elif self.objective:
            parts.append(f"best {self.objective} {self.best[0]:.4f} (trial {self.best[1]})" if self.best
                         else f"best {self.objective} -")
        parts.append(f"elapsed {fmt_duration(now - self.began)}")
        left = self.eta_s(now)
        if left is not None and (self.deadline is None or left < self.deadline - now):
            parts.append(f"about {fmt_duration(left)} to go")
        if self.deadline is not None:
            parts.append(f"{fmt_duration(self.deadline - now)} left of the time budget")
        return ", ".join(parts)

    def eta_s(self, now: float) -> float | None:
        """Seconds until the last trial ends: the trials still to start at this run's pace, after the running ones.

        The pace is this run's wall time per ended trial (which counts parallel slots and pruned trials as they
        came), up to the last end; not up to now, which counted a running trial's time in the pace and then that
        trial again as one still to go (the line said 2 s more for every second a trial ran, then dropped 10 minutes
        when it ended). While nothing ends it is at least what one more end now would make it.
        A running trial has its training ETA left, plus the time this run's trials took after their last step
        (evaluation, saving); one not yet training, this run's mean trial time less its own so far.
        None while that is unknown for a running trial, or before a trial of this run that ran has ended (the memory
        gate's INFEASIBLE ones take no time) where trials are left to start."""
        left = self.total - (self.done - self.taken)
        if left <= 0 or now <= self.t0:
            return None
        with self.lock:
            running = [t for n, t in self.trials.items() if n >= 0]
        tail = sum(self.tails) / len(self.tails) if self.tails else 0.0
        mean = sum(self.durations) / len(self.durations) if self.durations else None
        rest: list[float | None] = []
        overdue = 0
        for t in running:
            eta = t.eta_s(now)
            # a trial past what it was expected to take counts as ending now (OVERDUE), a lower bound: where only
            # such trials are left, the time is unknown, not 0 (the line said "about 0s to go" for 20 s while two
            # trials that took longer to load than trial 0 took in all still ran)
            over = False
            if t.step and t.step >= t.total and t.step_at:  # past its last step: evaluating, saving
                r, over = _left(tail, now - t.step_at)
            elif eta is not None:
                r = eta + tail
            elif mean is not None and t.stuck_s(now) is None:  # loading, a first step: not timed by its own pace yet
                r, over = _left(mean, now - t.started)  # (a stuck step: its time left is unknown, not the mean's)
            else:
                r = None
            rest.append(r)
            overdue += over
        known = [r for r in rest if r is not None]
        to_start = max(left - len(running), 0)
        if not to_start:
            return max(known) if known and len(known) == len(rest) and overdue < len(rest) else None
        if not self.ran_here:  # only trials the memory gate ruled out (0 s each) have ended: no pace yet
            return None
        pace = max(self.last_end - self.t0, 0.0) / self.done_here
        pace = max(pace, (now - self.t0) / (self.done_here + 1))
        # each trial still to start takes a slot as one frees up, for the slots' time per trial (the pace is per slot):
        # the last few, fewer than the slots, each take a whole trial's time, after a running one
        slots = max(self.slots, len(running), 1)
        free = sorted([*(r or 0.0 for r in rest), *[0.0] * (slots - len(running))])
        for _ in range(to_start):
            heapq.heappush(free, heapq.heappop(free) + pace * slots)
        return max(free)

    def trial_line(self, number: int, timed: bool = True) -> str:
        """Training: step/total, loss, tokens/s, ETA. Otherwise its phase (and for how long, ``timed``)."""
        now = self.clock()
        with self.lock:
            t = self.trials.get(number)
        if t is None:  # it ended since it was listed (events, ends and the live display run on different threads)
            return ""
        if t.phase == "training" and t.step:
            eta = t.eta_s(now)
            loss = f" loss {t.loss:.4f}" if t.loss is not None else ""
            tps = f" {t.tokens_per_s:.0f} tok/s" if t.tokens_per_s else ""
            stuck = t.stuck_s(now)
            if stuck is not None:
                return f"{t.label}: step {t.step}/{t.total}{loss}{tps}, step {t.step + 1} running for {fmt_duration(stuck)}"
            return f"{t.label}: step {t.step}/{t.total}{loss}{tps}" + (f" ETA {fmt_duration(eta)}" if eta is not None else "")
        what = t.phase + (f" ({t.detail})" if t.detail else "")
        if t.eval_total:  # (heartbeats: records while tokenising, batches while evaluating)
            what += f": {'record' if t.phase == 'tokenising' else 'batch'} {t.eval_done}/{t.eval_total}"
        return f"{t.label}: {what}" + (f", {fmt_duration(now - t.phase_since)}" if timed else " ...")

    def running(self) -> list[int]:
        with self.lock:
            return sorted(self.trials)


class ProgressView:
    """Draws a :class:`ProgressBoard` on ``console``: live on a terminal, plain lines otherwise (see
    the module's docstring). Use as a context manager; feed it with ``event``, ``ended``, ``tick``."""

    quiet_s = 30.0  # plain mode: a running trial gets a line at least this often
    min_gap_s = 10.0  # plain mode: ... and at its 10% marks no more often than this

    def __init__(self, console, board: ProgressBoard, study_line: bool = True):
        self.console, self.board, self.show_study = console, board, study_line
        self.live = None

    def __enter__(self) -> Self:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(get_renderable=self._render, console=self.console, transient=True,
                             refresh_per_second=2, redirect_stdout=False, redirect_stderr=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            live, self.live = self.live, None
            try:
                live.__exit__(*exc)
            except OSError:  # the terminal went away (SIGHUP): the stop that brought us here goes on
                pass

    def _render(self):
        from rich.text import Text

        lines = [self.board.study_line()] if self.show_study else []
        lines += [f"  {line}" for n in self.board.running() if (line := self.board.trial_line(n))]
        return Text("\n".join(lines))

    # -- feeding -------------------------------------------------------------------------------
    def event(self, number: int, msg: dict) -> None:
        t = self.board.event(number, msg)
        if self.live is not None or t is None:
            return
        now = self.board.clock()
        ev = msg.get("event")
        line = None
        if ev == "phase" and t.phase != "starting" and (not self.board.stepped or t.phase == "loading model"):
            # (the study says it started) until a step was made; after, a new worker's load, the slow silent part
            line = self.board.trial_line(number, timed=False)
        elif ev == "progress":
            decile = 10 * t.step // max(t.total, 1)
            if t.step == 1 or (decile > t.printed_decile and now - t.printed_at >= self.min_gap_s and t.step < t.total):
                line = self.board.trial_line(number)
            if line is not None:
                t.printed_decile = decile
            self.board.stepped = True
        if line:
            t.printed_at = now
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def ended(self, end: TrialResult, earlier: bool = False) -> None:
        self.board.ended(end, earlier)
        if self.live is None and self.show_study:
            self.console.print(self.board.study_line(), markup=False, highlight=False, soft_wrap=True)

    def tick(self) -> None:
        """Called from the study's wait loop (every 0.5 s): plain mode prints the trials quiet too long."""
        if self.live is not None:
            return
        now = self.board.clock()
        for n in self.board.running():
            t = self.board.trials.get(n)
            if t is not None and now - t.printed_at >= self.quiet_s and (line := self.board.trial_line(n)):
                t.printed_at = now
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)
