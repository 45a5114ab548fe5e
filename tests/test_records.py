"""The typed records at the study's boundaries: the trial state, the trial-end record the journal
writes and reads back (journals written before it replay too), pruning and OOM as fields, the
engine checkpoint, and the reporters that match the recipe's Reporter protocol."""

import inspect
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from moopt.journal import JOURNAL, Journal, replay
from moopt.records import TrialResult, TrialState

ROOT = Path(__file__).resolve().parents[1]

# lines as moopt wrote them before TrialResult was the journal's record (no pruned_at_step, oom, ...)
OLD_JOURNAL = [
    {"type": "study", "created": "2026-12-01T10:00:00.000", "fingerprint": {}, "num_trials": 3,
     "objectives": ["eval_loss", "eval_accuracy"], "weights": [0.5, 0.5], "base_model": "m"},
    *({"type": "trial_start", "number": n, "datetime_start": "2026-12-01T10:00:01.000", "params": {"lr": 1e-4},
       "config": {"training": {"num_train_epochs": 1.0}}, "device": "cpu"} for n in range(3)),
    {"type": "trial_end", "number": 0, "datetime_complete": "2026-12-01T10:01:00.000",
     "datetime_start": "2026-12-01T10:00:01.000", "duration_s": 59.0, "state": "COMPLETE",
     "metrics": {"eval_loss": 1.2, "eval_accuracy": 0.4, "peak_memory_gb": 0.5}, "error": None, "steps": 20,
     "total_steps": 20, "train_tokens": 4000, "eval_tokens": 800, "train_seconds": 50.0, "tokens_per_s": 80.0,
     "backend": "torch", "backend_reason": "--kernels torch", "config": {"training": {"num_train_epochs": 1.0}},
     "epochs": 1.0},
    {"type": "trial_end", "number": 1, "datetime_complete": "2026-12-01T10:01:30.000",
     "datetime_start": "2026-12-01T10:00:01.000", "duration_s": 29.0, "state": "PRUNED",
     "metrics": {"eval_loss": 1.9, "eval_accuracy": 0.2}, "steps": 5, "total_steps": 20, "train_tokens": 1000,
     "eval_tokens": 200, "train_seconds": 12.0, "tokens_per_s": 83.3, "backend": "torch", "backend_reason": None,
     "error": "pruned at step 5 (metrics on the rungs' 16 of 64 validation examples); cannot catch trial 0: 1.90 > 1.20",
     "config": {"training": {"num_train_epochs": 1.0}}, "epochs": 1.0},
    {"type": "trial_end", "number": 2, "datetime_complete": "2026-12-01T10:02:00.000",
     "datetime_start": "2026-12-01T10:00:01.000", "duration_s": 0.0, "state": "INFEASIBLE",
     "metrics": {"peak_memory_gb": 9.0}, "error": "not trained: predicted 9.00 GiB > 4 GiB", "steps": 0,
     "total_steps": 0, "train_tokens": 0, "eval_tokens": 0, "train_seconds": 0.0, "tokens_per_s": None,
     "backend": None, "config": {"training": {"num_train_epochs": 1.0}}, "epochs": 1.0},
]


def test_the_state_prints_and_serialises_as_its_bare_value():
    assert str(TrialState.PRUNED) == "PRUNED" and f"{TrialState.FAIL}" == "FAIL"
    assert json.dumps({"state": TrialState.COMPLETE}) == '{"state": "COMPLETE"}'
    assert TrialState("INFEASIBLE") is TrialState.INFEASIBLE and TrialState.COMPLETE == "COMPLETE"
    assert TrialResult(number=0, state="PRUNED").state is TrialState.PRUNED
    with pytest.raises(ValueError):
        TrialResult(number=0, state="DONE")


def test_a_journal_written_before_the_typed_record_replays(tmp_path):
    (tmp_path / JOURNAL).write_text("".join(json.dumps(ev) + "\n" for ev in OLD_JOURNAL) + '{"type": "trial_e')
    rec = replay(tmp_path)
    assert sorted(rec.finished) == [0, 1, 2] and not rec.running
    done, pruned, infeasible = (rec.finished[n] for n in range(3))
    assert isinstance(done, TrialResult) and done.state is TrialState.COMPLETE and done.tokens_per_s == 80.0
    assert done.pruned_at_step is None and not done.pruned_by_rung and done.epochs == 1.0
    assert pruned.state is TrialState.PRUNED and pruned.pruned_at_step == 5 and pruned.pruned_by_rung
    assert pruned.error.startswith("pruned at step 5 (")  # the text stays as it was written
    assert infeasible.state is TrialState.INFEASIBLE and infeasible.backend_reason is None and not infeasible.oom
    # scripts that read ends as dicts keep working
    assert pruned["state"] == "PRUNED" and pruned.get("metrics")["eval_loss"] == 1.9 and done.get("nope", 3) == 3
    with pytest.raises(KeyError):
        done["type"]


