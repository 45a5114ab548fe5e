"""One owner per study: a second process is refused with its holder named; the lock dies with its
owner (kill -9 included); SIGTERM ends the running trials, keeps what finished and says how to resume;
a failure before the first trial leaves nothing behind."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from click.testing import CliRunner

from moopt.cli import main
from moopt.errors import ConfigError
from moopt.journal import replay
from moopt.study.lock import LOCK_FILE, StudyLock

SPACE = """
training:
  learning_rate: {type: log_uniform, min: 1e-3, max: 3e-2}
  num_train_epochs: 3
  batch_size: 4
lora:
  r: {type: categorical, values: [4, 8]}
data:
  max_seq_length: 32
"""

HOLD = "import sys, time; from moopt.study.lock import StudyLock; StudyLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"


def args(model, data, out, space, n, *extra):
    return ["optimize", "--base_model", str(model), "--train_file", str(data["train"]), "--validation_file",
            str(data["val"]), "--output_dir", str(out), "--search_space", str(space), "--num_trials", str(n),
            "--no-baseline", *extra]


@pytest.fixture
def space(tmp_path):
    p = tmp_path / "space.yaml"
    p.write_text(SPACE)
    return p


@pytest.fixture
def holder(tmp_path):
    """A process that holds the lock of tmp_path/hpo, and kills it afterwards."""
    procs = []

    def start(out):
        p = subprocess.Popen([sys.executable, "-P", "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def snapshot(folder):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def test_a_second_process_on_a_running_study_is_refused_naming_the_holder(tiny_model, tiny_data, space, tmp_path, holder):
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, args(tiny_model, tiny_data, out, space, 1))  # a finished study to resume
    assert r.exit_code == 0, r.output
    owner = holder(out)
    before = snapshot(out)
    for extra in (["--resume"], ["--overwrite"], []):
        r = CliRunner().invoke(main, [*args(tiny_model, tiny_data, out, space, 2), *extra])
        assert r.exit_code == 2
        line = r.output.strip()
        assert "\n" not in line and "Traceback" not in line
        assert f"the study is running in another process (pid {owner.pid} on " in line and "since " in line
    assert snapshot(out) == before  # nothing touched


def test_the_lock_dies_with_its_owner_even_on_kill_9(tmp_path, holder):
    out = tmp_path / "hpo"
    owner = holder(out)
    with pytest.raises(ConfigError, match=f"pid {owner.pid}"):
        StudyLock(out).acquire()
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    with StudyLock(out):  # no clean-up needed
        assert (out / LOCK_FILE).is_file()


def test_sigterm_ends_the_running_trials_keeps_what_finished_and_resume_completes(tiny_model, tiny_data, tmp_path):
    # trials long enough (seconds of training each) that the one running when the workers are signalled still runs a second
    # later, when the study is: with 3 epochs a warm trial took 0.7 s and CI once signalled between two trials
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("num_train_epochs: 3", "num_train_epochs: 100"))
    out = tmp_path / "hpo"
    cmd = [sys.executable, "-P", "-m", "moopt.cli", *args(tiny_model, tiny_data, out, space, 4)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600  # (a loaded machine once took over 180 s for the first trial)
    while time.time() < deadline:  # SIGTERM while a trial runs after one has finished
        rec = replay(out)
        if len(rec.finished) >= 1 and rec.running:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("no trial finished with another running in 600 s")

    # the study's workers (their command line names no study: they are its children)
    pids = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "moopt.train.worker"], capture_output=True,
                          text=True).stdout.split()
    assert pids, "a trial runs in a worker"
    # as pkill or a job scheduler does, the stop reaches the worker first: the trial is the user's stop, not a FAIL
    for w in pids:
        os.kill(int(w), signal.SIGTERM)
    time.sleep(1.0)
    assert replay(out).running, "a trial still runs when the study is stopped (else this test proves nothing)"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Stopped by SIGTERM:" in stderr and "trials finished and kept; running, will rerun from the start: " in stderr
    assert "--resume" in stderr.splitlines()[-1] and "Traceback" not in stderr
    rec = replay(out)
    assert rec.running, "the running trial has a start and no end: --resume reruns it"
    assert all(e.state != "FAIL" for e in rec.finished.values()), "a trial the stop reached first is not a FAIL"
    summary = pd.read_csv(out / "trials_summary.csv").set_index("number")  # what finished is written
    assert set(summary.index[summary.state == "INTERRUPTED"]) == set(rec.running), "the stopped trial is not RUNNING"
    time.sleep(0.5)
    assert not [w for w in pids if os.path.exists(f"/proc/{w}")], "no worker outlives the study"
    r = CliRunner().invoke(main, [*args(tiny_model, tiny_data, out, space, 4), "--resume"])
    assert r.exit_code == 0, r.output
    assert sorted(replay(out).finished) == [0, 1, 2, 3]


def test_a_failure_before_the_first_trial_leaves_no_study_behind(tiny_model, tiny_data, space, tmp_path, monkeypatch):
    import moopt.study.scheduler

    def broken(*a, **k):
        raise RuntimeError("engine exploded")

    monkeypatch.setattr(moopt.study.scheduler, "Engine", broken)
    out = tmp_path / "new" / "hpo"
    with pytest.raises(RuntimeError):
        CliRunner().invoke(main, args(tiny_model, tiny_data, out, space, 2), catch_exceptions=False)
    assert not out.exists()


def test_an_interrupt_says_what_the_journal_kept_whichever_step_it_stopped(tmp_path):
    """A Ctrl-C while the end's result files were written (or a second Ctrl-C) said "Interrupted before the first
    trial; nothing was kept" of a study whose trials had all finished; and taken-over trials counted as trained."""
    from types import SimpleNamespace

    from moopt.cli import kept
    from moopt.journal import Journal

    cfg = SimpleNamespace(output_dir=str(tmp_path), num_trials=4)
    assert kept(cfg) == ("no trial had finished; nothing was kept.", "again")  # the same command (no --resume)
    j = Journal(tmp_path)
    j.append({"type": "study", "num_trials": 4})
    for n in range(4):
        j.append({"type": "trial_start", "number": n, "params": {}})
        j.append({"type": "trial_end", "number": n, "state": "COMPLETE", "metrics": {},
                  **({"taken_from": "runs/a trial 0"} if n == 0 else {})})
    j.close()
    said, then = kept(cfg)
    assert then == "report", "every trial had finished: no --resume line"
    assert said.startswith("3 of 4 trials finished and kept (and 1 taken over from --warm_start)")
    assert f"every trial had finished: `moopt report {tmp_path}` writes the result files" in said
    # a resumed study stopped mid-trial: the end's report is the earlier run's; a trial running and none finished
    j = Journal(tmp_path)
    j.append({"type": "settings", "num_trials": 6})
    j.append({"type": "trial_start", "number": 4, "params": {}})
    j.close()
    (tmp_path / "report.html").write_text("<html>")
    said, then = kept(cfg)
    assert then == "resume" and "running, will rerun from the start: 4" in said and f"an earlier run's: `moopt report {tmp_path}` brings them up" in said
    # resumed with --num_trials at the trials finished: the one still running is not rerun, the end's files to write
    j = Journal(tmp_path)
    j.append({"type": "settings", "num_trials": 3})
    j.close()
    said, then = kept(cfg)
    assert then == "report" and said.startswith("3 of 3 trials finished and kept (and 1 taken over from --warm_start); not rerun, "
                           "--num_trials is reached (INTERRUPTED in the results): 4") and "will rerun" not in said
    assert f"`moopt report {tmp_path}` writes the result files" in said
    fresh = tmp_path / "fresh"
    j = Journal(fresh)
    j.append({"type": "study", "num_trials": 4})
    j.append({"type": "trial_start", "number": 0, "params": {}})
    j.close()
    assert kept(SimpleNamespace(output_dir=str(fresh), num_trials=4)) == ("no trial had finished; running, will rerun from the start: 0.",
                                                                          "resume")


