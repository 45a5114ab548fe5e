"""The progress view's state machine (moopt.study.progress) on a fake clock, and its plain lines in a real study."""

import io

import pytest
from click.testing import CliRunner
from rich.console import Console

from moopt.records import TrialResult
from moopt.study.progress import ProgressBoard, ProgressView, fmt_duration


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def prog(k, total=120, loss=1.234, tps=312.0, step_s=1.0):
    return {"event": "progress", "step": k, "total": total, "loss": loss, "tokens_per_s": tps, "step_s": step_s}


def plain():
    buf = io.StringIO()
    return Console(file=buf, force_terminal=False, width=200, highlight=False), buf


def test_durations_read_like_a_clock():
    assert [fmt_duration(s) for s in (4.6, 130, 3720, -3)] == ["5s", "2m10s", "1h02m", "0s"]


def test_trial_line_shows_step_loss_speed_and_eta():
    clock = Clock()
    b = ProgressBoard(total=10, objective="eval_loss", clock=clock)
    b.event(3, {"event": "phase", "phase": "training", "detail": "120 optimizer steps"})
    for k in range(1, 41):
        b.event(3, prog(k, step_s=1.625))
    # 80 steps left at 1.625 s each
    assert b.trial_line(3) == "Trial 3: step 40/120 loss 1.2340 312 tok/s ETA 2m10s"
    # the first step pays the warm-up (kernels compiled for a new shape): no ETA from it, and not in the mean
    b.event(5, prog(1, step_s=40.0))
    assert b.trial_line(5) == "Trial 5: step 1/120 loss 1.2340 312 tok/s"
    b.event(5, prog(2, step_s=1.0))
    assert b.trial_line(5).endswith("ETA 1m58s")  # 118 steps at 1 s
    # resumed from a checkpoint at step 60: the mean is over the steps this process ran
    b.event(6, prog(61, step_s=9.0))
    b.event(6, prog(62, step_s=2.0))
    assert b.trial_line(6).endswith("ETA 1m56s")  # 58 steps at 2 s
    # a slow trial's line printed again while its next step runs counts down, to the steps after that one
    for k in range(1, 6):
        b.event(4, prog(k, total=10, step_s=20.0))
    assert b.trial_line(4).endswith("ETA 1m40s")
    clock.t += 15
    assert b.trial_line(4).endswith("ETA 1m25s")
    clock.t += 60
    assert b.trial_line(4).endswith("ETA 1m20s")  # 4 steps x 20 s after the one running
    # a step that runs 10 mean steps (and 10 s) or more: its pace says nothing of when it ends; how long it has run
    clock.t += 150
    assert b.trial_line(4) == "Trial 4: step 5/10 loss 1.2340 312 tok/s, step 6 running for 3m45s"
    # a fast trial that hangs said "ETA 0s" for as long as it hung
    for k in range(1, 3):
        b.event(7, prog(k, total=12, step_s=0.1))
    assert b.trial_line(7).endswith("ETA 1s")
    clock.t += 11
    assert b.trial_line(7).endswith(", step 3 running for 11s")


def test_phases_and_evaluation_batches_are_shown_until_training_resumes():
    clock = Clock()
    b = ProgressBoard(clock=clock)
    b.event(-1, {"event": "phase", "phase": "loading model", "detail": "tiny on cpu"})
    clock.t += 65
    assert b.trial_line(-1) == "Base model: loading model (tiny on cpu), 1m05s"
    b.event(-1, {"event": "phase", "phase": "evaluating", "detail": "16 validation examples"})
    b.event(-1, {"event": "heartbeat", "done": 3, "total": 8})
    assert b.trial_line(-1, timed=False) == "Base model: evaluating (16 validation examples): batch 3/8 ..."
    b.event(4, {"event": "phase", "phase": "tokenising", "detail": "chat.jsonl"})  # records, not batches
    b.event(4, {"event": "heartbeat", "done": 5120, "total": 20000})
    assert b.trial_line(4, timed=False) == "Trial 4: tokenising (chat.jsonl): record 5120/20000 ..."
    b.event(2, prog(5, total=10))
    b.event(2, {"event": "phase", "phase": "evaluating", "detail": "rung 0 at step 5, 8 examples"})
    assert b.trial_line(2).startswith("Trial 2: evaluating (rung 0 at step 5, 8 examples)")
    b.event(2, {"event": "phase", "phase": "training"})
    assert b.trial_line(2).startswith("Trial 2: step 5/10")


