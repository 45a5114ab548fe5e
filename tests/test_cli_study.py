"""End to end through the real CLI (click's CliRunner) on a tiny random Llama."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from moopt.cli import main
from moopt.config import load_trial_config
from moopt.journal import replay

SPACE = """
training:
  learning_rate: {type: log_uniform, min: 1e-4, max: 3e-2}
  batch_size: {type: categorical, values: [4, 8]}
  num_train_epochs: 2
lora:
  r: {type: categorical, values: [4, 8]}
  alpha: {type: categorical, values: [8, 16]}
  dropout: {type: uniform, min: 0.0, max: 0.1}
data:
  max_seq_length: 32
"""


def optimize(tiny_model, tiny_data, out, space, *extra):
    args = ["optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
            "--validation_file", str(tiny_data["val"]), "--output_dir", str(out), "--search_space", str(space), *extra]
    return CliRunner().invoke(main, args)


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    p = tmp_path_factory.mktemp("space") / "space.yaml"
    p.write_text(SPACE)
    return p


@pytest.fixture(scope="module")
def study(tiny_model, tiny_data, space, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "hpo"
    r = optimize(tiny_model, tiny_data, out, space, "--num_trials", "6", "--parallel_trials", "2",
                 "--optimization_objective", "multi:eval_loss,eval_accuracy", "--optimization_weights", "0.7,0.3")
    assert r.exit_code == 0, r.output
    return out, r.output


def test_each_trials_metrics_file_agrees_with_the_journal(study):
    """trial_results/trial_N/metrics.json holds the study's record of the trial (times, configuration, state), not
    the worker's with those fields empty, as trials_summary.csv and the journal do."""
    import json

    out, _ = study
    ends = {e["number"]: e for e in map(json.loads, (out / "journal.jsonl").read_text().splitlines())
            if e["type"] == "trial_end"}
    for n, end in ends.items():
        m = json.loads((out / "trial_results" / f"trial_{n}" / "metrics.json").read_text())
        assert m["curve"] and m["datetime_start"] and m["duration_s"] is not None and m["config"], n
        assert {k: m[k] for k in end if k != "type"} == {k: v for k, v in end.items() if k != "type"}, n


def test_study_writes_the_guides_result_layout(study):
    out, output = study
    for name in ("best_config.yaml", "trials_summary.csv", "optimization_plot.png", "pareto_front.png", "journal.jsonl"):
        assert (out / name).is_file(), name
    for png in ("optimization_plot.png", "pareto_front.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    df = pd.read_csv(out / "trials_summary.csv")
    assert list(df.number) == list(range(6))
    assert set(df.state) <= {"COMPLETE", "PRUNED", "FAIL", "INFEASIBLE"} and (df.state == "COMPLETE").sum() >= 5
    for col in ("datetime_start", "datetime_complete", "duration", "params_learning_rate", "params_r",
                "values_eval_loss", "values_eval_accuracy", "peak_memory_gb", "error"):
        assert col in df.columns, col
    assert (df.peak_memory_gb > 0).all()
    assert "Best hyperparameter configuration:" in output
    assert "Best value: " in output and "(higher is better)" in output


def test_best_config_is_a_reusable_config_of_the_best_trial(study):
    out, output = study
    cfg = load_trial_config(out / "best_config.yaml")  # sections training/lora/data parse back
    text = (out / "best_config.yaml").read_text()
    assert "num_train_epochs: 2\n" in text and f"alpha: {int(cfg.lora.alpha)}\n" in text  # not 2.0
    # a copy kept elsewhere says what it was searched on: moopt train there cannot read the study's journal
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert len(header) == 3 and header[-1].endswith("--seed 42") and "--base_model " in header[-1]
    assert "--train_file " in header[-1] and "--validation_file " in header[-1]
    df = pd.read_csv(out / "trials_summary.csv")
    best = df.loc[df[df.pareto].score.idxmax()]  # the weights pick one trial from the front
    assert bool(best.pareto)
    assert cfg.training.learning_rate == pytest.approx(best.params_learning_rate)
    assert cfg.lora.r == best.params_r
    score_line = next(line for line in output.splitlines() if line.startswith("Best value:"))
    assert float(score_line.split()[2]) == pytest.approx(best.score, abs=1e-3)
    # the live study line's last word on the best is the summary's: the same trial and value
    last = [line for line in output.splitlines() if line.startswith("Study: 6/6 trials done")][-1]
    assert f"best value {best.score:.3f} (trial {int(best.number)}: eval_loss {best.values_eval_loss:.4f}, " in last


def test_best_value_is_the_weighted_progress_from_the_base_model(study):
    out, output = study
    base = json.loads((out / "baseline.json").read_text())["metrics"]
    df = pd.read_csv(out / "trials_summary.csv")
    done = df[df.state == "COMPLETE"]
    progress_loss = (base["eval_loss"] - done.values_eval_loss) / base["eval_loss"]
    progress_acc = (done.values_eval_accuracy - base["eval_accuracy"]) / (1 - base["eval_accuracy"])
    assert list(done.score) == pytest.approx(list(0.7 * progress_loss + 0.3 * progress_acc))
    assert done.score.max() < 1  # no trial reaches loss 0 and accuracy 1: the value is not relative to the study


def test_summary_prints_the_searched_parameters_importance_and_where_results_are(study):
    out, output = study
    block = output.split("Best hyperparameter configuration:\n", 1)[1].split("\n\n", 1)[0]
    shown = json.loads(block)
    assert shown == {"training": {"learning_rate": shown["training"]["learning_rate"], "batch_size": shown["training"]["batch_size"]},
                     "lora": {"r": shown["lora"]["r"], "alpha": shown["lora"]["alpha"], "dropout": shown["lora"]["dropout"]}}
    assert "Parameter Importance:\n1. " in output
    assert f"Results in {out}/:" in output and "report.html" in output and "/adapter" in output


def test_result_files_are_readable_by_others_as_the_folder_is(study):
    import os
    import stat

    out, _ = study
    umask = os.umask(0)
    os.umask(umask)
    for f in out.rglob("*"):
        if f.is_file() and f.name != "engine.pkl":
            assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f


def test_trials_ran_in_parallel_with_overlapping_times(study):
    out, _ = study
    df = pd.read_csv(out / "trials_summary.csv", parse_dates=["datetime_start", "datetime_complete"])
    a, b = df.iloc[0], df.iloc[1]
    assert a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
    # seconds beside Optuna's Timedelta text, for a user's spreadsheet
    assert df.duration_s.tolist() == pytest.approx([(e - s).total_seconds() for s, e in zip(df.datetime_start, df.datetime_complete)],
                                                   abs=1e-3)


def test_trial_folder_has_config_metrics_curve_and_adapter(study):
    out, _ = study
    d = out / "trial_results" / "trial_0"
    m = json.loads((d / "metrics.json").read_text())
    assert m["state"] == "COMPLETE" and math.isfinite(m["metrics"]["eval_loss"])
    assert len(m["curve"]) == m["steps"] > 0 and {"step", "train_loss", "lr"} <= set(m["curve"][0])
    assert (d / "config.yaml").is_file() and (d / "adapter" / "adapter_model.safetensors").is_file()
    text = (d / "config.yaml").read_text()  # written as best_config.yaml is: the same numbers, no 2.0 beside its 2
    assert "num_train_epochs: 2\n" in text and ("alpha: 8\n" in text or "alpha: 16\n" in text)


def _with_adapter(out) -> set[int]:
    return {int(d.name.split("_")[1]) for d in (out / "trial_results").iterdir() if (d / "adapter").is_dir()}


def test_keep_adapters_best_keeps_the_front_while_running_and_the_chosen_at_the_end(study, tmp_path):
    """On a copy of the 6-trial study (every adapter kept): while a study runs, best keeps the whole front
    (the chosen trial can still change); at its end, only the chosen one. The rest of each folder stays."""
    import shutil

    from moopt.study.adapters import trim_adapters

    out = tmp_path / "hpo"
    shutil.copytree(study[0], out)
    table = pd.read_csv(out / "trials_summary.csv")
    everyone, front = set(table.number), set(table.number[table.pareto])
    import re

    best = int(re.search(r"^  trial (\d+): eval_loss", study[1], re.M).group(1))  # the chosen trial, as printed
    assert _with_adapter(out) == everyone and len(front) < len(everyone)

    running = trim_adapters(out, "best", final=False)
    assert _with_adapter(out) == front and sorted(running.removed) == sorted(everyone - front) and running.freed_bytes > 0
    end = trim_adapters(out, "best", final=True)
    assert _with_adapter(out) == {best} and end.kept == [best] and sorted(end.removed) == sorted(front - {best})
    assert all((out / "trial_results" / f"trial_{n}" / "metrics.json").is_file() for n in everyone)


def test_keep_adapters_pareto_in_a_study(tiny_model, tiny_data, space, tmp_path):
    """--keep_adapters pareto through the CLI: only the Pareto front's adapters are left, and one line says
    how many others went."""
    out = tmp_path / "hpo"
    r = optimize(tiny_model, tiny_data, out, space, "--num_trials", "4", "--no-baseline", "--keep_adapters", "pareto",
                 "--optimization_objective", "multi:eval_loss,eval_accuracy")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out / "trials_summary.csv")
    front = set(table.number[table.pareto])
    assert _with_adapter(out) == front
    gone = len(table) - len(front)
    line = [x for x in r.output.splitlines() if x.startswith("Adapters (--keep_adapters pareto)")]
    assert len(line) == 1, r.output[-1500:]
    assert (f"removed for {gone} other" in line[0]) if gone else ("none removed" in line[0]), line