def test_the_printed_resume_command_runs_from_this_shell(tmp_path, monkeypatch):
    """Started as .venv/bin/moopt outside an activated venv, the study printed `moopt optimize ... --resume`, which
    that shell does not find; `python -m moopt.cli` printed the path of cli/__main__.py."""
    import sys

    from moopt.cli import program

    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "moopt").write_text("#!/bin/sh\n")
    (venv_bin / "moopt").chmod(0o755)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv not activated
    assert program(str(venv_bin / "moopt")) == str(venv_bin / "moopt")
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")  # activated: the short name finds the same program
    assert program(str(venv_bin / "moopt")) == "moopt"
    assert program("/x/moopt/cli/__main__.py").endswith(" -m moopt.cli")
    assert program("/x/moopt/__main__.py").endswith(" -m moopt")  # python -m moopt, as the README runs it
    assert program("scripts/run_hyperparameter_optimization.py").endswith(" scripts/run_hyperparameter_optimization.py")
    assert program("scripts/run_hyperparameter_optimization.py").split()[0] in ("python", sys.executable)


def test_a_trial_with_no_end_is_running_while_the_study_lives_and_interrupted_once_it_stopped(tmp_path, holder):
    """trials_summary.csv and report.html said RUNNING of the trial a Ctrl-C or kill stopped, days after: whether
    it runs is whether a process holds the study's lock."""
    from test_analysis import synthetic_trials, write_fake_study

    from moopt.config import TrialConfig
    from moopt.journal import Journal
    from moopt.yamlio import write_yaml

    out = write_fake_study(tmp_path / "hpo", synthetic_trials(4))
    for d in (out / "trial_results").iterdir():
        write_yaml(d / "config.yaml", TrialConfig().to_yaml())
    j = Journal(out)
    j.append({"type": "trial_start", "number": 4, "datetime_start": "2026-01-01T00:05:00", "params": {}})
    j.close()

    def report():
        r = CliRunner().invoke(main, ["report", str(out)])
        assert r.exit_code == 0, r.output
        return pd.read_csv(out / "trials_summary.csv").set_index("number").state, r.output

    state, said = report()
    assert state[4] == "INTERRUPTED" and "INTERRUPTED" not in set(state.drop(4))
    assert "1 INTERRUPTED" in said
    # and what to do about it (the report said nothing of the study's stop)
    assert said.splitlines()[-1].startswith("The study was stopped at 4 of 4 trials, 1 interrupted: `")
    # (4 trials finished of --num_trials 4: a plain --resume would not rerun the interrupted one)
    assert said.splitlines()[-1].endswith(f"optimize --output_dir {out} --resume --num_trials 5` reruns it")
    owner = holder(out)  # the study runs in another process: its trial is running
    state, said = report()
    assert state[4] == "RUNNING" and said.splitlines()[-1] == "The study is running (4 of 4 trials done): these files are its state now"
    owner.kill()
    owner.wait()
    assert report()[0][4] == "INTERRUPTED"