def test_a_trial_end_round_trips_through_the_journal(tmp_path):
    end = TrialResult(number=4, state=TrialState.PRUNED, metrics={"eval_loss": 2.0}, error="pruned at step 7; slow",
                      steps=7, total_steps=30, pruned_at_step=7, prune_reason="slow", oom=False, tokens_per_s=12.5,
                      datetime_start="a", datetime_complete="b", duration_s=3.0, config={"lora": {"r": 8}}, epochs=2.0)
    j = Journal(tmp_path)
    j.append({"type": "trial_start", "number": 4, "datetime_start": "a", "params": {}, "config": {}, "device": "cpu"})
    j.append(end)
    j.close()
    line = json.loads((tmp_path / JOURNAL).read_text().splitlines()[-1])
    assert line["type"] == "trial_end" and line["state"] == "PRUNED" and line["pruned_at_step"] == 7
    assert replay(tmp_path).finished[4] == end


def test_a_time_budget_stop_is_pruned_but_not_by_a_rung():
    end = TrialResult.from_event({"number": 1, "state": "PRUNED", "error": "time budget reached at step 9"})
    assert end.state is TrialState.PRUNED and end.pruned_at_step is None and not end.pruned_by_rung


def _study(tmp_path, **kw):
    from moopt.search.objectives import parse_objectives
    from moopt.search.space import load_space
    from moopt.study.scheduler import Study, StudyConfig

    cfg = StudyConfig(base_model="m", model_path="m", train_file=str(ROOT / "data" / "train.jsonl"),
                      validation_file=str(ROOT / "data" / "val.jsonl"), output_dir=str(tmp_path / "o"), num_trials=2,
                      objectives=parse_objectives("multi:eval_loss,eval_accuracy", None),
                      space=load_space(ROOT / "config" / "demo_search_space.yaml"), seed=0, pruning_factor=2, **kw)
    return Study(cfg, console=Console(file=io.StringIO()))


def test_the_surrogate_gets_a_projection_only_for_trials_pruned_at_a_rung(tmp_path):
    study = _study(tmp_path)
    study.pruner.projected = lambda number, F: F - 100.0  # stands for the pruner's projection
    m = {"eval_loss": 1.0, "eval_accuracy": 0.5}
    by_rung = TrialResult(number=1, state="PRUNED", metrics=m, error="anything", pruned_at_step=4)
    by_time = TrialResult(number=2, state="PRUNED", metrics=m, error="pruned at step 4 (the old text)")
    F, G, Fs = study.told_values(by_rung)
    assert G == -1.0 and np.allclose(Fs, F - 100.0)
    F, G, Fs = study.told_values(by_time)
    assert G == -1.0 and np.array_equal(Fs, F)


def test_the_study_marks_the_trials_its_rung_decision_stopped(tmp_path):
    """An executor whose results say "PRUNED" and nothing else: the study knows it pruned them."""
    from moopt.config import TrialConfig
    from moopt.study.scheduler import Running

    study = _study(tmp_path)
    study.journal = []
    study.pruner.judge = lambda rung, number, F, step: (False, "cannot catch trial 0")
    assert not study.decide_rung(3, 17, {"eval_loss": 1.0, "eval_accuracy": 0.5}, 1)
    res = TrialResult(number=3, state="PRUNED", metrics={"eval_loss": 1.0, "eval_accuracy": 0.5}, error="pruned at step 17")
    tcfg = TrialConfig()
    end = study.end_trial(res, Running(0, tcfg, "k", None, "2026-12-01T10:00:00.000", 0.0))
    assert end.pruned_at_step == 17 and end.prune_reason == "cannot catch trial 0"
    assert end.error == "pruned at step 17; cannot catch trial 0"  # the summary's text, as before
    assert study.journal[-1] is end and end.config == tcfg.to_dict()


