"""The stall watchdog's limits (moopt.study.watchdog.Liveness), on a fake clock."""

import re

import pytest

from moopt.study.watchdog import Liveness, StallPolicy


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def step(live, number, k, total=100, step_s=1.0):
    live.saw(number, {"event": "progress", "step": k, "total": total, "loss": 1.0, "step_s": step_s})


@pytest.fixture
def clock():
    return Clock()


def test_auto_limit_is_ten_times_the_slowest_step_with_a_floor(clock):
    live = Liveness(StallPolicy(), clock=clock)
    live.start(0)
    clock.t += 5
    step(live, 0, 1, step_s=2.0)
    assert live.limit(0) == (120.0, "the floor; 10 x the slowest step seen is 20 s")
    clock.t += 119
    assert live.stalled() == []
    step(live, 0, 2, step_s=30.0)  # a slow step raises the limit to 300 s
    limit, how = live.limit(0)
    assert limit == 300.0 and how == "10 x the slowest step seen, floor 120 s"
    clock.t += 299
    assert live.stalled() == []
    clock.t += 13
    [(n, why)] = live.stalled()
    assert n == 0
    assert why == "stalled: no optimizer step for 312 s after step 2/100 (limit 300 s: 10 x the slowest step seen, floor 120 s)"
    assert live.stalled() == []  # reported once: the caller kills it


def test_before_the_first_step_a_trial_gets_the_set_up_allowance(clock):
    live = Liveness(StallPolicy(timeout_s=5), clock=clock)
    live.start(0)
    live.saw(0, {"event": "phase", "phase": "loading model"})
    clock.t += 599
    assert live.stalled() == []  # --stall_timeout 5 does not cut the model load short
    clock.t += 2
    [(_, why)] = live.stalled()
    assert why.startswith("stalled: no progress (loading model) for 601 s before the first optimizer step")
    assert "limit 600 s: set-up allowance before the first step, floor 600 s" in why


def test_the_set_up_allowance_grows_with_the_slowest_set_up_seen(clock):
    live = Liveness(StallPolicy(), clock=clock)
    live.start(0)
    clock.t += 400  # trial 0 took 400 s to its first step
    step(live, 0, 1)
    live.start(1)
    assert live.limit(1) == (1200.0, "set-up allowance: 3 x the slowest set-up seen, floor 600 s")


def test_explicit_timeout_replaces_the_auto_step_limit(clock):
    live = Liveness(StallPolicy(timeout_s=5), clock=clock)
    live.start(0)
    step(live, 0, 1, step_s=60.0)
    assert live.limit(0) == (5, "--stall_timeout")
    clock.t += 6
    [(_, why)] = live.stalled()
    assert why == "stalled: no optimizer step for 6 s after step 1/100 (limit 5 s: --stall_timeout)"


def test_evaluation_heartbeats_keep_a_trial_alive_and_their_silence_is_named(clock):
    live = Liveness(StallPolicy(timeout_s=10), clock=clock)
    live.start(0)
    step(live, 0, 40)
    live.saw(0, {"event": "phase", "phase": "evaluating"})
    for k in range(1, 30):  # a 29 s evaluation, one heartbeat a second
        clock.t += 1
        live.saw(0, {"event": "heartbeat", "done": k, "total": 100})
        assert live.stalled() == []
    clock.t += 11
    [(_, why)] = live.stalled()
    assert why.startswith("stalled: no progress in evaluation for 11 s after step 40/100")


def test_zero_never_kills(clock):
    live = Liveness(StallPolicy(timeout_s=0), clock=clock)
    live.start(0)
    clock.t += 10**6
    assert live.stalled() == []


def test_a_queued_task_is_judged_from_its_first_event_and_an_ended_one_never_comes_back(clock):
    live = Liveness(StallPolicy(timeout_s=5), clock=clock)
    clock.t += 10**4  # waiting in Ray's queue: not started, not judged
    assert live.stalled() == []
    live.saw(3, {"event": "phase", "phase": "loading model"})
    assert 3 in live.trials and live.trials[3].started == clock.t
    live.end(3)
    live.saw(3, {"event": "heartbeat", "done": 1, "total": 2})  # late event after the result
    assert 3 not in live.trials


