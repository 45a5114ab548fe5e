"""Faults in trials are recorded with their reason; the study goes on and ends with num_trials."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pandas as pd
import pytest
from click.testing import CliRunner

from moopt.cli import main
from moopt.journal import replay


def args(model, data, out, space, n):
    return ["optimize", "--base_model", str(model), "--train_file", str(data["train"]), "--validation_file",
            str(data["val"]), "--output_dir", str(out), "--search_space", str(space), "--num_trials", str(n),
            "--no-baseline", "--optimization_objective", "multi:eval_loss,eval_accuracy"]


@pytest.fixture
def space(small_space):
    return small_space


def test_each_fault_type_is_recorded_and_the_study_goes_on(tiny_model, tiny_data, space, tmp_path, monkeypatch):
    monkeypatch.setenv("MOOPT_INJECT_FAULT", "0:exception@2,1:nan@2,2:oom@1,3:kill@1")
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, args(tiny_model, tiny_data, out, space, 5))
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "trials_summary.csv").set_index("number")
    assert df.loc[0, "state"] == "FAIL" and "injected fault" in df.loc[0, "error"]
    assert df.loc[1, "state"] == "FAIL" and "non-finite training loss" in df.loc[1, "error"]
    assert df.loc[1, "steps"] == 1  # a NaN loss stops the trial early
    assert df.loc[2, "state"] == "INFEASIBLE" and "out of memory" in df.loc[2, "error"]
    assert df.loc[3, "state"] == "FAIL" and "SIGKILL" in df.loc[3, "error"]
    assert df.loc[4, "state"] == "COMPLETE"
    assert (out / "best_config.yaml").is_file()


def test_kill_9_of_the_optimizer_then_resume_loses_and_reruns_nothing(tiny_model, tiny_data, space, tmp_path):
    out = tmp_path / "hpo"
    cmd = [sys.executable, "-m", "moopt.cli", *args(tiny_model, tiny_data, out, space, 5)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill while trial 2 runs: 2 finished, 1 running
        os.killpg(proc.pid, signal.SIGSTOP)  # the journal cannot move between reading it and the kill
        rec = replay(out)
        if len(rec.finished) >= 2 and rec.running:
            break
        os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = replay(out)
    assert before.running, "the kill should catch a trial mid-run"
    finished_before = {n: e.datetime_complete for n, e in before.finished.items()}
    r = CliRunner().invoke(main, [*args(tiny_model, tiny_data, out, space, 5), "--resume"])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())  # rich may wrap the line
    assert f"{len(before.finished)} of 5 trials finished and kept; trial" in said and "running: run again from the start" in said
    after = replay(out)
    assert sorted(after.finished) == [0, 1, 2, 3, 4] and not after.running
    for n, t in finished_before.items():
        assert after.finished[n].datetime_complete == t  # not rerun
    starts = [json.loads(line)["number"] for line in (out / "journal.jsonl").read_text().splitlines()
              if json.loads(line)["type"] == "trial_start"]
    assert sorted(set(starts)) == [0, 1, 2, 3, 4]
    assert all(starts.count(n) == 1 for n in finished_before)


def test_time_budget_stops_new_trials_and_still_writes_the_report(tiny_model, tiny_data, space, tmp_path):
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, [*args(tiny_model, tiny_data, out, space, 50), "--time_budget_hours", str(12 / 3600)])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "trials_summary.csv")
    assert 1 <= len(df) < 50
    assert "time budget" in r.output
    assert f"moopt optimize --output_dir {out} --resume --time_budget_hours H goes on" in " ".join(r.output.split())
    assert (out / "optimization_plot.png").is_file()


def test_a_full_disk_stops_the_study_in_one_line_and_the_trial_it_failed_runs_again(tiny_model, tiny_data, space,
                                                                                       tmp_path, monkeypatch):
    """A full disk was a traceback, and the trial whose adapter could not be saved stayed FAIL for good (told to
    NSGA-II as infeasible; --resume kept it) (the robustness review)."""
    import errno

    import moopt.study.checkpoint
    import moopt.study.scheduler as sch
    from moopt.records import TrialResult, TrialState

    out = tmp_path / "hpo"
    finish, hit = sch.Scheduler.finish, []

    def full(self, res):
        if res.number == 1 and not hit:
            hit.append(1)
            res = replace(res, state=TrialState.FAIL, error="SafetensorError: Error while serializing: I/O error: No "
                                                             "space left on device (os error 28)")
        return finish(self, res)

    with monkeypatch.context() as m:
        m.setattr(sch.Scheduler, "finish", full)
        r = CliRunner().invoke(main, args(tiny_model, tiny_data, out, space, 3))
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    said = " ".join(r.output.split())
    assert "Error: no space left on the device (trial 1 failed: SafetensorError" in said and "Traceback" not in said
    assert "Free some space, then continue with:" in said and said.rstrip().endswith("--resume"), r.output
    rec = replay(out)
    assert 1 not in rec.finished and 1 in rec.running  # not ended: --resume trains it again
    # the study's own write: the same line, naming the file
    save, calls = moopt.study.checkpoint.Checkpoint.save, []

    def no_room(self, path):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return save(self, path)

    with monkeypatch.context() as m:
        m.setattr(moopt.study.checkpoint.Checkpoint, "save", no_room)
        r = CliRunner().invoke(main, ["optimize", "--output_dir", str(out), "--resume"])
    assert r.exit_code == 1 and "Error: no space left on the device (writing " in r.output, r.output
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    rec = replay(out)
    assert sorted(rec.finished) == [0, 1, 2] and rec.finished[1].state == TrialState.COMPLETE
    # a worker that died without a word, its log.txt on the full disk too: under 1 MiB free, the disk (the re-check:
    # FAIL for good, "see log.txt", an empty file); with room, a failure of the trial's own
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    died = TrialResult(number=3, state=TrialState.FAIL, error="worker exited with code 1 without a result; see log.txt")
    sched = sch.Scheduler.__new__(sch.Scheduler)
    sched.study = type("S", (), {"out": out})()
    folder = out / "trial_results" / "trial_3"
    folder.mkdir(parents=True)
    with monkeypatch.context() as m:
        m.setattr(shutil, "disk_usage", lambda p: usage(10 * 2**30, 10 * 2**30 - 40 * 1024, 40 * 1024))
        assert sched.disk_full(died) == f" ({folder} has 40 KiB free, and its log.txt is empty)"
        (folder / "log.txt").write_text("Traceback ...\nValueError: a bug of its own\n")  # it said why: not the disk
        assert sched.disk_full(died) is None
        (folder / "log.txt").write_text("OSError: [Errno 28] No space left on device\n")
        assert sched.disk_full(died) == " (its log.txt says so)"
        (folder / "log.txt").write_text("")
        m.setattr(shutil, "disk_usage", lambda p: usage(10 * 2**30, 2**30, 9 * 2**30))
        assert sched.disk_full(died) is None
    assert sched.disk_full(replace(died, error="RuntimeError: No space left on device")) == ""


def test_a_resume_names_the_trials_the_earlier_time_budget_cut(tiny_model, tiny_data, space, tmp_path):
    """A --resume with more time left a trial cut at step 3 of 50 by the earlier budget (the study's best
    configuration) as it was, without a word (the robustness review): it says so, and how to train it on."""
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, args(tiny_model, tiny_data, out, space, 1))
    assert r.exit_code == 0, r.output
    lines = (out / "journal.jsonl").read_text().splitlines()
    end = next(i for i, x in enumerate(lines) if json.loads(x)["type"] == "trial_end")
    ev = json.loads(lines[end])
    lines[end] = json.dumps({**ev, "state": "PRUNED", "error": "time budget reached at step 3 of 50"})
    (out / "journal.jsonl").write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(out), "--resume", "--num_trials", "2"])
    assert r.exit_code == 0, r.output
    assert (f"Note: trial 0 was cut by the earlier run's time budget (PRUNED) and is kept as it is: moopt train --config "
            f"{out}/trial_results/trial_0/config.yaml trains it to the end") in " ".join(r.output.split()), r.output


def test_a_resume_says_which_running_trials_run_again_under_a_lower_trial_count(tiny_model, tiny_data, space, tmp_path):
    """"re-queued (were running): 0" read as "none"; and "1, 2" were said re-queued where --num_trials 2 left room for
    one of them (the robustness review)."""
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, args(tiny_model, tiny_data, out, space, 1))
    assert r.exit_code == 0, r.output
    with open(out / "journal.jsonl", "a") as f:  # as a kill -9 leaves them: started, no end
        for n in (1, 2):
            f.write(json.dumps({"type": "trial_start", "number": n, "params": {}}) + "\n")
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(out), "--resume", "--num_trials", "2"])
    said = " ".join(r.output.split())
    assert "1 of 2 trials finished and kept; trials 1, 2 were running: 1 of them runs again (--num_trials 2), the rest " \
           "stay INTERRUPTED in the results" in said, r.output


def test_when_no_queued_configuration_can_finish_in_time_a_shorter_one_is_proposed(tiny_model, tiny_data, tmp_path):
    """A generation whose remaining configurations are all too long for the time left ended the study (3 of 6 trials
    here, with 52 of 60 s left): the engine is asked for one more of the generation that can finish (here: 1 epoch,
    not 5000), until the budget or the trial count ends."""
    sp = tmp_path / "space.yaml"
    sp.write_text("training:\n  learning_rate: {type: log_uniform, min: 1e-3, max: 3e-2}\n"
                  "  num_train_epochs: {type: categorical, values: [1, 5000]}\n  batch_size: 8\n"
                  "lora:\n  r: {type: categorical, values: [4, 8]}\ndata:\n  max_seq_length: 32\n")
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, ["optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
                                  "--validation_file", str(tiny_data["val"]), "--output_dir", str(out), "--search_space",
                                  str(sp), "--num_trials", "6", "--no-baseline", "--time_budget_hours", str(90 / 3600)])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "trials_summary.csv")
    assert len(df) == 6 and set(df.params_num_train_epochs) == {1.0} and set(df.state) == {"COMPLETE"}, r.output
    assert "none of the next configurations" not in r.output


def test_the_time_budget_predicts_a_trial_from_trials_of_its_batch_size_and_kind():
    """Tokens/s grows with the micro-batch (SmolLM2 on 2 CPU cores: 28 at batch 1, 130 at batch 8), so the
    median of a study's trials (58) read a batch-1 trial of 5 epochs as fitting 8 minutes: it started, and was
    cut by the budget half-way. The prediction follows the batch size, and trials of the same quantization."""
    from moopt.config import TrialConfig
    from moopt.records import TrialResult, TrialState
    from moopt.study.scheduler import Study

    def end(batch, tps, quantization="none"):
        return TrialResult(number=0, state=TrialState.COMPLETE, tokens_per_s=tps, train_tokens=5165, train_seconds=5165 / tps,
                           duration_s=5165 / tps + 5, steps=10, total_steps=10, epochs=1.0,
                           config={"training": {"batch_size": batch}, "model": {"quantization": quantization}})

    long = TrialConfig.from_dict({"training": {"batch_size": 1, "num_train_epochs": 5}})
    short = TrialConfig.from_dict({"training": {"batch_size": 8, "num_train_epochs": 1}})
    durations = [s for b, t in ((8, 129.0), (2, 45.0), (4, 71.0), (1, 27.6)) for s in Study.duration_sample(end(b, t))]
    deadline = time.time() + 8 * 60
    assert not Study.fits_time(long, durations, deadline)  # 5 x 5165 / 28 s: about 15 minutes (the median said 7.5)
    durations += Study.duration_sample(end(8, 20.0, "8bit"))  # another kind: not mixed in
    assert Study.tokens_per_s(long, durations) == pytest.approx(27.6, rel=0.15)
    assert Study.tokens_per_s(short, durations) == pytest.approx(129.0, rel=0.15)
    assert not Study.fits_time(long, durations, deadline)
    assert Study.fits_time(short, durations, deadline)
    assert Study.fits_time(long, durations, time.time() + 20 * 60)
    # the overhead: a warm worker's trials load no model; the first (cold) trial's 60 s load is not every trial's
    cold = end(8, 129.0)
    cold.duration_s += 60
    warm = Study.duration_sample(replace(end(8, 129.0), warm=True))
    tight = time.time() + 5165 / 129.0 + 30  # an epoch at batch 8 and 30 s more
    assert not Study.fits_time(short, Study.duration_sample(cold), tight)
    assert Study.fits_time(short, Study.duration_sample(cold) + warm, tight)
    # but a trial that will start a worker (the first after a --resume, a second slot's) pays the cold start again
    assert not Study.fits_time(short, Study.duration_sample(cold) + warm, tight, cold=True)
    quant = TrialConfig.from_dict({"training": {"batch_size": 8}, "model": {"quantization": "8bit"}})
    assert Study.tokens_per_s(quant, durations) == pytest.approx(20.0)  # its own kind's one trial


def test_the_time_budget_prediction_follows_the_lora_targets_and_trusts_long_measurements():
    """q,k,v,o trains slower than q,v (12% on SmolLM2 on 2 CPU cores); a trial pruned after a few steps
    measured its tokens/s over them, the first slower, and counts for less; an epoch's tokens are those
    of trials truncated to the same max_seq_length."""
    from moopt.config import TrialConfig
    from moopt.records import TrialResult, TrialState
    from moopt.study.scheduler import Study

    def end(targets, tps, steps=40, seq=64, tokens=5165):
        return Study.duration_sample(TrialResult(
            number=0, state=TrialState.COMPLETE, tokens_per_s=tps, train_tokens=tokens, train_seconds=tokens / tps,
            duration_s=tokens / tps + 2, steps=steps, total_steps=steps, epochs=1.0,
            config={"training": {"batch_size": 8}, "lora": {"target_modules": targets}, "data": {"max_seq_length": seq}}))

    qv, attn = (TrialConfig.from_dict({"training": {"batch_size": 8}, "lora": {"target_modules": t}})
                for t in ("qv", "attention"))
    durations = [s for t, tps in (("qv", 460.0), ("attention", 380.0), ("qv", 440.0), ("attention", 390.0)) * 2
                 for s in end(t, tps)]
    # the targets' effect is shrunk toward none while few trials show it (ridge): 15% measured, 7% taken here
    assert Study.tokens_per_s(attn, durations) < 0.95 * Study.tokens_per_s(qv, durations)
    assert Study.tokens_per_s(qv, durations) == pytest.approx(450.0, rel=0.05)
    # a q,v trial pruned after 2 steps at 250 tokens/s barely moves the prediction
    assert Study.tokens_per_s(qv, durations + end("qv", 250.0, steps=2)) == pytest.approx(450.0, rel=0.05)
    # an epoch at max_seq_length 1024 holds more tokens than at 64: the 64 ones do not predict it
    long = TrialConfig.from_dict({"training": {"batch_size": 8}, "lora": {"target_modules": "qv"},
                                  "data": {"max_seq_length": 1024}})
    durations += end("qv", 450.0, seq=1024, tokens=40000)
    assert Study.fits_time(qv, durations, time.time() + 30)  # 5165 / 450 + 2 s
    assert not Study.fits_time(long, durations, time.time() + 30)  # 40000 / 450 s


def test_a_queued_configuration_that_can_finish_runs_before_one_that_cannot():
    """Near the deadline the next individual may be too long while another of its generation is short: the
    short one runs, the long one waits behind it; the study stops only when none of them can finish."""
    from types import SimpleNamespace

    from moopt.config import TrialConfig
    from moopt.records import TrialResult, TrialState
    from moopt.search.space import parse_space
    from moopt.study.scheduler import Scheduler, Study

    space = parse_space({"training": {"batch_size": {"type": "categorical", "values": [1, 8]},
                                      "num_train_epochs": {"type": "int", "min": 1, "max": 5}}}, source="<test>")
    long = TrialConfig.from_dict({"training": {"batch_size": 1, "num_train_epochs": 5}})
    short = TrialConfig.from_dict({"training": {"batch_size": 8, "num_train_epochs": 1}})
    durations = [s for b, t in ((8, 129.0), (1, 27.6)) for s in Study.duration_sample(TrialResult(
        number=0, state=TrialState.COMPLETE, tokens_per_s=t, train_tokens=5165, train_seconds=5165 / t, duration_s=5165 / t,
        steps=10, total_steps=10, epochs=1.0, config={"training": {"batch_size": b}, "model": {}}))]
    sch = Scheduler.__new__(Scheduler)
    pending = [SimpleNamespace(X=space.encode(c)) for c in (long, short)]
    offered = []  # what the engine's extend offers: one more of the generation, where the predicate accepts it

    def extend(k, allowed=None):
        more = [x for x in offered if allowed is None or allowed(x)][:k]
        pending.extend(SimpleNamespace(X=x) for x in more)
        return more

    sch.ck = SimpleNamespace(engine=SimpleNamespace(pending=pending, extend=extend))
    sch.cfg = SimpleNamespace(space=space)
    sch.study = SimpleNamespace(config_key=lambda t: repr(t.to_dict()), fits_time=Study.fits_time,
                                predicted_seconds=Study.predicted_seconds)
    sch.evaluated, sch.known, sch.durations, sch.gate, sch.next_number, sch.stop_note = {}, {}, durations, None, 0, None
    sch.executor = SimpleNamespace(warm_ready=lambda t: True)
    sch.placer = SimpleNamespace(place=lambda number, gb: "cpu", on_gpu=False)
    sch.deadline = time.time() + 8 * 60
    started = []
    sch.start = lambda idx, number, tcfg, x, key, slot: started.append((idx, tcfg.training.batch_size))
    sch.queue = [(1, -1)]
    assert sch.admit(0, -1) and started == [(1, 8)] and sch.queue == [(0, -1)] and sch.stop_note is None
    assert not sch.admit(*sch.queue.pop(0)) and started == [(1, 8)]
    assert sch.stop_note.startswith("time budget: none of the next configurations could finish")
    assert sch.stop_note.endswith("left)") and "the next needs about 13m" in sch.stop_note  # 5 epochs at batch 1
    # where none queued can finish, the engine is asked for one more of the generation that can: it runs
    sch.stop_note, offered[:] = None, [space.encode(long), space.encode(short)]
    assert sch.admit(0, -1) and started == [(1, 8), (2, 8)] and sch.queue == [(0, -1)]


def test_a_hanging_trial_is_killed_recorded_fail_with_the_reason_and_the_study_goes_on(tiny_model, tiny_data, space,
                                                                                      tmp_path, monkeypatch):
    monkeypatch.setenv("MOOPT_INJECT_FAULT", "1:hang@2")  # trial 1 sleeps forever after its first step
    out = tmp_path / "hpo"
    t0 = time.time()
    r = CliRunner().invoke(main, [*args(tiny_model, tiny_data, out, space, 3), "--stall_timeout", "8"])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "trials_summary.csv").set_index("number")
    assert df.loc[1, "state"] == "FAIL"
    assert df.loc[1, "error"].startswith("stalled: no optimizer step for ")
    assert df.loc[1, "error"].endswith("s after step 1/12 (limit 8 s: --stall_timeout)")
    assert df.loc[1, "steps"] == 1 and df.loc[1, "total_steps"] == 12
    assert df.loc[0, "state"] == "COMPLETE" and df.loc[2, "state"] == "COMPLETE"  # the study went on
    assert "Trial 1 FAIL" in r.output
    assert time.time() - t0 < 120


def test_a_trial_past_the_deadline_after_its_last_step_is_complete_not_cut(tiny_model, tiny_data, tmp_path):
    """The deadline was checked after every step, the last one too: a trial that ran 12 of 12 steps was PRUNED "time
    budget reached at step 12", its configuration no candidate for best and the advice to train it "to the end"."""
    from moopt.config import TrialConfig
    from moopt.records import TrialSpec
    from moopt.train.recipe import run_trial

    cfg = TrialConfig.from_dict({"training": {"learning_rate": 1e-3, "batch_size": 48, "num_train_epochs": 1.0},
                                 "lora": {"r": 4, "alpha": 8}, "data": {"max_seq_length": 32}})
    spec = dict(number=0, config=cfg, base_model=str(tiny_model), train_file=str(tiny_data["train"]),
                validation_file=str(tiny_data["val"]), kernels="torch", save_adapter=False, device="cpu")
    whole = run_trial(TrialSpec(**spec, output_dir=str(tmp_path / "a"), deadline=time.time() - 1, rung_fractions=()))
    assert whole.steps == whole.total_steps == 1  # the deadline passed before its one and last step ended
    assert whole.state == "COMPLETE" and whole.error is None, whole.error
    cut = run_trial(TrialSpec(**{**spec, "config": TrialConfig.from_dict({"training": {"num_train_epochs": 2.0}}, base=cfg)},
                              output_dir=str(tmp_path / "b"), deadline=time.time() - 1))
    assert cut.state == "PRUNED" and cut.steps == 1 and "time budget" in cut.error