def test_study_line_counts_done_trials_keeps_the_best_and_the_time_left():
    clock = Clock()
    b = ProgressBoard(total=10, objective="eval_accuracy", minimize=False, deadline=clock.t + 3600, clock=clock)
    clock.t += 302
    b.ended(TrialResult(number=0, state="COMPLETE", metrics={"eval_accuracy": 0.5}))
    b.ended(TrialResult(number=1, state="COMPLETE", metrics={"eval_accuracy": 0.7}))
    b.ended(TrialResult(number=2, state="COMPLETE", metrics={"eval_accuracy": 0.6}))
    b.ended(TrialResult(number=3, state="FAIL", metrics={"eval_accuracy": 0.9}))  # a failure is never the best
    # at 302 s for 4 trials, the 6 left take about 453 s, inside the budget's 54m58s
    assert b.study_line() == ("Study: 4/10 trials done, best eval_accuracy 0.7000 (trial 1), elapsed 5m02s, about 7m33s "
                              "to go, 54m58s left of the time budget")
    low = ProgressBoard(total=2, objective="eval_loss", clock=clock)
    assert low.study_line() == "Study: 0/2 trials done, best eval_loss -, elapsed 0s"
    # the time budget's clock started before the base model's 2-minute evaluation: elapsed and left add up to it
    late = ProgressBoard(total=2, objective="eval_loss", deadline=clock.t - 120 + 3600, began=clock.t - 120, clock=clock)
    assert late.study_line() == "Study: 0/2 trials done, best eval_loss -, elapsed 2m00s, 58m00s left of the time budget"
    # a non-finite value is never the best (else no finite one could ever beat it)
    ppl = ProgressBoard(total=3, objective="eval_perplexity", clock=clock)
    ppl.ended(TrialResult(number=0, state="COMPLETE", metrics={"eval_perplexity": float("inf")}))
    ppl.ended(TrialResult(number=1, state="COMPLETE", metrics={"eval_perplexity": 12.5}))
    assert ppl.study_line().startswith("Study: 2/3 trials done, best eval_perplexity 12.5000 (trial 1)")


def test_study_eta_goes_by_this_runs_pace_and_yields_to_the_time_budget():
    clock = Clock()
    b = ProgressBoard(total=6, objective="eval_loss", deadline=clock.t + 600, clock=clock)
    for n in range(3):  # a resumed study: three trials from the run before do not set the pace
        b.ended(TrialResult(number=n, state="COMPLETE", metrics={"eval_loss": 1.0 + n}), earlier=True)
    clock.t += 100
    assert "to go" not in b.study_line()  # no trial of this run has ended yet
    b.ended(TrialResult(number=3, state="PRUNED"))
    assert "about 3m20s to go, 8m20s left of the time budget" in b.study_line()  # 100 s a trial, 2 left
    clock.t += 300  # 200 s a trial now: 400 s to go, more than the 200 s the budget has left
    assert b.study_line().endswith("elapsed 6m40s, 3m20s left of the time budget")
    for n in (4, 5):
        b.ended(TrialResult(number=n, state="COMPLETE", metrics={"eval_loss": 0.5}))
    assert "to go" not in b.study_line()


def test_trials_taken_over_count_beside_num_trials():
    """--warm_start's take-overs are not trained and --num_trials does not count them: the line read "1/3, 2/4,
    3/5, 4/6, 5/6, 6/6 trials done", a total that grew with each; now the trained ones against --num_trials."""
    clock = Clock()
    b = ProgressBoard(total=2, objective="eval_loss", clock=clock)
    b.ended(TrialResult(number=0, state="COMPLETE", metrics={"eval_loss": 1.0}, taken_from="runs/a trial 3"), earlier=True)
    assert b.study_line().startswith("Study: 0/2 trials done (+1 taken over), best eval_loss 1.0000 (trial 0)")
    clock.t += 50
    b.ended(TrialResult(number=1, state="COMPLETE", metrics={"eval_loss": 2.0}))
    assert b.study_line().startswith("Study: 1/2 trials done (+1 taken over)") and "about 50s to go" in b.study_line()
    b.ended(TrialResult(number=2, state="COMPLETE", metrics={"eval_loss": 2.0}))
    assert b.study_line().startswith("Study: 2/2 trials done (+1 taken over)") and "to go" not in b.study_line()