def test_peft_reloads_the_adapter_and_reproduces_eval_loss(study, tiny_model, tiny_data):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from moopt.train.data import IGNORE, collate, tokenize_file

    out, _ = study
    d = out / "trial_results" / "trial_1"
    m = json.loads((d / "metrics.json").read_text())
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), d / "adapter").eval()
    val = tokenize_file(tiny_data["val"], tok, 32)
    batch = collate(val.examples, tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                             ignore_index=IGNORE)
    assert float(loss) == pytest.approx(m["metrics"]["eval_loss"], rel=1e-4)


def test_existing_study_is_not_overwritten_by_accident(study, tiny_model, tiny_data, space):
    out, _ = study
    before = (out / "journal.jsonl").read_bytes()
    r = optimize(tiny_model, tiny_data, out, space, "--num_trials", "2")
    assert r.exit_code == 2 and "--resume" in r.output and "--overwrite" in r.output
    assert (out / "journal.jsonl").read_bytes() == before
    # both: one line, before anything is said of the resume (it said "Resuming with the study's ..." first)
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(out), "--resume", "--overwrite"])
    assert r.exit_code == 2 and r.output.splitlines() == [
        "Error: --resume and --overwrite exclude each other: --resume continues the study in --output_dir, "
        "--overwrite replaces it; give one"]
    assert (out / "journal.jsonl").read_bytes() == before


def test_resume_does_not_rerun_finished_trials(tiny_model, tiny_data, space, tmp_path):
    out = tmp_path / "hpo"
    r = optimize(tiny_model, tiny_data, out, space, "--num_trials", "2", "--no-baseline")
    assert r.exit_code == 0, r.output
    first = pd.read_csv(out / "trials_summary.csv")
    r = optimize(tiny_model, tiny_data, out, space, "--num_trials", "4", "--resume", "--no-baseline")
    assert r.exit_code == 0, r.output
    after = pd.read_csv(out / "trials_summary.csv")
    assert list(after.number) == [0, 1, 2, 3]
    assert list(after.datetime_start[:2]) == list(first.datetime_start)  # not rerun
    # --resume with only the output folder: every option not given is the study's (not a time budget); the space
    # from the study's own copy (the file it began with was edited here: refining a space means editing files)
    original = space.read_text()
    space.write_text(original.replace("max: 3e-2", "max: 9e-2"))
    try:
        r = CliRunner().invoke(main, ["optimize", "--output_dir", str(out), "--resume", "--num_trials", "5"])
    finally:
        space.write_text(original)
    assert r.exit_code == 0, r.output
    assert (f"Resuming with the study's --base_model {tiny_model}, --train_file {tiny_data['train']}, --validation_file "
            f"{tiny_data['val']}, --search_space {out / 'search_space.yaml'}, --no-baseline") in r.output
    assert list(pd.read_csv(out / "trials_summary.csv").number) == [0, 1, 2, 3, 4] and not (out / "baseline.json").exists()
    # what a resume changed is journaled ("settings") and said: the results go by this run's from now on
    assert "Resumed with --num_trials 5 (was 4)" in r.output
    assert "--search_space" not in r.output.split("Resumed with", 1)[1]  # the same space: not a change
    # another option changed on a resume is said too: from now on it is the study's (a later --resume takes it)
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(out), "--resume", "--num_trials", "5",
                                  "--kernels", "torch"])
    assert r.exit_code == 0, r.output
    assert "Resumed with --kernels torch (was auto)" in r.output
    # a resume that keeps fewer adapters says it removes the earlier run's
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(out), "--resume", "--num_trials", "5",
                                  "--keep_adapters", "best"])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "Resumed with --keep_adapters best (was all)" in said
    assert ("Note: --keep_adapters best removes the adapters the earlier run kept under --keep_adapters all for the "
            "finished trials it does not keep") in said
    assert len(list(out.glob("trial_results/trial_*/adapter"))) == 1
    assert replay(out).header["num_trials"] == 5 and replay(out).header["options"]["num_trials"] == 5
    # a damaged engine.pkl (a full disk, a copy cut short) is as good as none: the journal keeps the trials (it was a
    # 30-line UnpicklingError traceback, after the resume's settings line had been journaled)
    (out / "engine.pkl").write_bytes((out / "engine.pkl").read_bytes()[:100])
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(out), "--resume", "--num_trials", "6"])
    assert r.exit_code == 0, r.output
    assert f"Note: {out / 'engine.pkl'} cannot be read (UnpicklingError: " in " ".join(r.output.split())
    assert "Traceback" not in r.output and sorted(replay(out).finished) == [0, 1, 2, 3, 4, 5]
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(tmp_path / "new"), "--validation_file", str(tiny_data["val"])])
    assert r.exit_code == 2 and "Missing option '--train_file'" in r.output and not (tmp_path / "new").exists()
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(tmp_path / "hp0"), "--resume"])  # a typo
    assert r.exit_code == 2 and f"--resume: {tmp_path / 'hp0'} holds no study to resume" in r.output
    assert not (tmp_path / "hp0").exists()
    r = optimize(tiny_model, tiny_data, out, space, "--num_trials", "4", "--overwrite", "--no-baseline", "--seed", "3")
    assert r.exit_code == 0, r.output
    assert list(pd.read_csv(out / "trials_summary.csv").datetime_start[:2]) != list(first.datetime_start)