def test_an_engine_checkpoint_written_before_checkpoints_existed_loads(tmp_path):
    from moopt.search.engine import Engine
    from moopt.search.space import load_space
    from moopt.study.checkpoint import Checkpoint

    eng = Engine(load_space(ROOT / "config" / "demo_search_space.yaml"), 2, 8, 0)
    eng.ask()
    eng.assigned = {0: 0, 1: 1}  # how the study kept this map before: an attribute on the engine
    (tmp_path / "engine.pkl").write_bytes(pickle.dumps(eng))
    ck = Checkpoint.load(tmp_path / "engine.pkl")
    assert ck.assigned == {0: 0, 1: 1} and not hasattr(ck.engine, "assigned") and len(ck.engine.pending) == len(eng.pending)
    assert ck.number_of(1) == 1 and ck.number_of(5) is None
    ck.save(tmp_path / "engine.pkl")
    back = Checkpoint.load(tmp_path / "engine.pkl")
    assert back.assigned == {0: 0, 1: 1} and len(back.engine.pending) == len(ck.engine.pending)


def test_every_reporter_matches_the_recipe_protocol():
    from moopt.cli.final import ConsoleReporter
    from moopt.train.recipe import NullReporter, Reporter
    from moopt.train.worker import PipeReporter

    for name in ("progress", "rung", "phase", "heartbeat"):
        want = inspect.signature(getattr(Reporter, name))
        for cls in (ConsoleReporter, PipeReporter, NullReporter):
            got = inspect.signature(getattr(cls, name))
            assert [(p.name, p.default) for p in got.parameters.values()] == \
                [(p.name, p.default) for p in want.parameters.values()], (cls.__name__, name)
        assert getattr(ConsoleReporter, name).__annotations__ == getattr(Reporter, name).__annotations__, name


def test_resume_accepts_a_study_written_before_a_config_field_existed(tmp_path):
    """A journal's fingerprint without a field added since (data.packing) at its default is the same study;
    one whose fixed configuration really differs is refused."""
    from moopt.errors import ConfigError
    from moopt.journal import Journal
    from moopt.study.outdir import check_output_dir, study_fingerprint

    study = _study(tmp_path, resume=True)
    fp = study_fingerprint(study.cfg)
    old = json.loads(json.dumps(fp))
    del old["fixed"]["data"]["packing"]
    Journal(study.out).append({"type": "study", "fingerprint": old})
    check_output_dir(study.cfg)  # no error
    (study.out / "journal.jsonl").unlink()
    old["fixed"]["data"]["max_seq_length"] += 1
    Journal(study.out).append({"type": "study", "fingerprint": old})
    with pytest.raises(ConfigError, match="fixed"):
        check_output_dir(study.cfg)


def test_resume_compares_the_data_by_content_and_says_what_differs(tmp_path):
    """Before: the data files were compared by path only, so an edited train file under the same name was resumed
    (its later trials ranked against earlier ones on other data) and a moved copy was refused; the refusal was a
    Python list of keys."""
    import dataclasses
    import shutil

    from moopt.errors import ConfigError
    from moopt.journal import Journal
    from moopt.records import TrialResult, TrialState
    from moopt.study.outdir import check_output_dir, data_digest, study_fingerprint

    data = tmp_path / "data"
    data.mkdir()
    for f in ("train.jsonl", "val.jsonl"):
        shutil.copy(ROOT / "data" / f, data / f)
    study = _study(tmp_path, resume=True)
    cfg = dataclasses.replace(study.cfg, train_file=str(data / "train.jsonl"), validation_file=str(data / "val.jsonl"))
    header = {"type": "study", "fingerprint": study_fingerprint(cfg),
              "data_digest": {k: data_digest(getattr(cfg, k)) for k in ("train_file", "validation_file")}}
    j = Journal(study.out)
    j.append(header)
    for n in range(2):
        j.append({"type": "trial_start", "number": n, "datetime_start": "2026-12-06T10:00:00", "params": {}})
        j.append(TrialResult(number=n, state=TrialState.COMPLETE, metrics={"eval_loss": 1.0}))
    check_output_dir(cfg)  # the same study
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)  # the project folder moved: the same data, the same study
    check_output_dir(dataclasses.replace(cfg, train_file=str(moved / "train.jsonl"), validation_file=str(moved / "val.jsonl")))
    with open(data / "train.jsonl", "a") as f:  # edited in place
        f.write('{"prompt": "one more", "completion": " record"}\n')
    with pytest.raises(ConfigError) as e:
        check_output_dir(dataclasses.replace(cfg, seed=cfg.seed + 1))
    text = str(e.value)
    assert f"--train_file {data / 'train.jsonl'}: its content is not the study's (SHA-256 " in text
    assert f"--seed {cfg.seed} -> {cfg.seed + 1}" in text and "validation_file" not in text
    assert "a new --output_dir (--warm_start" in text and "--overwrite" in text
    shutil.copy(ROOT / "data" / "train.jsonl", data / "train.jsonl")
    with pytest.raises(ConfigError, match=r"--num_trials 1: .* has 2 trials finished already; give 2 or more"):
        check_output_dir(dataclasses.replace(cfg, num_trials=1))