def test_a_study_whose_reader_goes_away_goes_on_to_its_end(tiny_model, tiny_data, space, tmp_path):
    """`moopt optimize ... | head -2`: rich raised SystemExit on the closed pipe in the thread that printed a trial's
    progress; that thread also waited for the trial's result, which was lost, and the study hung forever."""
    out = tmp_path / "hpo"
    cmd = [sys.executable, "-m", "moopt.cli", *args(tiny_model, tiny_data, out, space, 2)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    proc.stdout.readline()  # a first line, then the reader is gone
    proc.stdout.close()
    try:
        rc = proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the study hung once its output was closed") from None
    assert rc == 0 and len(replay(out).finished) == 2
    assert (out / "trials_summary.csv").is_file()


def test_a_trials_tokens_per_s_leaves_its_rung_evaluations_out(tiny_model, tiny_data, tmp_path, monkeypatch):
    """train_seconds ran from the first step to the last, rung evaluations included (which eval_seconds counts too):
    tokens/s in trials_summary.csv and the report was 24% under the console's on a large validation set, and the
    benchmarks' overhead (duration - train - eval) subtracted the rung evaluations twice."""
    import moopt.train.recipe
    from moopt.config import TrialConfig
    from moopt.records import TrialSpec
    from moopt.train.recipe import run_trial

    real = moopt.train.recipe.evaluate

    def slow_evaluate(*a, **kw):
        time.sleep(0.5)
        return real(*a, **kw)

    monkeypatch.setattr(moopt.train.recipe, "evaluate", slow_evaluate)
    cfg = TrialConfig.from_dict({"training": {"learning_rate": 1e-3, "batch_size": 4, "num_train_epochs": 1.0},
                                 "lora": {"r": 4, "alpha": 8}, "data": {"max_seq_length": 32}})
    t0 = time.time()
    res = run_trial(TrialSpec(number=0, config=cfg, base_model=str(tiny_model), train_file=str(tiny_data["train"]),
                              validation_file=str(tiny_data["val"]), kernels="torch", save_adapter=False, device="cpu",
                              output_dir=str(tmp_path / "t"), rung_fractions=(0.25, 0.5)))
    wall = time.time() - t0
    assert res.state == "COMPLETE" and res.eval_seconds >= 1.5  # two rungs and the final evaluation
    assert res.setup_seconds + res.train_seconds + res.eval_seconds <= wall
    assert res.tokens_per_s == pytest.approx(res.train_tokens / res.train_seconds)