def test_resume_puts_a_lost_baseline_back_from_the_journal_instead_of_evaluating_again(tiny_model, tiny_data, space,
                                                                                      tmp_path, monkeypatch):
    import moopt.study.scheduler

    out = tmp_path / "hpo"
    r = optimize(tiny_model, tiny_data, out, space, "--num_trials", "1")
    assert r.exit_code == 0, r.output
    kept = (out / "baseline.json").read_text()
    (out / "baseline.json").unlink()
    monkeypatch.setattr(moopt.study.scheduler.Study, "run_baseline", lambda *a, **k: pytest.fail("evaluated again"))
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(out), "--resume", "--num_trials", "2"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "baseline.json").read_text()) == json.loads(kept) and "the base model: eval_loss" in r.output
    # one that failed is tried again (it was kept as failed, for good), and the summary says it failed
    (out / "baseline.json").write_text(json.dumps({"state": "FAIL", "metrics": {}, "error": "RuntimeError: x"}))
    r = CliRunner().invoke(main, ["report", str(out)])
    assert "the worst trial (the base model's evaluation failed (--resume tries it again))" in " ".join(r.output.split())
    tried = []
    monkeypatch.setattr(moopt.study.scheduler.Study, "run_baseline", lambda *a, **k: tried.append(1))
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(out), "--resume", "--num_trials", "2"])
    assert r.exit_code == 0 and tried == [1], r.output


def test_resume_where_no_study_is_starts_one_and_says_so_only_where_one_may_start(tiny_model, tiny_data, space, tmp_path):
    """A job script that always passes --resume: its first run starts the study, with a note. Into a folder that
    holds a study's files but no journal, the note came before the refusal, saying the opposite of it."""
    other = tmp_path / "other"
    (other / "trial_results" / "trial_0").mkdir(parents=True)
    r = optimize(tiny_model, tiny_data, other, space, "--num_trials", "1", "--no-baseline", "--resume")
    assert r.exit_code == 2 and "holds no study yet" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and "holds trial_results but no study journal" in r.output
    out = tmp_path / "hpo"
    r = optimize(tiny_model, tiny_data, out, space, "--num_trials", "1", "--no-baseline", "--resume")
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"Note: {out} holds no study yet: --resume starts one\n")
    assert len(replay(out).finished) == 1