def test_a_resume_with_another_memory_budget_judges_the_finished_trials_by_it(tmp_path):
    """--resume --memory_constraint lower: trials that trained over it stayed COMPLETE, on the front, even named best;
    higher: configurations ruled out untrained under the old one counted as evaluated and were never tried again."""
    from dataclasses import replace
    from types import SimpleNamespace

    from test_analysis import synthetic_trials, write_fake_study

    from moopt.journal import Journal
    from moopt.records import NOT_TRAINED, TrialResult
    from moopt.report.table import load_study
    from moopt.study.scheduler import Scheduler

    out = write_fake_study(tmp_path / "hpo", synthetic_trials(12))
    before = load_study(out).table.set_index("number")
    j = Journal(out)
    j.append({"type": "settings", "updated": "2026-01-01T01:00:00", "memory_constraint_gb": 1.2})
    j.close()
    data = load_study(out)
    t = data.table.set_index("number")
    over = before.index[(before.state == "COMPLETE") & (before.peak_memory_gb > 1.2)]
    assert len(over) and (t.loc[over, "state"] == "INFEASIBLE").all()
    assert t.loc[over, "error"].str.contains("> --memory_constraint 1.2 GiB, set on a --resume").all()
    assert not set(over) & set(data.pareto) and data.best not in over

    ruled_out = TrialResult(number=0, state="INFEASIBLE", metrics={"peak_memory_gb": 0.55}, budget_gb=0.3,
                            error=f"{NOT_TRAINED}estimate 0.55 GiB > budget 0.30 GiB")
    sched = lambda budget: SimpleNamespace(cfg=SimpleNamespace(memory_constraint_gb=budget), gate=None)  # noqa: E731
    assert Scheduler.decide_again(sched(0.6), ruled_out)  # raised: proposed again, the gate decides it again
    assert not Scheduler.decide_again(sched(0.3), ruled_out)  # the same budget: the decision stands
    assert not Scheduler.decide_again(sched(0.6), replace(ruled_out, budget_gb=None))  # a journal from before