def test_no_pace_from_configurations_the_memory_gate_ruled_out():
    """Seen: "Study: 1/4 trials done, best value -, elapsed 0s, about 0s to go" after one INFEASIBLE (not
    trained) configuration: the gate's verdicts take no time, so they set no pace."""
    clock = Clock()
    b = ProgressBoard(total=4, objective="eval_loss", clock=clock)
    b.ended(TrialResult(number=0, state="INFEASIBLE", error="not trained: estimate 4.03 GiB > budget 2.00 GiB"))
    clock.t += 1
    assert b.study_line() == "Study: 1/4 trials done, best eval_loss -, elapsed 1s"
    clock.t += 99
    b.ended(TrialResult(number=1, state="COMPLETE", metrics={"eval_loss": 1.0}))  # ran: 100 s for 2 ended, 2 left
    assert b.study_line().endswith("elapsed 1m40s, about 1m40s to go")
    b.ended(TrialResult(number=2, state="INFEASIBLE", error="CUDA out of memory at step 1"))  # ran, then OOM: counts
    assert "to go" in b.study_line()


def test_study_eta_waits_for_the_slowest_running_trial_once_none_is_left_to_start():
    # seen in a study: 5 of 6 trials done at a pace of 37 s a trial, the last one with 1m34s of training
    # left, and the study line said "about 37s to go"
    clock = Clock()
    b = ProgressBoard(total=2, objective="eval_loss", clock=clock)
    b.event(0, prog(1, total=12, step_s=40.0))  # the first step's warm-up is not the pace
    b.event(0, prog(2, total=12, step_s=10.0))  # 10 steps left at 10 s: 100 s, 90 s after the running one
    b.event(1, {"event": "phase", "phase": "loading model"})
    clock.t += 60
    assert "to go" not in b.study_line()  # trial 1's pace is unknown and nothing has ended
    b.event(1, prog(1, total=32, step_s=30.0))
    assert "to go" not in b.study_line()  # its first step (warm-up) says nothing of its pace yet
    b.event(1, prog(2, total=32, step_s=2.0))  # 30 steps left at 2 s: 60 s
    assert "about 1m30s to go" in b.study_line()  # both trials left are training: the slower one decides
    b.event(-1, prog(1, total=1000, step_s=100.0))  # the base model's evaluation is not a trial
    assert "about 1m30s to go" in b.study_line()
    b.ended(TrialResult(number=1, state="COMPLETE", metrics={"eval_loss": 1.0}))
    assert "about 1m30s to go" in b.study_line()  # the pace (60 s a trial) says less than trial 0's ETA
    b.ended(TrialResult(number=0, state="COMPLETE", metrics={"eval_loss": 0.5}))
    assert "to go" not in b.study_line()
    # with a trial still to start: it comes after the running one, at the pace
    c = ProgressBoard(total=4, objective="eval_loss", clock=clock)
    clock.t += 50
    c.ended(TrialResult(number=0, state="COMPLETE", metrics={"eval_loss": 1.0}))
    clock.t += 50
    c.ended(TrialResult(number=1, state="PRUNED"))  # 50 s a trial
    c.event(2, prog(1, total=402, step_s=5.0))
    c.event(2, prog(2, total=402, step_s=1.0))  # 400 s of training left
    assert "about 7m30s to go" in c.study_line()  # trial 2's 400 s, then trial 3's 50
    c.event(2, prog(392, total=402, step_s=0.0))  # mean step now 0.5 s: trial 2 is about to end
    assert "about 55s to go" in c.study_line()  # trial 2's last 5 s, then trial 3's 50 (it was 2 x 50 s)