def test_a_torn_last_line_is_cut_before_the_journal_is_appended_to_again(tmp_path):
    """After kill -9 mid-write, the next run's first event was glued onto the torn line and lost with it (a --resume's
    new weights: the live line used them, the results did not)."""
    from moopt.journal import Journal, replay

    j = Journal(tmp_path)
    j.append({"type": "study", "weights": [0.5, 0.5]})
    j.append(TrialResult(number=0, state="COMPLETE", metrics={"eval_loss": 1.0}))
    j.close()
    with open(tmp_path / "journal.jsonl", "a") as f:
        f.write('{"type": "trial_start", "number": 1, "datetime_st')  # torn
    j = Journal(tmp_path)
    j.append({"type": "settings", "weights": [0.9, 0.1]})
    j.close()
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    assert replay(tmp_path).header["weights"] == [0.9, 0.1]
    # damaged lines elsewhere are skipped, not a traceback: a bare number, undecodable bytes, an end without its state
    with open(tmp_path / "journal.jsonl", "ab") as f:
        f.write(b'42\n\xff\xfe\n{"type": "trial_end"}\n{"type": "trial_end", "number": 0}\n')
    rec = replay(tmp_path)
    assert list(rec.ends) == [0] and rec.ends[0].metrics == {"eval_loss": 1.0}