def test_a_resume_under_a_lower_budget_shows_no_best_the_budget_rules_out(tmp_path):
    """--resume --memory_constraint lower: the study line still named a trial over the new budget best while the
    results called every trial INFEASIBLE."""
    from types import SimpleNamespace

    from rich.console import Console

    from moopt.records import TrialResult
    from moopt.search.objectives import parse_objectives
    from moopt.study.scheduler import Study

    study = SimpleNamespace(cfg=SimpleNamespace(objectives=parse_objectives("eval_loss", None), num_trials=3,
                                                memory_constraint_gb=0.45), out=tmp_path,
                            console=Console(file=None, force_terminal=False))
    ends = [TrialResult(number=n, state="COMPLETE", metrics={"eval_loss": 3.8 + n / 10, "peak_memory_gb": peak})
            for n, peak in ((0, 0.48), (1, 0.40))]
    view = Study.progress(study, ends, None)
    assert view.board.best[1] == 1  # trial 0 peaked over the new budget: not the best, whatever its loss
    study.cfg.memory_constraint_gb = None
    assert Study.progress(study, ends, None).board.best[1] == 0


def test_an_overwrite_keeps_the_earlier_study_until_its_first_trial_starts(tiny_model, tiny_data, space, tmp_path,
                                                                          monkeypatch):
    """Ctrl-C during --overwrite's base-model evaluation deleted an 8-trial study ("nothing was kept"), and a failed
    start did too: the earlier study is set aside, put back where no trial of the new one started, and removed once one
    has."""
    import moopt.study.scheduler
    from moopt.study.outdir import REPLACED

    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, args(tiny_model, tiny_data, out, space, 2))
    assert r.exit_code == 0, r.output
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK_FILE}

    def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(moopt.study.scheduler.Study, "run_baseline", interrupted)
        r = CliRunner().invoke(main, [a for a in args(tiny_model, tiny_data, out, space, 3, "--overwrite")
                                      if a != "--no-baseline"])  # with a base-model evaluation
    assert r.exit_code == 130, r.output
    assert f"Interrupted before this run's first trial: the earlier study in {out} is kept as it was" in r.output
    assert "Run again with: " in r.output and "Continue with" not in r.output  # (the command line: sys.argv)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    assert after == before and not (out / REPLACED).exists()

    def broken(*a, **k):
        raise ConfigError("the engine cannot start")

    with monkeypatch.context() as m:
        m.setattr(moopt.study.scheduler, "Engine", broken)
        r = CliRunner().invoke(main, args(tiny_model, tiny_data, out, space, 3, "--overwrite"))
    assert r.exit_code == 2 and "is kept as it was" in r.output, r.output
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK_FILE} == before

    r = CliRunner().invoke(main, args(tiny_model, tiny_data, out, space, 1, "--overwrite", "--seed", "7"))
    assert r.exit_code == 0, r.output
    assert sorted(replay(out).finished) == [0] and not (out / REPLACED).exists()
    assert not (out / "trial_results" / "trial_1").exists()  # the earlier study's second trial went with it
    # a run that ends with no trial started (its time budget spent before the first) replaces it too: not left hidden
    r = CliRunner().invoke(main, [a for a in args(tiny_model, tiny_data, out, space, 2, "--overwrite", "--time_budget_hours",
                                                  "0.0001") if a != "--no-baseline"])  # the base model spends it
    assert "before the first trial could start" in " ".join(r.output.split()), r.output
    # exit 1, as a study where none completed (it was 0: a job script took it for a success; the robustness review)
    assert r.exit_code == 1 and r.output.splitlines()[-1] == "No trial ran: there is no best_config.yaml to train from"
    assert not (out / REPLACED).exists() and replay(out).finished == {} and not (out / "trial_results" / "trial_0").exists()
    r = CliRunner().invoke(main, ["report", str(out)])
    assert r.exit_code == 0 and r.output.splitlines()[-1].startswith("The study ended early at 0 of 2 trials: time budget"), r.output