def test_study_eta_is_unknown_not_0s_for_a_trial_past_its_expected_time():
    """Seen (3 trials at once, tiny model): trial 0 ended in 1 s; trials 1 and 2, still loading, had run longer than
    that mean, and the line said "about 0s to go" for 20 s before they ended."""
    clock = Clock()
    b = ProgressBoard(total=3, objective="eval_loss", clock=clock)
    for n in range(3):
        b.event(n, {"event": "phase", "phase": "loading model"})
    clock.t += 1
    b.ended(TrialResult(number=0, state="COMPLETE", metrics={"eval_loss": 1.0}))
    assert "about 0s to go" not in b.study_line()
    clock.t += 10
    assert "to go" not in b.study_line()  # both past trial 0's 1 s: unknown
    b.event(1, prog(1, total=10, step_s=5.0))
    b.event(1, prog(2, total=10, step_s=1.0))
    assert "about 8s to go" in b.study_line()  # at least trial 1's 8 steps of 1 s (trial 2, overdue, counts as 0)
    # a trial timed by its own steps still gives the line where another is past its expected time (the review of the
    # first fix: it hid the ETA whenever one trial was overdue, e.g. one in its last evaluation before any had ended)
    a = ProgressBoard(total=2, objective="eval_loss", clock=clock)
    a.event(0, prog(1, total=102, step_s=5.0))
    a.event(0, prog(2, total=102, step_s=1.0))  # 100 steps of 1 s left
    a.event(1, prog(1, total=3, step_s=5.0))
    a.event(1, prog(3, total=3, step_s=1.0))  # past its last step, no trial ended: no tail known yet
    clock.t += 2
    assert "about 1m39s to go" in a.study_line()  # (as before the first fix)
    # a stuck trial (its step running 10x its mean) is not "ending now": 97 steps are left (the re-check: "about 10s")
    c = ProgressBoard(total=2, objective="eval_loss", clock=clock)
    clock.t += 20
    c.ended(TrialResult(number=0, state="COMPLETE", metrics={"eval_loss": 1.0}))
    c.event(1, prog(1, total=100, step_s=5.0))
    c.event(1, prog(3, total=100, step_s=1.0))
    clock.t += 90
    assert "to go" not in c.study_line(), c.study_line()


def test_study_eta_does_not_count_a_running_trials_time_twice():
    """Seen: at 1/3 trials, with trial 1 at step 37 of 38, "about 9m37s to go" grew to 10m47s in 35 s, then fell
    to 22s when it ended: the pace counted the running trial's time, and then the trial again as one to go."""
    clock = Clock()
    b = ProgressBoard(total=3, objective="eval_loss", clock=clock)
    b.event(0, {"event": "phase", "phase": "loading model"})
    clock.t += 10
    b.event(0, prog(1, total=10, step_s=5.0))
    for k in range(2, 11):
        clock.t += 5
        b.event(0, prog(k, total=10, step_s=5.0))
    clock.t += 15  # its last evaluation and saving
    b.ended(TrialResult(number=0, state="COMPLETE", metrics={"eval_loss": 1.0}))  # 70 s, 15 after its last step
    b.event(1, {"event": "phase", "phase": "loading model"})
    clock.t += 5
    assert "about 2m15s to go" in b.study_line()  # trial 1: its 65 s left of a mean 70, then trial 2's 70
    b.event(1, prog(1, total=10, step_s=5.0))
    for k in range(2, 10):
        clock.t += 5
        b.event(1, prog(k, total=10, step_s=5.0))
    # trial 1 at step 9 of 10: 5 s of training, 15 of evaluation, then trial 2 at the pace (70 s a trial)
    assert b.study_line().endswith("elapsed 1m55s, about 1m30s to go")
    clock.t += 5
    b.event(1, prog(10, total=10, step_s=5.0))
    clock.t += 10
    assert b.study_line().endswith("elapsed 2m10s, about 1m15s to go")  # its last 5 s of evaluation, then 70
    clock.t += 5
    b.ended(TrialResult(number=1, state="COMPLETE", metrics={"eval_loss": 0.5}))
    assert b.study_line().endswith("elapsed 2m15s, about 1m08s to go")  # trial 2 at 135 / 2 s a trial