def test_a_damaged_line_inside_the_journal_is_said_and_a_torn_last_line_too(tmp_path):
    """A line damaged in the middle of journal.jsonl (trial 0's end cut in half) was skipped without a word: moopt report
    said the trial was INTERRUPTED and suggested --resume to train it again."""
    from click.testing import CliRunner

    from moopt.cli import main
    from moopt.journal import Journal, replay

    j = Journal(tmp_path)
    j.append({"type": "study", "weights": [1.0], "objectives": ["eval_loss"], "num_trials": 2})
    for n in range(2):
        j.append({"type": "trial_start", "number": n, "params": {}})
        j.append(TrialResult(number=n, state="COMPLETE", metrics={"eval_loss": 1.0 + n}))
    j.close()
    path = tmp_path / "journal.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    assert replay(tmp_path).damaged == [] and replay(tmp_path).damaged_note() is None
    path.write_text("".join(lines) + '{"type": "trial_start", "numb')  # torn last line: a kill's leftover, not said
    assert replay(tmp_path).damaged == []
    lines[2] = lines[2][: len(lines[2]) // 2] + "\n"  # trial 0's end, cut in half
    path.write_text("".join(lines))
    rec = replay(tmp_path)
    assert rec.damaged == [3] and rec.running == [0]
    assert rec.damaged_note() == ("journal.jsonl: line 3 is damaged (not an event of the study) and skipped: what it "
                                  "recorded is missing from the results (a trial whose start it was is left out; one "
                                  "whose end it was reads as interrupted)")
    # JSON that is no event (a list, an event without its type) was skipped without a word (the bad input review)
    path.write_text("".join(lines[:1]) + "[1, 2, 3]\n" + '{"number": 1, "state": "COMPLETE"}\n' + "".join(lines[1:]))
    assert replay(tmp_path).damaged == [2, 3, 5]
    from test_analysis import synthetic_trials, write_fake_study

    study = write_fake_study(tmp_path / "study", synthetic_trials(4))
    for n in range(4):  # the configuration best_config.yaml is written from (a study writes each trial's)
        (study / "trial_results" / f"trial_{n}" / "config.yaml").write_text("training: {learning_rate: 0.001}\n")
    lines = (study / "journal.jsonl").read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if '"trial_end"' in line)
    lines[at] = lines[at][:40] + "\n"
    (study / "journal.jsonl").write_text("".join(lines))
    r = CliRunner().invoke(main, ["report", str(study)])
    note = f"Note: {study / 'journal.jsonl'}: line {at + 1} is damaged (not an event of the study)"
    assert r.exit_code == 0 and note in r.output, r.output
    assert r.output.index(note) < r.output.index("Trials:"), r.output  # said before the summary that leaves it out
    # a torn last line (a crash mid-write) is said by moopt report too: a COMPLETE trial read as interrupted without
    # a word (the bad input review); a live study's last line may be one being written: not said
    good = "".join(lines[:at] + lines[at + 1:])
    (study / "journal.jsonl").write_text(good + '{"type": "trial_end", "number": 3, "sta')
    r = CliRunner().invoke(main, ["report", str(study)])
    assert r.exit_code == 0 and "is damaged" not in r.output and \
        f"its last line ({good.count(chr(10)) + 1}) was cut off mid-write (a crash or a kill)" in r.output, r.output
    assert replay(study).damaged_note(live=True) is None
    # a whole last line damaged (it ends in a newline: no torn write) is said too
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "journal.jsonl").write_text("".join(lines[:3]) + lines[3][:10] + "\n")
    assert replay(tmp_path / "last").damaged[-1] == 4  # (the last line, whole and damaged)
    # the header damaged: one line naming it, not a KeyError traceback
    lines[0] = lines[0][:30] + "\n"
    (study / "journal.jsonl").write_text("".join(lines))
    r = CliRunner().invoke(main, ["report", str(study)])
    assert r.exit_code == 2 and r.output.strip() == f"Error: {study / 'journal.jsonl'}: the study's header (its first " \
        "line) is damaged: the study's objectives and settings are lost", r.output
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(study), "--resume"])
    assert r.exit_code == 2 and r.output.strip().endswith("the study's objectives and settings are lost, so --resume "
                                                          "cannot continue it"), r.output
    (study / "journal.jsonl").write_text("".join(lines[1:]))  # the header gone (not damaged): the same
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(study), "--resume"])
    assert r.exit_code == 2 and "so --resume cannot continue it" in r.output, r.output


def test_report_on_a_missing_folder_an_empty_journal_or_another_folder_says_which(tmp_path):
    """All three said "no study journal found" (the bad input review)."""
    from click.testing import CliRunner

    from moopt.cli import main

    r = CliRunner().invoke(main, ["report", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and r.output == f"Error: {tmp_path / 'nowhere'}: no such folder\n", r.output
    (tmp_path / "journal.jsonl").write_text("")
    r = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert r.exit_code == 2 and r.output == (f"Error: {tmp_path / 'journal.jsonl'}: empty (the study recorded nothing: "
                                             "it stopped before it began)\n"), r.output
    (tmp_path / "journal.jsonl").unlink()
    r = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert r.exit_code == 2 and r.output.startswith(f"Error: {tmp_path}: not a study folder (no journal.jsonl"), r.output
    assert not (tmp_path / "search_space.yaml").exists() and not list(tmp_path.iterdir())


def test_a_whole_last_event_without_its_newline_is_kept_when_the_journal_is_opened_again(tmp_path):
    """A valid last event missing only its newline (an editor's save, a copy) was read by moopt report and then cut
    off by --resume's Journal: the trial it ended read as interrupted, without a word (the re-check)."""
    from moopt.journal import Journal, replay

    j = Journal(tmp_path)
    j.append({"type": "study", "weights": [1.0], "objectives": ["eval_loss"]})
    j.append({"type": "trial_start", "number": 0})
    j.append(TrialResult(number=0, state="COMPLETE", metrics={"eval_loss": 1.0}))
    j.close()
    path = tmp_path / "journal.jsonl"
    path.write_text(path.read_text().rstrip("\n"))
    assert replay(tmp_path).finished[0].state == "COMPLETE"
    Journal(tmp_path).close()
    assert path.read_text().endswith("}\n") and replay(tmp_path).finished[0].state == "COMPLETE"
    path.write_text(path.read_text() + '{"type": "trial_start", "numb')  # a torn one: still cut off
    Journal(tmp_path).close()
    assert path.read_text().endswith("}\n") and len(path.read_text().splitlines()) == 3