def test_sighup_stops_the_study_as_sigterm_does_unless_ignored(tiny_model, tiny_data, space, tmp_path, monkeypatch):
    """A closed terminal or ssh session (SIGHUP) killed the study with no word and result files a trial behind: it
    is a stop like SIGTERM's (exit 129). Under nohup (SIGHUP ignored) it stays ignored."""
    import moopt.study.scheduler
    from moopt.study.scheduler import Stopped, _on_sigterm_raise

    was = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        previous = _on_sigterm_raise()
        with pytest.raises(Stopped, match="stopped by SIGHUP"):
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(1)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
        previous = _on_sigterm_raise()
        assert signal.SIGHUP not in previous and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    finally:
        signal.signal(signal.SIGHUP, was)

    def hung_up(self):
        raise Stopped("stopped by SIGHUP")

    monkeypatch.setattr(moopt.study.scheduler.Study, "run", hung_up)
    r = CliRunner().invoke(main, args(tiny_model, tiny_data, tmp_path / "hpo", space, 2))
    # (stopped before anything was kept: the same command again, not --resume)
    assert r.exit_code == 129 and "Stopped by SIGHUP: no trial had finished; nothing was kept.\nRun again with: " \
        in r.output, r.output


def test_a_second_ctrl_c_does_not_cut_the_stop_short(tiny_model, tiny_data, space, tmp_path, monkeypatch):
    """A second Ctrl-C while the stop ended the trials and wrote what finished left the results a trial behind (the
    interrupted trial's row missing), and with Ray a 20-line traceback under the resume command: it is ignored until
    the stop is done, and Ctrl-C's handler is put back after."""
    from moopt.study.executor import LocalExecutor

    submit, kill_all = LocalExecutor.submit, LocalExecutor.kill_all

    def started_then_interrupted(self, *a, **k):  # Ctrl-C once the first trial runs
        submit(self, *a, **k)
        raise KeyboardInterrupt

    def pressed_again(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
        kill_all(self)

    monkeypatch.setattr(LocalExecutor, "submit", started_then_interrupted)
    monkeypatch.setattr(LocalExecutor, "kill_all", pressed_again)
    handler = signal.getsignal(signal.SIGINT)
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, args(tiny_model, tiny_data, out, space, 2))
    assert r.exit_code == 130 and "Interrupted: " in r.output and "Continue with: " in r.output, r.output
    assert signal.getsignal(signal.SIGINT) is handler
    summary = pd.read_csv(out / "trials_summary.csv")  # the stop's write was not cut short
    assert list(summary.state) == ["INTERRUPTED"] and replay(out).running == [0]


def test_a_resume_refused_for_the_spaces_fixed_settings_names_them(tiny_model, tiny_data, space, tmp_path):
    """"the search space's fixed settings (--search_space)" did not say which (num_train_epochs 40 -> 2)."""
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, args(tiny_model, tiny_data, out, space, 1))
    assert r.exit_code == 0, r.output
    other = tmp_path / "other.yaml"
    other.write_text(space.read_text().replace("num_train_epochs: 3", "num_train_epochs: 2"))
    r = CliRunner().invoke(main, args(tiny_model, tiny_data, out, other, 2, "--resume"))
    assert r.exit_code == 2, r.output
    assert ("the search space's fixed settings (--search_space): training.num_train_epochs 3 -> 2"
            in " ".join(r.output.split())), r.output