def test_guide_script_spelling_runs_the_same_command(tmp_path):

    r = subprocess.run([sys.executable, "scripts/run_hyperparameter_optimization.py", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--optimization_objective" in r.stdout
    # its usage names the script as typed (it said "... optimize [OPTIONS]", which the script refuses)
    assert r.stdout.startswith("Usage: run_hyperparameter_optimization.py [OPTIONS]\n")
    r = subprocess.run([sys.executable, "scripts/run_hyperparameter_optimization.py", "--version"], capture_output=True,
                       text=True)  # (it was "No such option '--version'")
    assert r.returncode == 0 and r.stdout.startswith("run_hyperparameter_optimization.py (moopt), version "), r.stdout
    r = subprocess.run([sys.executable, "scripts/run_hyperparameter_optimization.py", "--num_trials", "0", "--output_dir",
                        str(tmp_path / "o")], capture_output=True, text=True)
    # a usage error is one line, as moopt's own errors are (click printed the usage, a hint and a blank line above it)
    assert r.returncode == 2 and r.stderr == ("Error: Invalid value for '--num_trials' / '--num-trials': 0 is not in the "
                                              "range x>=1. See run_hyperparameter_optimization.py --help.\n")
    r = CliRunner().invoke(main, ["optimize", "--num_trails", "3"], prog_name="moopt")
    assert r.exit_code == 2 and r.output == ("Error: No such option '--num_trails'. (Did you mean one of: '--num-trials', "
                                             "'--num_trials'?) See moopt optimize --help.\n"), r.output
    r = CliRunner().invoke(main, ["optimise"], prog_name="moopt")
    assert r.exit_code == 2 and r.output.startswith("Error: No such command 'optimise'.") and \
        r.output.endswith("See moopt --help.\n"), r.output
    r = CliRunner().invoke(main, ["report", "a", "b"], prog_name="moopt")
    assert r.output == "Error: Got unexpected extra argument (b). See moopt report --help.\n", r.output
    r = CliRunner().invoke(main, ["train", "--config"], prog_name="moopt")  # click gives this error no context
    assert r.output == "Error: Option '--config' requires an argument. See moopt train --help.\n", r.output
    for flag, value, said in (("--num_trials", "ten", "'ten' is not a valid integer."),  # (click: "integer range")
                              ("--time_budget_hours", "1h", "'1h' is not a valid number.")):  # ("float range")
        r = CliRunner().invoke(main, ["optimize", "--output_dir", str(tmp_path / "o"), flag, value], prog_name="moopt")
        assert r.exit_code == 2 and said in r.output and "range" not in r.output, r.output
    r = CliRunner().invoke(main, [], prog_name="moopt")  # `moopt` alone: its help, as before (not one squashed line)
    assert r.output.startswith("Usage: moopt [OPTIONS] COMMAND [ARGS]...\n") and "Commands:\n" in r.output, r.output


BAD_INPUTS = [
    ("space", "training:\n  learning_rate: {type: log_uniform, min: 1e-5, max: 1e-3}\nlora:\n  r: 8\ntraining:\n  batch_size: 4\n",
     [], "`training` is given twice (lines 1 and 5)"),
    ("space", "lora:\n  r: 8\n  r: 16\n", [], "`r` is given twice"),
    ("space", "lora:\n  r: 016\n", [], "`016` is an octal number in YAML 1.1 (a leading 0): write 16, or quote it"),
    ("space", "training:\n  batch_size: {type: categorical, values: [2, 1:30]}\n", [], "`1:30` is a base-60 number"),
    ("space", "training:\n  batch_size: .inf\n", [], "training.batch_size: expected a finite number, got inf"),
    ("space", "training:\n  learning_rate: {type: uniform, min: 1e-5, max: .nan}\n", [], "`max` must be a finite number"),
    ("space", "lora:\n  r: {type: categorical, values: [4, 8], min: 4}\n", [], "lora.r: `min` only applies to types"),
    ("space", "training:\n  num_train_epochs: {type: int, min: 1, max: 4, step: 2}\n", [],
     "`max - min` must be a multiple of `step`"),
    ("space", "training:\n  learning_rate: {type: log_uniform, min: 1e-3, max: 1e-5}\n", [], "training.learning_rate: `min < max` must hold"),
    ("space", "lora:\n  r: {type: int, min: 0, max: 8}\n", [], "lora.r"),
    ("space", "training: {learning_rate: {type: uniform\n", [], "malformed YAML"),
    ("train", '{"prompt": "a", "completion": "b"}\n{"prompt": \n', [], "train.jsonl:2: invalid JSON"),
    ("missing", None, [], "file not found"),
    ("warm", "", [], "journal.jsonl records no study (no header line)"),  # an empty journal: was a traceback
    ("warm", '{"type": "trial_start", "number": 0}\n', [], "records no study"),
    (None, None, ["--optimization_objective", "multi:eval_loss,eval_accuracy", "--optimization_weights", "1,2,3"], "3 weights for 2 objectives"),
    (None, None, ["--ray_address", "auto"], "--ray_address needs --executor ray"),
    (None, None, ["--base_model", "/no/such/model"], "--base_model /no/such/model"),
]


@pytest.mark.parametrize("what, content, extra, fragment", BAD_INPUTS)
def test_bad_input_one_line_exit_2_nothing_written(tiny_model, tiny_data, space, tmp_path, what, content, extra, fragment):
    data = dict(tiny_data)
    sp = space
    if what == "space":
        sp = tmp_path / "bad_space.yaml"
        sp.write_text(content)
    elif what == "train":
        data["train"] = tmp_path / "train.jsonl"
        data["train"].write_text(content)
    elif what == "missing":
        data["val"] = tmp_path / "nope.jsonl"
    elif what == "warm":
        (tmp_path / "old").mkdir()
        (tmp_path / "old" / "journal.jsonl").write_text(content)
        extra = [*extra, "--warm_start", str(tmp_path / "old")]
    out = tmp_path / "out"
    r = optimize(tiny_model, data, out, sp, *extra)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], r.output
    assert "Traceback" not in r.output
    assert not out.exists()


def test_every_missing_file_is_said_at_once_by_its_option(tiny_model, space, tmp_path):
    """A command copied with the guide's paths said only the first, then the next; and "data/x.jsonl: file not found"
    named no option (the bad input review)."""
    data = {"train": tmp_path / "train.jsonl", "val": tmp_path / "val.jsonl"}
    r = optimize(tiny_model, data, tmp_path / "out", tmp_path / "space.yaml")
    assert r.exit_code == 2 and r.output.splitlines() == [f"Error: --search_space {tmp_path / 'space.yaml'}: file not found",
                                                          f"Error: --train_file {data['train']}: file not found",
                                                          f"Error: --validation_file {data['val']}: file not found"], r.output
    assert not (tmp_path / "out").exists()
    r = CliRunner().invoke(main, ["optimize", "--base_model", str(tmp_path / "no_model"), "--train_file", str(data["train"]),
                                  "--validation_file", str(tiny_model / "config.json"), "--output_dir", str(tmp_path / "out")])
    assert r.exit_code == 2 and r.output.splitlines() == [  # the model too (the re-check: said on the next run)
        f"Error: --train_file {data['train']}: file not found",
        f"Error: --base_model {tmp_path / 'no_model'}: no such file or folder, and not a hub id (owner/name) or an alias "
        "['smollm2-135m']"], r.output


@pytest.mark.parametrize("where", ["file", "under_file", "unmakeable"])
def test_an_output_dir_that_cannot_be_a_folder_is_refused_in_one_line(tiny_model, tiny_data, space, tmp_path, where):
    """A file where the folder should be (or on its path), or a folder the OS will not create (/proc): one
    line naming --output_dir and why, exit 2, no traceback (it was a NotADirectoryError / FileNotFoundError)."""
    (tmp_path / "afile").write_text("x")
    out = {"file": tmp_path / "afile", "under_file": tmp_path / "afile" / "study", "unmakeable": Path("/proc/moopt_x")}[where]
    r = optimize(tiny_model, tiny_data, out, space)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: --output_dir {out}") and "Traceback" not in r.output, r.output
    assert (tmp_path / "afile").read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    cfg = tmp_path.parent / f"{tmp_path.name}_best_config.yaml"
    cfg.write_text("training: {learning_rate: 0.01, num_train_epochs: 1}\nlora: {r: 4}\n")
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), "--base_model", str(tiny_model), "--train_file",
                                  str(tiny_data["train"]), "--validation_file", str(tiny_data["val"]), "--test_file",
                                  str(tiny_data["val"]), "--output_dir", str(out)])
    assert r.exit_code == 2 and r.output.startswith(f"Error: --output_dir {out}") and "Traceback" not in r.output, r.output


