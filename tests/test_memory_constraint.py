"""--memory_constraint in a study: what cannot fit is never trained, and NSGA-II is told why."""

import re

import pandas as pd
import pytest
from click.testing import CliRunner

from moopt.cli import main

SPACE = ("training:\n  learning_rate: {type: log_uniform, min: 1e-3, max: 3e-2}\n  num_train_epochs: 1\n"
         "lora:\n  r: {type: categorical, values: [4, 8]}\ndata:\n  max_seq_length: 32\n")


def run(tiny_model, tiny_data, tmp_path, constraint, n=4):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, ["optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
                                  "--validation_file", str(tiny_data["val"]), "--output_dir", str(out), "--search_space",
                                  str(space), "--num_trials", str(n), "--no-baseline", "--memory_constraint", str(constraint),
                                  "--optimization_objective", "multi:eval_loss,peak_memory_gb"])
    return r, out


def test_a_budget_no_configuration_can_meet_is_refused_before_the_model_loads(tiny_model, tiny_data, tmp_path, monkeypatch):
    """A local model under 0.01 GiB: the study evaluated the base model, ruled out every trial and advised more
    trials; a local 70B model would have loaded 140 GB first. Refused at once, as a hub model's was before its
    download: one line, exit 2, nothing written."""
    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    r, out = run(tiny_model, tiny_data, tmp_path, 0.01)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert f"--memory_constraint 0.01: no configuration of {tmp_path / 'space.yaml'} fits {tiny_model} on cpu" in r.output
    assert "add gradient checkpointing to the space, or pick a smaller model" in r.output  # not 4bit: on a CPU it costs
    assert "not downloaded" not in r.output and not out.exists()


def test_nothing_fits_nothing_is_trained_and_the_least_infeasible_is_reported(tiny_model, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    import moopt.cli

    monkeypatch.setattr(moopt.cli, "check_fits", lambda *a, **k: None)  # the gate's own verdicts, trial by trial
    r, out = run(tiny_model, tiny_data, tmp_path, 0.01)
    # a script running the study learns that nothing was trained (no best_config.yaml), as when every trial fails
    assert r.exit_code == 1 and "No configuration fits --memory_constraint 0.01: nothing was trained" in r.output, r.output
    assert not (out / "best_config.yaml").exists()
    df = pd.read_csv(out / "trials_summary.csv")
    assert len(df) == 4 and (df.state == "INFEASIBLE").all()
    # an untrained configuration has no objective values: the gate's estimate or probe is its peak_memory_gb only
    assert df[[c for c in df.columns if c.startswith("values_")]].isna().all().all() and df.peak_memory_gb.notna().all()
    assert df.error.str.contains("not trained").all()
    assert not any((out / "trial_results" / f"trial_{n}" / "log.txt").exists() for n in range(4))  # no worker ran
    assert "None of the 4 configurations tried fits the budget of 0.01 GiB. Least infeasible: trial" in r.output
    least = df.sort_values("peak_memory_gb").iloc[0]
    reason = least.error.removeprefix("not trained: ")
    assert f"trial {least.number} ({reason})" in r.output and "Raise --memory_constraint" in r.output  # the gate's why
    assert reason.replace("<", "&lt;").replace(">", "&gt;") in (out / "report.html").read_text()


def test_gate_verdicts_steer_which_trials_train(tiny_model, tiny_data, tmp_path, monkeypatch):
    from moopt.study import gate as probe

    def decide(self, trial, announce=None):
        fits = trial.lora.r == 4
        if fits:
            announce((1, 32))
            return probe.GateDecision("fit", 0.5, 0.45, True, "test verdict: r=4 measured 0.45 GiB")
        return probe.GateDecision("infeasible", 9.0, None, False, "test verdict: r=8 does not fit")

    monkeypatch.setattr(probe.MemoryGate, "decide", decide)
    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    r, out = run(tiny_model, tiny_data, tmp_path, 100.0, n=5)
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "trials_summary.csv")
    assert len(df) == 5
    assert (df[df.params_r == 8].state == "INFEASIBLE").all() and (df[df.params_r == 4].state == "COMPLETE").all()
    assert (df[df.state == "INFEASIBLE"].peak_memory_gb == 9.0).all()
    # an untrained trial's peak says where it came from (this verdict had no probe: the estimate)
    assert (df[df.state == "INFEASIBLE"].peak_memory_from == "estimate").all()
    assert (df[df.state == "COMPLETE"].peak_memory_from == "training").all()
    # what was ruled out is named on the console (it showed only the gate's reason), as is what a probe measures
    said = " ".join(r.output.split())
    assert re.search(r"Trial \d+ INFEASIBLE \(not trained\): learning_rate=[\d.e-]+, r=8 test verdict: r=8 does not fit", said)
    assert re.search(r"measuring its peak memory \(1 x 32 tokens, a few steps in a fresh process\): learning_rate=[\d.e-]+, "
                     r"r=4 \.\.\.", said)
    # the console says when a probe runs and why a measured configuration fits, before it trains
    for n in df[df.params_r == 4].number:
        assert f"Trial {n}: measuring its peak memory (1 x 32 tokens" in r.output
        assert f"Trial {n} fits: test verdict: r=4 measured 0.45 GiB\nTrial {n} started on cpu" in r.output


def test_a_trial_that_runs_out_of_memory_is_never_trained_again_and_the_probe_shape_is_journaled(
        tiny_model, tiny_data, tmp_path, monkeypatch):
    import json

    from moopt.study.gate import data_lengths

    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MOOPT_INJECT_FAULT", "0:oom")
    r, out = run(tiny_model, tiny_data, tmp_path, 100.0, n=3)
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "trials_summary.csv")
    first = df[df.number == 0].iloc[0]
    assert first.state == "INFEASIBLE" and "out of memory" in first.error and first.peak_memory_gb > 0
    assert first.peak_memory_from == "training"  # it trained and ran out of memory
    # a configuration trusted from its estimate says why it fits too (README: why each fits or not)
    trusted = [n for n in df.number if df[df.number == n].iloc[0].state == "COMPLETE"]
    assert trusted and all(re.search(rf"Trial {n} fits: estimate \S+ GiB \+ ", r.output) for n in trusted), r.output
    events = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    gates = [e for e in events if e["type"] == "memory_gate"]
    longest = max(data_lengths(str(tiny_model), tiny_data["train"]))
    assert gates and all(e["shape"][1] == min(32, longest) for e in gates)
    cache = json.loads((tmp_path / "cache" / "calibration.json").read_text())
    (entry,) = cache["entries"].values()
    assert sum(1 for p in entry["probes"].values() if p.get("oom")) == 1
    assert len(entry["pairs"]) >= 1  # the trials that trained calibrate the estimate

    # the same study again (same seed, same cache, no injected fault): trial 0's configuration is
    # answered from the cache as infeasible with its measured peak, not trained
    monkeypatch.delenv("MOOPT_INJECT_FAULT")
    (tmp_path / "again").mkdir()
    r, out2 = run(tiny_model, tiny_data, tmp_path / "again", 100.0, n=3)
    assert r.exit_code == 0, r.output
    df2 = pd.read_csv(out2 / "trials_summary.csv")
    again = df2[df2.number == 0].iloc[0]
    assert again.state == "INFEASIBLE" and "ran out of memory earlier" in again.error
    assert again.peak_memory_gb == pytest.approx(first.peak_memory_gb, rel=0.01)
    assert again.peak_memory_from == "measured"
    assert not (out2 / "trial_results" / "trial_0" / "log.txt").exists()