def test_plain_lines_come_at_a_modest_rate():
    clock = Clock()
    console, buf = plain()
    view = ProgressView(console, ProgressBoard(total=2, objective="eval_loss", clock=clock))
    with view:
        assert view.live is None  # not a terminal: no live display
        view.event(0, {"event": "phase", "phase": "starting", "detail": "importing torch"})  # the study said so
        view.event(0, {"event": "phase", "phase": "loading model"})
        view.event(0, {"event": "phase", "phase": "training", "detail": "100 optimizer steps"})
        for k in range(1, 101):  # 100 steps, 1 s each
            clock.t += 1
            view.event(0, prog(k, total=100))
            view.tick()
        view.event(0, {"event": "phase", "phase": "evaluating"})  # after the first step: phases are not printed
        clock.t += 20
        view.tick()  # 29 s since the line of step 91
        assert buf.getvalue().splitlines()[-1].startswith("Trial 0: step 91/100")
        clock.t += 1
        view.tick()  # 30 s quiet: a line
        view.ended(TrialResult(number=0, state="COMPLETE", metrics={"eval_loss": 0.9}))
    lines = buf.getvalue().splitlines()
    assert lines[0] == "Trial 0: loading model ..."
    assert lines[1] == "Trial 0: training (100 optimizer steps) ..."
    steps = [int(x.split()[3].split("/")[0]) for x in lines if " step " in x]
    assert steps == [1, 11, 21, 31, 41, 51, 61, 71, 81, 91]  # the first, then each 10% at least 10 s apart
    assert lines[-2] == "Trial 0: evaluating, 21s"
    assert lines[-1].startswith("Study: 1/2 trials done, best eval_loss 0.9000 (trial 0)")


def test_a_new_workers_load_after_the_first_step_is_shown():
    """A second slot's first trial (or a worker replaced after a crash) loads the model after another trial made
    its first step: that load can take minutes on a large model, and it was silent in plain mode."""
    clock = Clock()
    console, buf = plain()
    with ProgressView(console, ProgressBoard(total=2, clock=clock)) as view:
        view.event(0, {"event": "phase", "phase": "training", "detail": "10 optimizer steps"})
        view.event(0, prog(1, total=10))
        view.event(1, {"event": "phase", "phase": "starting", "detail": "importing torch"})
        view.event(1, {"event": "phase", "phase": "loading model", "detail": "m on cpu, kept by this worker"})
        view.event(1, {"event": "phase", "phase": "tokenising"})  # the quick phases stay unsaid
        view.event(0, {"event": "phase", "phase": "reusing the loaded model"})
    assert buf.getvalue().splitlines()[-1] == "Trial 1: loading model (m on cpu, kept by this worker) ..."


def test_a_slow_trial_gets_a_line_each_30_seconds():
    clock = Clock()
    console, buf = plain()
    with ProgressView(console, ProgressBoard(clock=clock)) as view:
        view.event(1, prog(1, total=1000, step_s=20.0))
        for k in range(2, 22):  # 20 s per step (10% is 100 steps away), ticks each 10 s: 400 s
            clock.t += 10
            view.tick()
            clock.t += 10
            view.event(1, prog(k, total=1000, step_s=20.0))
            view.tick()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 + 400 // 30  # step 1, then one each 30 s
    assert lines[-1] == "Trial 1: step 20/1000 loss 1.2340 312 tok/s ETA 5h26m"


def test_terminal_view_is_live_and_prints_no_plain_lines():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    clock = Clock()
    with ProgressView(console, ProgressBoard(total=3, objective="eval_loss", clock=clock)) as view:
        assert view.live is not None
        view.event(0, prog(1, total=10, step_s=3.0))
        assert view._render().plain.splitlines()[1] == "  Trial 0: step 1/10 loss 1.2340 312 tok/s"  # warm-up: no ETA
        view.event(0, prog(2, total=10))
        text = view._render().plain
        assert text.splitlines() == ["Study: 0/3 trials done, best eval_loss -, elapsed 0s",
                                     "  Trial 0: step 2/10 loss 1.2340 312 tok/s ETA 8s"]
        view.ended(TrialResult(number=0, state="COMPLETE", metrics={"eval_loss": 1.0}))
        assert view._render().plain == "Study: 1/3 trials done, best eval_loss 1.0000 (trial 0), elapsed 0s"