@pytest.mark.parametrize("option", ["--time_budget_hours", "--memory_constraint", "--pruning_factor", "--stall_timeout"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_numeric_options_refuse_nan_and_inf(tiny_model, tiny_data, space, tmp_path, option, value):
    """click's FloatRange lets nan through (every comparison with it is False): --time_budget_hours nan ran a
    study in which no trial could start."""
    out = tmp_path / "out"
    r = optimize(tiny_model, tiny_data, out, space, option, value)
    said = f"'{value}' is not a finite number" in r.output or (option == "--pruning_factor" and value == "inf"
                                                               and "is not in the range 1.5<=x<=10" in r.output)
    assert r.exit_code == 2 and said, r.output
    assert not out.exists()


@pytest.mark.parametrize("eta", ["1.01", "1.000000000001", "20"])
def test_a_pruning_factor_outside_1_5_to_10_is_refused(tiny_model, tiny_data, space, tmp_path, eta):
    """Just above 1 it built log(10)/log(eta) rungs (2e12 for 1 + 1e-12: the study hung building them; 1.01: a rung
    evaluation at every step, 4x the training's tokens); above 10 the first rung fell under 1/10 of the steps."""
    out = tmp_path / "out"
    r = optimize(tiny_model, tiny_data, out, space, "--pruning_factor", eta)
    assert r.exit_code == 2 and "is not in the range 1.5<=x<=10" in r.output, r.output
    assert not out.exists()


def test_trials_searching_max_seq_length_are_scored_on_the_same_validation_tokens(tiny_model, tmp_path):
    """Every trial (and the base model) evaluates the validation set cut at the space's longest max_seq_length, so a
    trial that trains at 12 tokens is not scored on a shorter cut of the completions (nor on fewer examples) than
    one at 32. Training examples whose prompt fills 12 tokens are left out of its trials, and the study says so."""
    import random

    rng = random.Random(0)
    words = ["the", "color", "of", "is", "what", "answer", ":", "?", "red", "green", "blue", "sky", "sun", "leaf"]

    def write(path, n):
        with open(path, "w") as f:
            for _ in range(n):
                prompt = " ".join(rng.choice(words) for _ in range(rng.randint(3, 16)))
                f.write(json.dumps({"prompt": prompt, "completion": " " + " ".join(rng.choice(words) for _ in range(4))}) + "\n")
        return path

    data = {"train": write(tmp_path / "train.jsonl", 24), "val": write(tmp_path / "val.jsonl", 12)}
    sp = tmp_path / "space.yaml"
    sp.write_text("training: {learning_rate: {type: log_uniform, min: 0.003, max: 0.03}, batch_size: 4, num_train_epochs: 1}\n"
                  "data:\n  max_seq_length: {type: categorical, values: [12, 32]}\n")
    out = tmp_path / "out"
    r = optimize(tiny_model, data, out, sp, "--num_trials", "4")
    assert r.exit_code == 0, r.output
    assert "examples of " in r.output and "keep no completion token at max_seq_length 12 (0 at the space's longest, 32)" in r.output
    # those whose completion (4 words and EOS, a token each) begins under 12 tokens and ends past them: said too
    prompts = [len(json.loads(line)["prompt"].split()) for line in data["train"].read_text().splitlines()]
    cut = sum(p < 12 < p + 5 for p in prompts)
    assert cut and (f"{cut} of 24 examples of {data['train']} are cut inside their completion at max_seq_length 12 "
                    "(0 at the space's longest, 32); the longest of them has") in " ".join(r.output.split()), r.output
    # the report keeps what the console said of the data, and names the files
    report = (out / "report.html").read_text()
    assert f"<dd>{data['train']} (24 examples)</dd>" in report and f"<dd>{data['val']} (12 examples)</dd>" in report
    assert "keep no completion token at max_seq_length 12 (0 at the space&#x27;s longest, 32)" in report
    runs = {n: json.loads((out / "trial_results" / f"trial_{n}" / "metrics.json").read_text()) for n in range(4)}
    lengths = {n: load_trial_config(out / "trial_results" / f"trial_{n}" / "config.yaml").data.max_seq_length for n in runs}
    assert set(lengths.values()) == {12, 32}
    assert all(runs[n]["unlabelled_train"] > 0 and runs[n]["unlabelled_val"] == 0 for n in runs if lengths[n] == 12)
    assert len({m["val_label_tokens"] for m in runs.values()}) == 1 and runs[0]["val_label_tokens"] > 0
    # moopt train of a configuration of this study (at 12 tokens) measures validation and test as the study did
    short = next(n for n in runs if lengths[n] == 12)
    # (the study's base model and data files are the defaults)
    r = CliRunner().invoke(main, ["train", "--config", str(out / "trial_results" / f"trial_{short}" / "config.yaml"),
                                  "--test_file", str(data["val"]), "--output_dir", str(tmp_path / "final")])
    assert r.exit_code == 0, r.output
    assert f"Base model: {tiny_model} (the study's)" in r.output
    assert f"Training data: {data['train']} (the study's)" in r.output and f"Validation data: {data['val']} (the study's)" in r.output
    final = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert final["val_label_tokens"] == runs[0]["val_label_tokens"]
    assert final["metrics"]["test_loss"] == final["metrics"]["eval_loss"]  # same file, same cut
    study_val = json.loads((tmp_path / "final" / "final_metrics.json").read_text())["study_validation"]
    assert study_val["eval_loss"] == pytest.approx(runs[short]["metrics"]["eval_loss"], rel=1e-4)  # the trial, repeated
    # a study begun before the shared length was journaled (no eval_max_seq_length in its header) goes on as it
    # began: each trial evaluated at its own max_seq_length
    journal = out / "journal.jsonl"
    lines = journal.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["eval_max_seq_length"] == 32
    del header["eval_max_seq_length"]
    journal.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    r = optimize(tiny_model, data, out, sp, "--num_trials", "8", "--resume")
    assert r.exit_code == 0, r.output
    later = {n: json.loads((out / "trial_results" / f"trial_{n}" / "metrics.json").read_text()) for n in range(4, 8)}
    own = {n: load_trial_config(out / "trial_results" / f"trial_{n}" / "config.yaml").data.max_seq_length for n in later}
    assert 12 in own.values()  # else the test shows nothing
    full = runs[0]["val_label_tokens"]
    assert all((m["val_label_tokens"] < full) == (own[n] == 12) for n, m in later.items())


def test_data_that_keeps_no_completion_token_at_the_longest_max_seq_length_is_refused(tiny_model, tiny_data, tmp_path):
    """The color prompts are 9 tokens: at max_seq_length 8 none keeps its completion (trials trained on nothing
    and scored eval_loss 0.0000). Refused before anything runs, one line naming the file and what to change."""
    sp = tmp_path / "space.yaml"
    sp.write_text("training: {learning_rate: 0.01, num_train_epochs: 1}\ndata: {max_seq_length: 8}\n")
    out = tmp_path / "out"
    r = optimize(tiny_model, tiny_data, out, sp)
    assert r.exit_code == 2, r.output
    assert r.output.strip() == (f"Error: {tiny_data['train']}: no example keeps a completion token within max_seq_length 8 "
                                "(in all 48, the prompt fills the first 8 tokens, and sequences are cut on the right): "
                                "raise data.max_seq_length or shorten the prompts"), r.output
    assert not out.exists()
    cfg = tmp_path / "best_config.yaml"  # moopt train: the same line (it printed the trial's traceback)
    cfg.write_text("training: {learning_rate: 0.01, num_train_epochs: 1}\ndata: {max_seq_length: 8}\n")
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), "--base_model", str(tiny_model), "--train_file",
                                  str(tiny_data["train"]), "--validation_file", str(tiny_data["val"]), "--test_file",
                                  str(tiny_data["val"]), "--output_dir", str(out)])
    assert r.exit_code == 2 and r.output.startswith(f"Error: {tiny_data['train']}: no example keeps") and "Traceback" not in r.output
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the Triton kernels run")
def test_triton_kernels_without_cuda_or_the_interpreter_are_refused_before_anything_runs(
        tiny_model, tiny_data, space, tmp_path, monkeypatch):
    """--kernels triton on a CPU without TRITON_INTERPRET failed every trial (after the base model's evaluation)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "out"
    r = optimize(tiny_model, tiny_data, out, space, "--kernels", "triton")
    assert r.exit_code == 2, r.output
    assert r.output.strip() == ("Error: --kernels triton: this machine has no CUDA device, and on a CPU the Triton kernels "
                                "run only under TRITON_INTERPRET=1 (Triton's interpreter, slow); --kernels auto runs "
                                "torch here")
    assert not out.exists()
    final = CliRunner().invoke(main, ["train", "--config", str(space), "--base_model", str(tiny_model), "--kernels", "triton",
                                      "--train_file", str(tiny_data["train"]), "--validation_file", str(tiny_data["val"]),
                                      "--test_file", str(tiny_data["val"]), "--output_dir", str(tmp_path / "final")])
    assert final.exit_code == 2 and "--kernels triton: this machine has no CUDA device" in final.output
    assert not (tmp_path / "final").exists()


def test_a_search_space_given_as_a_config_is_named_as_such(space, tmp_path):
    """moopt train / estimate-memory --config takes one configuration; a search space there listed every range
    as "expected a number, got {'type': ...}"."""
    for args in (["train", "--config", str(space), "--train_file", str(space), "--validation_file", str(space),
                  "--test_file", str(space), "--output_dir", str(tmp_path / "out")],
                 ["estimate-memory", "--config", str(space), "--device", "cpu"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, r.output
        assert ": training.learning_rate, " in r.output and "are search ranges ({type: ...}): this is a search space; " \
               "--config takes one configuration" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "out").exists()
    empty = tmp_path / "empty.yaml"  # (a failed copy: it trained every default)
    empty.write_text("# nothing\n")
    r = CliRunner().invoke(main, ["estimate-memory", "--config", str(empty), "--device", "cpu"])
    assert r.exit_code == 2 and r.output.strip() == f"Error: {empty}: empty (no training, lora or data section); " \
        "--config takes one configuration, such as a study's best_config.yaml", r.output


def test_validation_or_test_records_that_also_appear_in_training_are_said(tiny_model, tiny_data, tmp_path):
    """A validation set copied from (or overlapping) the training set makes the objectives reward memorising it;
    the same for moopt train's test set, which should measure what the search never saw."""
    sp = tmp_path / "space.yaml"
    sp.write_text("training: {learning_rate: 0.01, num_train_epochs: 1}\ndata: {max_seq_length: 32}\n")
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"prompt": f"the color of {t} is", "completion": " red"}
                                           | ({"text": "red"} if t == "sky" else {})) + "\n"  # one of two formats
                                for t in ("sky", "sun", "sea")))
    mixed = (f"Note: 1 of 3 records of {held_out} have the fields of prompt+completion and text: they are read as "
             "prompt+completion; their `text` is not trained on")
    copied = tmp_path / "copied.jsonl"
    copied.write_text("".join(tiny_data["train"].read_text().splitlines(keepends=True)[:5]) + held_out.read_text())
    for val, said in ((held_out, None), (copied, f"Note: 5 of 8 examples of {copied} also appear in {tiny_data['train']}")):
        r = optimize(tiny_model, {"train": tiny_data["train"], "val": val}, tmp_path / val.stem, sp, "--no-baseline")
        assert r.exit_code == 0, r.output
        assert (said in r.output) if said else ("also appear in" not in r.output), r.output
        assert (mixed in r.output) == (val == held_out), r.output  # and a record with the fields of two formats
    r = CliRunner().invoke(main, ["train", "--config", str(tmp_path / "held_out" / "best_config.yaml"), "--base_model",
                                  str(tiny_model), "--train_file", str(tiny_data["train"]), "--validation_file",
                                  str(held_out), "--test_file", str(copied), "--output_dir", str(tmp_path / "final")])
    assert r.exit_code == 0, r.output
    assert f"Note: 5 of 8 examples of {copied} also appear in {tiny_data['train']}: the test metrics are not " \
           "held-out ones for them" in r.output
    assert f"also appear in {held_out}" in r.output  # the 3 held-out validation records are in the test file too
    assert mixed in r.output