def test_local_executor_kills_a_silent_worker_and_fails_it_with_the_reason(tmp_path, monkeypatch):
    """A real worker process that hangs while loading (its spec line never comes) is killed by stalled()."""
    import subprocess
    import sys
    import time

    from moopt.study.executor import LocalExecutor, wait_for_any

    class SilentExecutor(LocalExecutor):
        def submit(self, spec_number, _slot=None):  # a worker that never writes an event
            self.liveness.start(spec_number)
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True,
                                    stdout=subprocess.PIPE, text=True)
            with self._lock:
                self.active[spec_number] = proc

            def watch():
                from moopt.records import TrialResult

                code = proc.wait()
                with self._lock:
                    self.active.pop(spec_number, None)
                self._finish(TrialResult(number=spec_number, state="FAIL", error=f"exit {code}"))

            import threading

            threading.Thread(target=watch, daemon=True).start()

    ex = SilentExecutor(stall=StallPolicy(setup_floor_s=1.0))
    ex.submit(7)
    t0 = time.time()
    res = wait_for_any(ex, poll=0.1)
    assert res.number == 7 and res.state == "FAIL"
    assert re.match(r"stalled: no progress \(starting\) for 1(\.\d)? s before the first optimizer step \(limit 1 s:", res.error)
    assert time.time() - t0 < 10 and ex.running() == 0


def test_past_the_time_budget_a_trial_still_training_is_killed_and_one_evaluating_goes_on(clock):
    """A trial cut by --time_budget_hours evaluates on the whole validation set; the executor's grace kill took every
    worker 60 s after the deadline, evaluating or not, and the SIGKILL read as "likely out of memory"."""
    live = Liveness(StallPolicy(), clock=clock)
    for n in (0, 1, 2):
        live.start(n)
        step(live, n, 5)
    live.saw(1, {"event": "phase", "phase": "evaluating", "detail": "40000 validation examples"})
    live.saw(2, {"event": "phase", "phase": "saving", "detail": "adapter"})
    assert live.overdue("killed: still training 60 s after the time budget ran out") == [0]
    assert live.overdue("again") == []  # each once
    assert live.end(0).killed == "killed: still training 60 s after the time budget ran out"


def test_a_trial_that_ends_while_the_watchdog_looks_is_no_error(clock):
    """stalled() lists the trials, then asks each one's limit: a trial ending in between raised KeyError in the
    study's main thread."""
    live = Liveness(StallPolicy(), clock=clock)
    live.start(0)
    live.end(0)
    assert live.limit(0)[0] == float("inf")


def test_wait_for_any_past_the_deadline_kills_only_the_trials_still_training(clock):
    import time as real_time

    from moopt.records import TrialResult, TrialState
    from moopt.study.executor import ExecutorBase, wait_for_any

    class Ex(ExecutorBase):
        def __init__(self):
            super().__init__()
            self.killed = []
            self.active = {0: 1, 1: 1}
            for n in (0, 1):
                self.liveness.start(n)
            self._event(1, {"event": "phase", "phase": "evaluating"})

        def kill(self, number):
            self.killed.append(number)
            self.active.pop(number)
            self._finish(TrialResult(number=number, state=TrialState.FAIL, error="worker killed by SIGKILL "
                                     "(likely out of memory)", oom=True))

    ex = Ex()
    res = wait_for_any(ex, poll=0.01, deadline=real_time.time() - 61)
    assert ex.killed == [0] and res.number == 0 and not res.oom
    assert res.error == "killed: still training 60 s after the time budget ran out"


def test_a_limit_under_a_second_is_not_said_as_0_s():
    from moopt.study.watchdog import _secs

    assert [_secs(x) for x in (0.5, 1.0, 7.5, 312.4)] == ["0.5", "1", "7.5", "312"]
