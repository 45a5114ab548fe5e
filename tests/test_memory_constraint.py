"""--memory_constraint in a study: what cannot fit is never trained, and NSGA-II is told why."""

import pandas as pd
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


def test_nothing_fits_nothing_is_trained_and_the_least_infeasible_is_reported(tiny_model, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    r, out = run(tiny_model, tiny_data, tmp_path, 0.01)
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "trials_summary.csv")
    assert len(df) == 4 and (df.state == "INFEASIBLE").all()
    assert df.error.str.contains("not trained").all()
    assert not any((out / "trial_results" / f"trial_{n}" / "log.txt").exists() for n in range(4))  # no worker ran
    assert "No configuration fits" in r.output and "Least infeasible: trial" in r.output


def test_gate_verdicts_steer_which_trials_train(tiny_model, tiny_data, tmp_path, monkeypatch):
    from moopt import probe

    def decide(self, trial):
        fits = trial.lora.r == 4
        return probe.GateDecision("fit" if fits else "infeasible", 0.5 if fits else 9.0, None, False,
                                  "test verdict: r=8 does not fit")

    monkeypatch.setattr(probe.MemoryGate, "decide", decide)
    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    r, out = run(tiny_model, tiny_data, tmp_path, 100.0, n=5)
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "trials_summary.csv")
    assert len(df) == 5
    assert (df[df.params_r == 8].state == "INFEASIBLE").all() and (df[df.params_r == 4].state == "COMPLETE").all()
    assert (df[df.state == "INFEASIBLE"].peak_memory_gb == 9.0).all()