def test_report_checks_the_studys_space_file_before_writing_and_puts_a_lost_one_back(study, tmp_path):
    """search_space.yaml edited into bad YAML (or a list): a traceback after half the result files were rewritten;
    deleted: the summary said "nothing was searched" (the bad input review)."""
    import shutil

    import yaml

    out, _ = study
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("study.lock"))
    space = copy / "search_space.yaml"
    kept = yaml.safe_load(space.read_text())
    space.unlink()
    r = CliRunner().invoke(main, ["report", str(copy)])
    assert r.exit_code == 0 and f"Note: {space}: missing; put back from the journal" in r.output, r.output
    assert yaml.safe_load(space.read_text()) == kept and "nothing was searched" not in r.output
    assert "Best hyperparameter configuration:\n{\n" in r.output
    # a study from before the journal kept the file: rebuilt from the space's record, 16 and 2 as written (the re-check:
    # 16.0, 2.0)
    journal = copy / "journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    head = json.loads(lines[0])
    del head["space_file"]
    journal.write_text(json.dumps(head) + "\n" + "".join(lines[1:]))
    space.unlink()
    r = CliRunner().invoke(main, ["report", str(copy)])
    assert r.exit_code == 0 and yaml.safe_load(space.read_text()) == kept, space.read_text()
    assert "the order of a categorical's values is inferred again" in " ".join(r.output.split())
    journal.write_text("".join(lines))
    # reformatted only (a comment, 1e-4 for 0.0001, which YAML 1.1 reads as a string): the same space, taken
    text = yaml.safe_dump(kept)
    assert "min: 0.0001" in text
    space.write_text("# my notes\n" + text.replace("min: 0.0001", "min: 1e-4"))
    r = CliRunner().invoke(main, ["report", str(copy)])
    assert r.exit_code == 0 and f"Note: {space}: the same space as the study's, written otherwise: rewritten" in \
        " ".join(r.output.split()), r.output
    assert yaml.safe_load(space.read_text()) == kept
    # edited into another space that loads: refused, not followed (the importance took the edit's names)
    edited = yaml.safe_load(space.read_text())
    edited["training"]["learning_rate"]["max"] = 0.05
    space.write_text(yaml.safe_dump(edited))
    r = CliRunner().invoke(main, ["report", str(copy)])
    assert r.exit_code == 2 and r.output.startswith(f"Error: {space}: not the space this study searched"), r.output
    for given in ([], ["--search_space", str(tmp_path / "same.yaml")]):  # (given the study's own space: checked too)
        (tmp_path / "same.yaml").write_text(yaml.safe_dump(kept))
        r = CliRunner().invoke(main, ["optimize", "--output_dir", str(copy), "--resume", *given])
        assert r.exit_code == 2 and r.output.startswith(f"Error: {space}: not the space this study searched") and \
            "(--resume puts it back from the journal)" in r.output, r.output
    # --resume where the copy is gone and the file the study began from has moved: put back first (it said
    # "--search_space <the original>: file not found")
    space.unlink()
    head = {**json.loads(lines[0])}
    head["options"] = {**head["options"], "search_space": str(tmp_path / "moved_away.yaml")}
    journal.write_text(json.dumps(head) + "\n" + "".join(lines[1:]))
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(copy), "--resume", "--num_trials", "6"])
    assert r.exit_code == 0 and f"Note: {space}: missing; put back from the journal" in r.output, r.output
    assert yaml.safe_load(space.read_text()) == kept
    space.write_text(yaml.safe_dump(kept))
    for bad, said in (("training:\n  lr: [1\n", "malformed YAML"), ("- 1\n- 2\n", "")):
        space.write_text(bad)
        before = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
        r = CliRunner().invoke(main, ["report", str(copy)])
        assert r.exit_code == 2 and len(r.output.splitlines()) == 1, r.output
        assert r.output.startswith(f"Error: {space}") and said in r.output and "puts it back from the journal" in r.output
        assert {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()} == before  # nothing rewritten