def test_a_stop_after_the_base_models_evaluation_keeps_it(tiny_model, tiny_data, space, tmp_path, monkeypatch):
    """Ctrl-C between the base model's evaluation and the first trial threw the evaluation away with the folder
    (minutes on a large model), and the --resume it printed evaluated the base model again."""
    import moopt.study.scheduler

    def interrupted(self):
        raise KeyboardInterrupt

    out = tmp_path / "hpo"
    cmd = [a for a in args(tiny_model, tiny_data, out, space, 1) if a != "--no-baseline"]
    with monkeypatch.context() as m:
        m.setattr(moopt.study.scheduler.Scheduler, "run", interrupted)
        r = CliRunner().invoke(main, cmd)
    assert r.exit_code == 130, r.output
    assert "Interrupted: no trial had started; the base model's evaluation is kept (--resume starts from it)." in r.output
    assert (out / "baseline.json").is_file() and (out / "journal.jsonl").is_file()
    r = CliRunner().invoke(main, ["report", str(out)])  # stopped with nothing under way: said, and how to go on
    assert r.exit_code == 0 and r.output.splitlines()[-1].startswith("The study was stopped at 0 of 1 trials: `"), r.output
    assert r.output.splitlines()[-1].endswith(f"optimize --output_dir {out} --resume` continues it")
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(out), "--resume"])
    assert r.exit_code == 0 and "Base model (no fine-tuning" not in r.output, r.output
    assert sorted(replay(out).finished) == [0]
    r = CliRunner().invoke(main, ["report", str(out)])  # it ended: nothing to add
    assert r.exit_code == 0 and "The study" not in r.output, r.output
    # before the base model's evaluation (the study's checks): nothing kept, the folder gone, the same command again
    # (it said "nothing was kept" and then "Continue with: ... --resume")
    fresh = tmp_path / "fresh"
    cmd = [a if a != str(out) else str(fresh) for a in args(tiny_model, tiny_data, out, space, 1)]
    with monkeypatch.context() as m:
        m.setattr(moopt.study.scheduler.Study, "check_data", interrupted)
        r = CliRunner().invoke(main, cmd)
    assert r.exit_code == 130 and "Interrupted: no trial had finished; nothing was kept.\nRun again with: " in r.output
    assert "--resume" not in r.output and not fresh.exists(), r.output


def test_closing_the_terminal_stops_the_study_as_sighup_should(tiny_model, tiny_data, tmp_path):
    """The terminal closed for real (a pty's master side): SIGHUP, then every write fails with EIO. The live display's
    exit raised OSError over the stop: exit 1, a traceback, and trials_summary.csv a trial behind."""
    import pty
    import select

    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("num_train_epochs: 3", "num_train_epochs: 100"))
    out = tmp_path / "hpo"
    err = tmp_path / "err.txt"
    cmd = [sys.executable, "-P", "-m", "moopt.cli", *args(tiny_model, tiny_data, out, space, 3)]
    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal is the pty, stderr a file (to read what it said after the hangup)
        os.dup2(os.open(str(err), os.O_WRONLY | os.O_CREAT), 2)
        os.execv(sys.executable, cmd)
    seen, deadline = b"", time.time() + 180
    while b"Trial 1 started" not in seen and time.time() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    assert b"Trial 1 started" in seen, seen[-2000:]
    time.sleep(1.0)
    os.close(fd)  # the terminal goes away
    _, status = os.waitpid(pid, 0)
    said = err.read_text()
    assert os.waitstatus_to_exitcode(status) == 129 and "Traceback" not in said, said
    summary = pd.read_csv(out / "trials_summary.csv").set_index("number")
    assert summary.state[0] == "COMPLETE" and summary.state[1] == "INTERRUPTED", summary.state


def test_a_resume_after_an_overwrite_killed_before_its_first_trial_puts_the_earlier_study_back(tiny_model, tiny_data,
                                                                                              space, tmp_path):
    """kill -9 (an OOM killer) during --overwrite's base-model evaluation left the earlier study aside; the --resume
    `moopt report` advised then continued the empty replacement and removed the earlier study without a word."""
    from moopt.journal import Journal
    from moopt.study.outdir import REPLACED, set_aside_study

    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, args(tiny_model, tiny_data, out, space, 2))
    assert r.exit_code == 0, r.output
    first = pd.read_csv(out / "trials_summary.csv").datetime_start.tolist()
    set_aside_study(out)  # what the killed --overwrite left: the earlier study aside, its own header only
    j = Journal(out)
    j.append({"type": "study", "num_trials": 2, "objectives": ["eval_loss"], "weights": [1.0]})
    j.close()
    r = CliRunner().invoke(main, ["report", str(out)])
    assert r.exit_code == 0 and f"left the earlier study (2 trials finished) aside in {out / REPLACED}" in r.output, r.output
    r = CliRunner().invoke(main, args(tiny_model, tiny_data, out, space, 2))
    assert r.exit_code == 2 and "--resume puts it back and continues it" in r.output, r.output
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(out), "--resume", "--num_trials", "3"])
    assert r.exit_code == 0, r.output
    assert "left the earlier study aside; it is back (2 trials finished) and this --resume continues it" in \
        " ".join(r.output.split())
    assert not (out / REPLACED).exists() and sorted(replay(out).finished) == [0, 1, 2]
    assert pd.read_csv(out / "trials_summary.csv").datetime_start.tolist()[:2] == first  # not trained again