def test_a_study_in_a_log_says_what_it_does_and_how_far_each_trial_is(tiny_model, tiny_data, small_space, tmp_path, monkeypatch):
    from moopt.cli import main

    monkeypatch.setattr(ProgressView, "min_gap_s", 0.0)  # tiny trials take a second: a line at each 10%
    space = small_space
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, ["optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
                                  "--validation_file", str(tiny_data["val"]), "--output_dir", str(out),
                                  "--search_space", str(space), "--num_trials", "2"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    for first in ("Base model: loading model (", "Base model: tokenising (val.jsonl) ...",
                  "Base model: evaluating (16 validation examples) ...",
                  "Trial 0: reusing the loaded model (",  # the base model's worker holds it: nothing to load
                  "Trial 0: tokenising (train.jsonl) ...", "Trial 0: training (12 optimizer steps) ..."):
        assert any(line.startswith(first) for line in lines), (first, r.output)
    steps = [line for line in lines if line.startswith("Trial 0: step ")]
    assert steps[0].startswith("Trial 0: step 1/12 loss ") and steps[0].endswith(" tok/s")  # no ETA from warm-up
    assert all(" tok/s ETA " in line for line in steps[1:])
    assert len(steps) >= 5  # the first step and the 10% marks
    assert not any(line.startswith("Trial 1: loading model") for line in lines)  # set-up known to work by then
    assert any(line.startswith("Trial 1: step 1/12 loss ") for line in lines)
    assert any(line.startswith("Study: 1/2 trials done, best eval_loss ") for line in lines)
    assert any(line.startswith("Study: 2/2 trials done, best eval_loss ") for line in lines)


def test_progress_events_carry_tokens_per_second(tiny_model, tiny_data, tmp_path):
    """The worker's progress event: step, total, loss, tokens/s (training only), seconds of the step."""
    from moopt.config import TrialConfig
    from moopt.records import TrialSpec
    from moopt.train.recipe import NullReporter, run_trial

    class Rec(NullReporter):
        def __init__(self):
            self.events = []

        def progress(self, step, total, loss, tokens_per_s=None, step_s=None):
            self.events.append(("progress", step, total, tokens_per_s, step_s))

        def phase(self, name, detail=""):
            self.events.append(("phase", name))

        def heartbeat(self, done, total):
            self.events.append(("heartbeat", done, total))

    cfg = TrialConfig.from_dict({"training": {"num_train_epochs": 1, "batch_size": 8}, "data": {"max_seq_length": 32}})
    rec = Rec()
    res = run_trial(TrialSpec(number=0, config=cfg, base_model=str(tiny_model), train_file=str(tiny_data["train"]),
                              validation_file=str(tiny_data["val"]), output_dir=str(tmp_path / "t"), save_adapter=False,
                              device="cpu", kernels="torch"), rec)
    assert res.state == "COMPLETE", res.error
    names = [e[1] for e in rec.events if e[0] == "phase"]
    assert names == ["loading model", "tokenising", "tokenising", "training", "evaluating"]  # the training file, then validation's
    n_train = sum(1 for line in tiny_data["train"].read_text().splitlines() if line.strip())
    beats = [e[1:] for e in rec.events if e[0] == "heartbeat"]
    assert beats[:2] == [(0, n_train), (n_train, n_train)], beats  # records tokenised, of how many
    steps = [e for e in rec.events if e[0] == "progress"]
    assert [e[1] for e in steps] == list(range(1, res.total_steps + 1))
    assert all(e[3] > 0 and e[4] > 0 for e in steps)
    assert steps[-1][3] >= res.train_tokens / res.train_seconds  # evaluations excluded: no slower than the whole
    beats = [e for e in rec.events if e[0] == "heartbeat"]
    assert beats[-1][1] == beats[-1][2] == 2  # 16 validation examples in batches of 8


def test_bitsandbytes_hub_kernel_warning_is_dropped_and_its_loggers_other_messages_pass(caplog):
    """bitsandbytes' CPU backend warned at import (which ``import peft`` does) that an optional Hub
    kernel is missing: the first line of every study's console on CPUs with avx512_bf16."""
    import logging

    import moopt  # noqa: F401  (installs the filter)

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure ...", "x")
        log.warning("something else bitsandbytes says")
    assert [r.getMessage() for r in caplog.records] == ["something else bitsandbytes says"]


def test_importing_peft_after_moopt_prints_no_bitsandbytes_kernel_warning():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-P", "-c", "import moopt, peft"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "kernels-community" not in out.stderr + out.stdout


def test_a_trial_imports_bitsandbytes_without_asking_the_hub(tmp_path):
    """With Hugging Face's ``kernels`` installed (transformers >= 5.25), importing bitsandbytes on an
    avx512_bf16 CPU asks the Hub for a kernel. run_trial imports it with huggingface_hub offline first:
    no connection reaches the Hub (a listening socket here counts them), nothing is printed, the offline
    switch is put back, and bitsandbytes is imported. (On a CPU without avx512_bf16 bitsandbytes asks
    nothing either way.) A plain ``import bitsandbytes`` in its place connects twice on this CPU kind."""
    import os
    import socket
    import subprocess
    import sys
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    connections, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            connections.append(1)
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    probe = ("import logging; logging.basicConfig(); import moopt; "
             "from moopt.train.models import import_bitsandbytes_offline; import_bitsandbytes_offline(); "
             "import sys; from huggingface_hub import constants; "
             "print('offline', constants.HF_HUB_OFFLINE, 'bitsandbytes' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.getsockname()[1]}", HF_HOME=str(tmp_path / "hf"))
    try:
        out = subprocess.run([sys.executable, "-P", "-c", probe], capture_output=True, text=True, timeout=300, env=env)
    finally:
        stop.set()
        server.close()
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "offline False True"
    assert out.stderr.strip() == "", out.stderr
    assert connections == []


def test_without_a_base_model_the_live_best_goes_by_the_weights_as_the_summary_does(tmp_path):
    """multi:eval_accuracy,eval_loss with --no-baseline: the live "best" line ranked by the first objective alone
    (no fixed start to score from), while the summary chose by the weights from the worst trial's values."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from moopt.records import TrialResult, TrialState
    from moopt.search.objectives import parse_objectives
    from moopt.study.scheduler import Study

    cfg = SimpleNamespace(objectives=parse_objectives("multi:eval_accuracy,eval_loss", "0.5,0.5"), num_trials=3,
                          memory_constraint_gb=None)
    study = SimpleNamespace(cfg=cfg, out=tmp_path, console=Console(file=io.StringIO()))
    board = Study.progress(study, [], None).board
    for n, (acc, loss) in enumerate([(0.50, 3.0), (0.45, 0.5), (0.44, 2.9)]):
        board.ended(TrialResult(number=n, state=TrialState.COMPLETE, metrics={"eval_accuracy": acc, "eval_loss": loss}))
    assert board.best[1] == 1, board.best  # by accuracy alone it was trial 0
    # the summary's score: progress from the worst COMPLETE trial's values (accuracy 0.44, loss 3.0)
    assert board.best[0] == pytest.approx(0.5 * (0.45 - 0.44) / (1 - 0.44) + 0.5 * (3.0 - 0.5) / 3.0)
    # and the line says it as the value it is (it read "best eval_accuracy 0.4256 (trial 1)")
    assert (f"best value {board.best[0]:.3f} (trial 1: eval_accuracy 0.4500, eval_loss 0.5000)"
            in board.study_line()), board.study_line()


def test_a_trial_that_ends_while_the_display_draws_is_no_error():
    """The live display lists the running trials, then draws each: a trial ending in between (on the study's thread)
    raised KeyError in rich's refresh thread."""
    board = ProgressBoard(total=2)
    board.event(0, {"event": "phase", "phase": "training", "detail": "10 optimizer steps"})
    board.ended(TrialResult(number=0, state="COMPLETE", metrics={}))
    assert board.trial_line(0) == ""


def test_a_late_event_of_an_ended_trial_does_not_bring_it_back():
    """Ray sends a trial's events asynchronously: some arrive after its result. They came back on the board as a
    running trial ("Trial 0: saving (adapter), 1m01s" under "4/4 trials done"), counted in the ETA."""
    clock = Clock()
    console, buf = plain()
    view = ProgressView(console, ProgressBoard(total=2, clock=clock))
    view.event(0, prog(1, total=4))
    view.ended(TrialResult(number=0, state="COMPLETE", metrics={"eval_loss": 1.0}))
    before = buf.getvalue()
    view.event(0, {"event": "phase", "phase": "saving", "detail": "adapter"})
    view.event(0, prog(4, total=4))
    assert view.board.running() == [] and buf.getvalue() == before
    view.board.gone.discard(0)  # the scheduler starts that number again (a configuration decided again)
    view.event(0, prog(1, total=4))
    assert view.board.running() == [0]


def test_with_a_weight_of_0_the_live_best_is_the_summarys_trial_on_the_front(tmp_path):
    """Weights 0,1 on eval_loss, eval_accuracy: every trial tied on accuracy, so every score tied, and the live line kept
    trial 0, which the others dominate (lower loss); the summary picks from the Pareto front (trial 2, the earliest of
    the front's ties)."""
    import io
    import json
    from types import SimpleNamespace

    from rich.console import Console

    from moopt.records import TrialResult, TrialState
    from moopt.search.objectives import parse_objectives
    from moopt.study.scheduler import Study

    cfg = SimpleNamespace(objectives=parse_objectives("multi:eval_loss,eval_accuracy", "0,1"), num_trials=4,
                          memory_constraint_gb=None)
    (tmp_path / "baseline.json").write_text(json.dumps({"state": "COMPLETE", "metrics": {"eval_loss": 4.2, "eval_accuracy": 0.25}}))
    study = SimpleNamespace(cfg=cfg, out=tmp_path, console=Console(file=io.StringIO()))
    board = Study.progress(study, [], None).board
    for n, loss in enumerate([4.0, 3.9, 3.7, 3.7]):
        board.ended(TrialResult(number=n, state=TrialState.COMPLETE, metrics={"eval_loss": loss, "eval_accuracy": 0.5}))
    assert board.best[1] == 2, board.best
    assert board.best[0] == pytest.approx((0.5 - 0.25) / (1 - 0.25))


def test_a_rungs_evaluation_is_not_the_next_steps_time():
    """Seen after a pruning rung: "Trial 0: step 5/38 ..., step 6 running for 10s", of which 7 s were the rung's
    evaluation: the step after it is timed from the return to training."""
    clock = Clock()
    b = ProgressBoard(total=2, objective="eval_loss", clock=clock)
    for k in range(1, 6):
        clock.t += 1
        b.event(0, prog(k, total=20, step_s=1.0))
    b.event(0, {"event": "phase", "phase": "evaluating", "detail": "rung 0 at step 5, 8 examples"})
    clock.t += 30
    b.event(0, {"event": "phase", "phase": "training"})
    clock.t += 3
    assert b.trial_line(0).endswith("ETA 14s")  # 15 steps left at 1 s, the one running counted whole
    clock.t += 20
    assert b.trial_line(0).endswith("step 6 running for 23s")  # a step that is stuck still says so


def test_study_eta_with_parallel_slots_puts_the_last_trials_after_the_running_ones():
    """5 trials of 100 s on 2 slots, at 150 s with trials 2 and 3 half done: trial 4 starts when one of them ends and
    takes its 100 s (150 s to go); the pace per slot (50 s a trial) said 1m40s, and rose again after."""
    clock = Clock()
    b = ProgressBoard(total=5, objective="eval_loss", clock=clock)
    for n in (0, 1):
        b.event(n, {"event": "phase", "phase": "loading model"})
    clock.t += 100
    for n in (0, 1):
        b.ended(TrialResult(number=n, state="COMPLETE", metrics={"eval_loss": 1.0}))
    for n in (2, 3):
        b.event(n, {"event": "phase", "phase": "loading model"})
    clock.t += 50
    assert b.study_line().endswith("elapsed 2m30s, about 2m30s to go")  # 50 s of trials 2 and 3, then trial 4's 100