def test_report_rebuilds_from_the_journal_without_the_trial_folders_and_says_when_it_cannot_write(study, tmp_path,
                                                                                                    monkeypatch):
    """The journal is the source of truth: with the best trial's folder removed, report read its config.yaml and
    stopped ("No such file or directory"); on a read-only copy it was a PermissionError traceback."""
    import shutil

    out, _ = study
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("study.lock"))
    best = int(pd.read_csv(out / "trials_summary.csv").sort_values("score").number.iloc[-1])
    shutil.rmtree(copy / "trial_results" / f"trial_{best}")
    (copy / "best_config.yaml").unlink()
    r = CliRunner().invoke(main, ["report", str(copy)])
    assert r.exit_code == 0, r.output
    assert (copy / "best_config.yaml").read_text() == (out / "best_config.yaml").read_text()
    # baseline.json lost: every score started from the worst trial instead, without a word (the README review);
    # the journal keeps the base model's evaluation, and report writes the file back
    (copy / "baseline.json").unlink()
    r = CliRunner().invoke(main, ["report", str(copy)])
    assert r.exit_code == 0 and "the base model: eval_loss" in r.output, r.output
    assert json.loads((copy / "baseline.json").read_text()) == json.loads((out / "baseline.json").read_text())
    assert pd.read_csv(copy / "trials_summary.csv").score.tolist() == pd.read_csv(out / "trials_summary.csv").score.tolist()
    # a study from before the journal kept it: said, not silent
    lines = (copy / "journal.jsonl").read_text().splitlines(keepends=True)
    (copy / "journal.jsonl").write_text("".join(x for x in lines if '"type": "baseline"' not in x))
    (copy / "baseline.json").unlink()
    r = CliRunner().invoke(main, ["report", str(copy)])
    assert r.exit_code == 0 and "no base model evaluation: baseline.json is missing" in r.output, r.output

    import moopt.yamlio

    def refuse(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(moopt.yamlio, "atomic_write_text", refuse)
    r = CliRunner().invoke(main, ["report", str(copy)])
    assert r.exit_code == 2 and r.output.startswith(f"Error: {copy}: cannot write the result files (Permission denied")

    def full(path, *a, **k):  # a full disk: "(No space left on device: None); copy the study somewhere writable"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(moopt.yamlio, "atomic_write_text", full)
    r = CliRunner().invoke(main, ["report", str(copy)])
    assert r.exit_code == 2 and r.output == (f"Error: {copy}: cannot write the result files: no space left on the device; "
                                             f"free some, then run moopt report {copy} again\n"), r.output
    monkeypatch.setattr(moopt.yamlio, "atomic_write_text", refuse)
    import moopt.study.lock  # a read-only mount: the study lock's file cannot be opened (an OSError traceback)

    def read_only(path, *a, **k):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(moopt.study.lock, "is_live", read_only)
    r = CliRunner().invoke(main, ["report", str(copy)])
    assert r.exit_code == 2 and r.output.startswith(f"Error: {copy}: cannot write the result files (Read-only file "
                                                    "system"), r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    # a file given for the folder: one line (it was a NotADirectoryError traceback from the study lock's check)
    (tmp_path / "a_file").write_text("x")
    r = CliRunner().invoke(main, ["report", str(tmp_path / "a_file")])
    assert r.exit_code == 2 and r.output.strip() == f"Error: {tmp_path / 'a_file'}: a file, not a study folder (moopt " \
        "report takes the --output_dir of a study)", r.output


def test_a_folder_with_files_named_as_a_studys_but_no_journal_is_not_written_over(tiny_model, tiny_data, space, tmp_path):
    """A failed start (SIGTERM, a bad --seed) in such a folder removed the user's report.html, best_config.yaml and
    trial_results/ (the clean-up of a study that never began), and a run that went on wrote over them."""
    out = tmp_path / "mine"
    (out / "trial_results" / "old").mkdir(parents=True)
    (out / "trial_results" / "old" / "keep.txt").write_text("mine")
    (out / "report.html").write_text("<html>mine</html>")
    (out / "notes.txt").write_text("n")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = optimize(tiny_model, tiny_data, out, space, "--num_trials", "1")
    assert r.exit_code == 2 and r.output.startswith(f"Error: {out}: holds report.html, trial_results but no study "
                                                    "journal (journal.jsonl); moopt would write over them"), r.output
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # other files are no obstacle (and are left alone): a study runs beside notes.txt
    (out / "report.html").unlink()
    for p in (out / "trial_results").rglob("*"):
        if p.is_file():
            p.unlink()
    import shutil

    shutil.rmtree(out / "trial_results")
    r = optimize(tiny_model, tiny_data, out, space, "--num_trials", "1", "--no_baseline")  # underscores, as every flag
    assert r.exit_code == 0, r.output
    assert (out / "notes.txt").read_text() == "n" and not (out / "baseline.json").exists()


@pytest.mark.parametrize("seed", ["-1", "20000000000000000"])
def test_a_seed_numpy_and_torch_cannot_take_is_refused(tiny_model, tiny_data, space, tmp_path, seed):
    """-1 was numpy's traceback; 2e16 overflowed torch's seed in every trial (all FAIL)."""
    for command in (["optimize", "--search_space", str(space)], ["train", "--config", str(space), "--test_file", str(tiny_data["val"])]):
        r = CliRunner().invoke(main, [*command, "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
                                      "--validation_file", str(tiny_data["val"]), "--output_dir", str(tmp_path / "o"),
                                      "--seed", seed])
        assert r.exit_code == 2 and "Invalid value for '--seed'" in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "o").exists()


def test_an_empty_output_dir_is_refused(tiny_model, tiny_data, space, tmp_path, monkeypatch):
    """An unset $OUT in a job script: the study went into the current directory."""
    monkeypatch.chdir(tmp_path)
    r = optimize(tiny_model, tiny_data, "", space)
    assert r.exit_code == 2 and r.output.strip() == "Error: --output_dir: empty; give the folder the study writes into"
    assert list(tmp_path.iterdir()) == []


def test_the_training_file_as_validation_file_is_refused(tiny_model, tiny_data, space, tmp_path):
    data = {"train": tiny_data["train"], "val": tiny_data["train"]}
    r = optimize(tiny_model, data, tmp_path / "o", space)
    assert r.exit_code == 2 and "the same file as --train_file" in r.output and not (tmp_path / "o").exists()
    import shutil  # a copy of it: refused as well (it was a note, and the study ran)

    shutil.copy(tiny_data["train"], tmp_path / "copy.jsonl")
    r = optimize(tiny_model, {"train": tiny_data["train"], "val": tmp_path / "copy.jsonl"}, tmp_path / "o", space)
    assert r.exit_code == 2 and r.output.strip() == (
        f"Error: --validation_file {tmp_path / 'copy.jsonl'}: a copy of (the same bytes as) --train_file; the objectives "
        "are measured on it, so give held-out records (e.g. a tenth of the data, split off)"), r.output
    assert not (tmp_path / "o").exists()


def test_smaller_refusals_name_what_is_wrong(study, tiny_model, tiny_data, space, tmp_path):
    out, _ = study
    train = ["train", "--config", str(out / "best_config.yaml"), "--test_file", str(tiny_data["val"])]
    for target in (out, out / "trial_results" / "trial_0"):  # it replaced the trial's metrics.json (its curve)
        before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
        r = CliRunner().invoke(main, [*train, "--output_dir", str(target)])
        assert r.exit_code == 2 and "a study's folder (or one of its trials')" in r.output, r.output
        assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    r = optimize(tiny_model, {"train": tmp_path, "val": tiny_data["val"]}, tmp_path / "o", space)
    assert r.exit_code == 2 and f"{tmp_path}: a folder, not a data file" in r.output
    r = optimize(tiny_model, tiny_data, tmp_path / "o", space, "--optimization_objective", "multi:eval_loss,,eval_accuracy")
    assert r.exit_code == 2 and "an empty name in 'multi:eval_loss,,eval_accuracy'" in r.output
    assert not (tmp_path / "o").exists()


def test_a_space_smaller_than_num_trials_is_trained_whole_then_the_study_ends(tmp_path, tiny_model, tiny_data):
    """7 configurations and --num_trials 9: the study said nothing up front and, once the engine kept proposing
    configurations tried already, re-told their results forever (a hang). Run in a subprocess with a time limit.
    (Its objectives, loss and perplexity, are one in disguise: said too.)"""
    space = tmp_path / "r7.yaml"
    space.write_text("training:\n  learning_rate: 1e-2\n  num_train_epochs: 0.5\n  batch_size: 8\n"
                     "lora:\n  r: {type: categorical, values: [1, 2, 4, 8, 16, 32, 64]}\ndata:\n  max_seq_length: 32\n")
    out = tmp_path / "r7"
    r = subprocess.run([sys.executable, "-P", "-m", "moopt.cli", "optimize", "--base_model", str(tiny_model),
                        "--train_file", str(tiny_data["train"]), "--validation_file", str(tiny_data["val"]),
                        "--output_dir", str(out), "--search_space", str(space), "--num_trials", "9", "--seed", "4",
                        "--no-baseline", "--optimization_objective", "multi:eval_loss,eval_perplexity"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Note: eval_perplexity is exp(eval_loss): the two rank every trial alike" in r.stdout
    assert ("Note: the search space holds 7 configurations, fewer than --num_trials 9: the study ends once each has "
            "been trained") in r.stdout
    assert "Study stopped early: the search space has no new configurations left to propose (7 of 9 trials)" in r.stdout
    trials = pd.read_csv(out / "trials_summary.csv")
    assert sorted(trials.params_r) == [1, 2, 4, 8, 16, 32, 64]


def test_a_resume_with_another_objective_says_so_not_that_the_studys_weights_do_not_match(tiny_model, tiny_data,
                                                                                         space, tmp_path):
    """The study's weights belong to its objectives: a --resume that names other objectives took them anyway and was
    refused for a weight count the user never typed; it is refused for the objective, as any change of the study."""
    out = tmp_path / "hpo"
    r = optimize(tiny_model, tiny_data, out, space, "--num_trials", "1", "--no-baseline", "--optimization_objective",
                 "multi:eval_loss,eval_accuracy", "--optimization_weights", "0.7,0.3")
    assert r.exit_code == 0, r.output
    before = (out / "journal.jsonl").read_bytes()
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(out), "--resume", "--optimization_objective", "eval_loss"])
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and "--resume continues the same study" in said and "--optimization_objective" in said, said
    assert "--optimization_weights" not in said.split("Error:", 1)[1]
    assert (out / "journal.jsonl").read_bytes() == before


def test_a_model_folder_retrained_in_place_is_not_the_studys_model(tiny_model, tiny_data, space, tmp_path):
    """Users retrain into the same ./my-model folder: the path alone said "the same base model", so a --resume trained
    on the new weights beside trials of the old, and a --warm_start took over trials of the old weights as results of
    the new. The study's header keeps a digest of the folder's config and weights."""
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "my-model"
    shutil.copytree(tiny_model, model)
    out = tmp_path / "hpo"
    r = optimize(model, tiny_data, out, space, "--num_trials", "1", "--no-baseline")
    assert r.exit_code == 0, r.output
    weights = model / "model.safetensors"
    save_file({k: v * 2 for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
    r = optimize(model, tiny_data, out, space, "--num_trials", "2", "--no-baseline", "--resume")
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and f"--base_model {model}: its weights or config.json are not the ones the study began on" in said
    r = optimize(model, tiny_data, tmp_path / "ws", space, "--num_trials", "1", "--no-baseline", "--warm_start", str(out))
    said = " ".join(r.output.split())
    assert r.exit_code == 0 and "not the same base model weights (the folder changed since)" in said, said
    # and the final run of the study's best configuration says the weights are not the ones it was chosen for
    r = CliRunner().invoke(main, ["train", "--config", str(out / "best_config.yaml"), "--output_dir", str(tmp_path / "f")])
    said = " ".join(r.output.split())
    assert r.exit_code == 0 and f"Note: {model}'s weights or config.json changed since the study searched on it" in said, said


def test_a_weight_for_one_objective_is_said_to_change_nothing(tiny_model, tiny_data, space, tmp_path):
    r = optimize(tiny_model, tiny_data, tmp_path / "o", space, "--num_trials", "1", "--no-baseline",
                 "--optimization_weights", "2")
    assert r.exit_code == 0, r.output
    assert "Note: --optimization_weights 2: one objective (eval_loss), so its weight changes nothing" in " ".join(r.output.split())


def test_a_trials_start_line_names_target_modules_as_the_summary_does(tiny_model, tiny_data, tmp_path):
    sp = tmp_path / "space.yaml"
    sp.write_text("training: {batch_size: 8, num_train_epochs: 1}\ndata: {max_seq_length: 32}\n"
                  "lora:\n  target_modules: {type: categorical, values: [qv, attention]}\n")
    r = optimize(tiny_model, tiny_data, tmp_path / "o", sp, "--num_trials", "2", "--no-baseline")
    assert r.exit_code == 0, r.output
    starts = [line for line in r.output.splitlines() if " started on " in line]
    assert len(starts) == 2 and all(line.endswith(("target_modules=qv", "target_modules=attention")) for line in starts), starts


def test_a_learning_rate_range_where_lora_diverges_is_said_at_the_start(tiny_model, tiny_data, tmp_path):
    """1e4 for 1e-4: every trial went to a uniform guess (eval_loss ln 64 on the tiny model) and was scored COMPLETE,
    with no word."""
    sp = tmp_path / "space.yaml"
    sp.write_text("training: {learning_rate: {type: log_uniform, min: 1e4, max: 1e6}, num_train_epochs: 1}\n"
                  "data: {max_seq_length: 32}\n")
    r = optimize(tiny_model, tiny_data, tmp_path / "out", sp, "--num_trials", "1", "--no-baseline")
    assert r.exit_code == 0, r.output
    assert "Note: training.learning_rate reaches 1e+06: LoRA trains at about 1e-5 to 1e-2; above ~0.1 training " \
           "diverges" in r.output, r.output
    ok = tmp_path / "ok.yaml"
    ok.write_text(sp.read_text().replace("1e4", "1e-4").replace("1e6", "1e-2"))
    r = optimize(tiny_model, tiny_data, tmp_path / "ok", ok, "--num_trials", "1", "--no-baseline")
    assert r.exit_code == 0 and "training.learning_rate reaches" not in r.output, r.output
