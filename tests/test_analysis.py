"""Analysis data on synthetic studies: a fake output dir (journal + search_space.yaml + metrics.json)
where learning_rate alone drives the objectives, so the right answers are known."""

from __future__ import annotations

import json
import math
import os
import random
import re
import sys
from pathlib import Path

import pytest

from moopt.journal import Journal
from moopt.report.analysis import (
    MISSING_DEPS,
    SCORE,
    correlations,
    format_importance,
    learning_curves,
    param_importance,
    pareto_points,
    write_analysis,
)
from moopt.report.table import load_study

SPACE = """\
training:
  learning_rate: {type: log_uniform, min: 1.0e-05, max: 0.01}
  batch_size: {type: categorical, values: [4, 8, 16]}
  warmup_ratio: {type: uniform, min: 0.0, max: 0.1}
lora:
  r: {type: int, min: 4, max: 32, step: 4}
  target_modules: {type: categorical, values: [[q_proj, v_proj], [q_proj, k_proj, v_proj, o_proj]]}
"""
TARGETS = ["q_proj,v_proj", "q_proj,k_proj,v_proj,o_proj"]


def synthetic_trials(n: int, seed: int = 0) -> list[dict]:
    """eval_loss rises and eval_accuracy falls with log(learning_rate); the rest is noise-free
    filler with a 1% noise floor. Trial 3 is PRUNED at step 5, trial 5 FAILs, trial 7 is INFEASIBLE."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lr = 10 ** rng.uniform(-5, -2)
        params = {"learning_rate": float(f"{lr:.6g}"), "batch_size": rng.choice([4, 8, 16]),
                  "warmup_ratio": round(rng.uniform(0, 0.1), 4), "r": rng.choice(range(4, 33, 4)),
                  "target_modules": rng.choice(TARGETS)}
        x = math.log10(lr) + 5  # 0 .. 3
        metrics = {"eval_loss": 1.0 + 0.5 * x + rng.gauss(0, 0.01),
                   "eval_accuracy": 0.9 - 0.2 * x + rng.gauss(0, 0.002), "peak_memory_gb": 1.0 + params["r"] / 100}
        state, error = "COMPLETE", None
        if i == 3:
            state, error = "PRUNED", "pruned at step 5"
        elif i == 5:
            state, error, metrics = "FAIL", "RuntimeError: injected fault", {}
        elif i == 7:
            state, error = "INFEASIBLE", "peak 9.00 GiB > --memory_constraint 8 GiB"
        out.append({"params": params, "state": state, "error": error, "metrics": metrics})
    return out


def write_fake_study(out: Path, trials: list[dict], objectives=("eval_loss", "eval_accuracy"),
                     weights=(0.7, 0.3), space: str | None = SPACE) -> Path:
    """What a study leaves behind, minus models: journal.jsonl, search_space.yaml, metrics.json. A trial
    with ``rung_metrics`` has a rung-0 event at step 5 with them."""
    out.mkdir(parents=True, exist_ok=True)
    if space is not None:
        (out / "search_space.yaml").write_text(space)
    j = Journal(out)
    j.append({"type": "study", "created": "2026-01-01T00:00:00", "objectives": list(objectives),
              "weights": list(weights), "base_model": "tiny", "memory_constraint_gb": None, "num_trials": len(trials)})
    for n, t in enumerate(trials):
        start, end = f"2026-01-01T00:{n:02d}:00", f"2026-01-01T00:{n:02d}:30"
        j.append({"type": "trial_start", "number": n, "datetime_start": start, "params": t["params"]})
        if t.get("rung_metrics"):
            j.append({"type": "rung", "number": n, "rung": 0, "step": 5, "metrics": t["rung_metrics"],
                      "decision": "prune" if t["state"] == "PRUNED" else "continue", "reason": ""})
        total = 10
        steps = {"PRUNED": 5, "FAIL": 2}.get(t["state"], total)
        j.append({"type": "trial_end", "number": n, "datetime_start": start, "datetime_complete": end,
                  "state": t["state"], "metrics": t["metrics"], "error": t["error"], "steps": steps, "total_steps": total,
                  **t.get("end", {})})
        curve = [{"step": s, "epoch": s / total, "train_loss": 3.0 - 0.1 * s, "lr": 1e-4} for s in range(1, steps + 1)]
        evals = [] if t["state"] == "FAIL" else [{"step": 5, "eval_loss": 2.5, "eval_accuracy": 0.3}]
        if t["state"] in ("COMPLETE", "INFEASIBLE"):
            evals.append({"step": total, **{k: v for k, v in t["metrics"].items() if k.startswith("eval_")}})
        d = out / "trial_results" / f"trial_{n}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.json").write_text(json.dumps({"number": n, "state": t["state"], "curve": curve, "evals": evals}))
    j.close()
    return out


@pytest.fixture
def study_dir(tmp_path) -> Path:
    return write_fake_study(tmp_path / "study", synthetic_trials(24))


# -- importance -------------------------------------------------------------------------------------
def test_importance_shares_sum_to_one_and_are_stable_for_a_seed(study_dir):
    pytest.importorskip("optuna")
    pytest.importorskip("sklearn")
    data = load_study(study_dir)
    for target in (*data.objectives.names, SCORE):
        a = param_importance(data, target, seed=0, output_dir=study_dir)
        b = param_importance(data, target, seed=0, output_dir=study_dir)
        assert a.reason is None and len(a) >= 4
        assert sum(a.values()) == pytest.approx(1.0)
        assert dict(a) == dict(b)
        assert list(a.values()) == sorted(a.values(), reverse=True)


def test_the_parameter_that_drives_the_objective_gets_the_top_share(study_dir):
    pytest.importorskip("optuna")
    pytest.importorskip("sklearn")
    data = load_study(study_dir)
    for target in ("eval_loss", "eval_accuracy", SCORE):
        imp = param_importance(data, target, seed=0, output_dir=study_dir)
        assert next(iter(imp)) == "learning_rate"
        assert imp["learning_rate"] > 0.5, dict(imp)
    # the same without search_space.yaml: distributions inferred from the table
    (study_dir / "search_space.yaml").unlink()
    imp = param_importance(load_study(study_dir), "eval_loss", seed=0, output_dir=study_dir)
    assert next(iter(imp)) == "learning_rate"


def test_a_searched_parameter_with_one_value_in_every_trial_is_said_not_ranked(tmp_path):
    """The console's list dropped a searched parameter every COMPLETE trial had the same value of, without a word:
    a user read it as unimportant, though the study never told it apart."""
    pytest.importorskip("optuna")
    pytest.importorskip("sklearn")
    trials = synthetic_trials(24)
    for t in trials:
        t["params"]["r"] = 8
    out = write_fake_study(tmp_path / "s", trials)
    imp = param_importance(load_study(out), "eval_loss", seed=0, output_dir=out)
    assert "r" not in imp and imp.constant == ("r",)
    text = format_importance(imp, rename=lambda k: f"lora_{k}" if k == "r" else k)
    assert text.splitlines()[-1] == "(not ranked, one value in every one of these trials: lora_r)"


def test_importance_only_uses_complete_trials_and_explains_why_when_too_few(tmp_path):
    trials = synthetic_trials(8)
    for t in trials[2:]:
        t["state"], t["error"] = "PRUNED", "pruned at step 5"
    data = load_study(write_fake_study(tmp_path / "few", trials))
    imp = param_importance(data, "eval_loss", output_dir=tmp_path / "few")
    assert dict(imp) == {} and imp.n_trials == 2
    assert "2 COMPLETE trials" in imp.reason and "at least 3" in imp.reason
    assert "not computed" in format_importance(imp)


def test_too_few_complete_trials_fall_back_to_the_values_at_a_pruning_rung(tmp_path):
    """The guide's basic study prunes most trials: importance then comes from the rung every trial
    reached, and says so everywhere it is shown (console text, CSV, PNG, HTML)."""
    pytest.importorskip("optuna")
    pytest.importorskip("sklearn")
    import pandas as pd

    from moopt.report.analysis import write_analysis
    from moopt.report.html import write_html_report

    trials = synthetic_trials(12)
    for i, t in enumerate(trials):
        x = math.log10(t["params"]["learning_rate"]) + 5
        t["rung_metrics"] = {"eval_loss": 2.0 + 0.4 * x + 0.001 * i, "eval_accuracy": 0.5 - 0.1 * x}
        if i >= 2:
            t["state"], t["error"], t["metrics"] = "PRUNED", "pruned at step 5", {}
    out = write_fake_study(tmp_path / "pruned", trials)
    data = load_study(out)
    for target in ("eval_loss", "eval_accuracy", SCORE):
        imp = param_importance(data, target, seed=0, output_dir=out)
        assert imp.rung == 0 and imp.n_complete == 2 and imp.n_trials == 12, (target, imp.reason)
        assert next(iter(imp)) == "learning_rate" and imp["learning_rate"] > 0.5, dict(imp)
    text = format_importance(param_importance(data, SCORE, output_dir=out))
    assert "at pruning rung 0, 12 trials (2 COMPLETE): what drove the early evaluations" in text  # as the prune messages number it
    write_analysis(out, data)
    csv = pd.read_csv(out / "param_importance.csv")
    assert set(csv.basis) == {"rung 0"}
    write_html_report(out, data)
    assert "pruning rung" in (out / "report.html").read_text()
    # the closing list says what the plot holds: not "not yet" of importance it shows (correlations: not yet)
    import io

    from rich.console import Console

    from moopt.report.results import write_results

    for n in range(12):  # the configuration best_config.yaml is written from (a study writes each trial's)
        (out / "trial_results" / f"trial_{n}" / "config.yaml").write_text("training: {learning_rate: 0.001}\n")
    buf = io.StringIO()
    write_results(out, console=Console(file=buf, width=300))
    listed = {line.split()[0]: line for line in buf.getvalue().splitlines() if line.startswith("  ") and ".png" in line}
    assert "(at pruning rung 0: 2 COMPLETE trials)" in listed["param_importance.png"], listed
    assert "(not yet: 2 COMPLETE trials, it needs 3)" in listed["correlations.png"], listed
    # what is not written yet is said, with what it needs (a 4-trial study said nothing of refined_space.yaml)
    assert "not yet: 2 COMPLETE trials, it needs 10" in listed["interaction.png"], listed
    said = {line.split()[0]: line for line in buf.getvalue().splitlines() if line.startswith("  ")}
    assert "not yet: 2 COMPLETE trials, it needs 6" in said["refined_space.yaml"], said
    assert "exact (printed above to 3 digits)" in said["best_config.yaml"]

    # fewer than 3 at any rung: not computed, and the reason counts both
    few = write_fake_study(tmp_path / "few", [dict(t, rung_metrics=t["rung_metrics"] if i < 2 else None)
                                              for i, t in enumerate(trials[:4])])
    imp = param_importance(load_study(few), "eval_loss", output_dir=few)
    assert dict(imp) == {} and "2 COMPLETE trials, 2 reached a pruning rung" in imp.reason


def test_importance_without_optuna_degrades_with_an_install_hint(study_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    imp = param_importance(load_study(study_dir), "eval_loss", output_dir=study_dir)
    assert dict(imp) == {} and imp.reason == MISSING_DEPS


def test_importance_rejects_an_unknown_target(study_dir):
    with pytest.raises(ValueError, match="eval_perplexity"):
        param_importance(load_study(study_dir), "eval_perplexity")


def test_format_importance_prints_ranked_percentages(study_dir):
    pytest.importorskip("optuna")
    pytest.importorskip("sklearn")
    text = format_importance(param_importance(load_study(study_dir), "eval_loss", output_dir=study_dir))
    lines = text.splitlines()
    assert lines[0] == "Parameter Importance:"  # the guide's block
    assert lines[-1] == "(fANOVA on eval_loss, 21 COMPLETE trials)"
    assert re.fullmatch(r"1\. learning_rate +\(\d+\.\d%\)", lines[1])
    assert sum(float(line.rsplit("(", 1)[1][:-2]) for line in lines[1:-1]) == pytest.approx(100, abs=0.3)


# -- correlations ----------------------------------------------------------------------------------
def test_correlation_signs_follow_a_monotone_relation(study_dir):
    corr = correlations(load_study(study_dir))
    assert list(corr.columns) == ["eval_loss", "eval_accuracy", SCORE]
    # with improvement: loss rises and accuracy falls with lr, both worse, so both strongly -
    assert corr.loc["learning_rate", "eval_loss"] < -0.95
    assert corr.loc["learning_rate", "eval_accuracy"] < -0.95
    assert corr.loc["learning_rate", SCORE] < -0.9  # higher score = better, lower lr is better here
    assert abs(corr.loc["warmup_ratio", "eval_loss"]) < 0.6  # noise
    # text categoricals enter one-hot, numeric categoricals (batch_size) as ordinal
    assert {f"target_modules={v}" for v in TARGETS} <= set(corr.index)
    assert "batch_size" in corr.index


def test_correlations_note_parameters_that_never_varied(tmp_path):
    trials = synthetic_trials(10)
    for t in trials:
        t["params"]["batch_size"] = 8
    corr = correlations(load_study(write_fake_study(tmp_path / "s", trials)))
    assert "batch_size" not in corr.index
    assert any(n.startswith("batch_size:") for n in corr.attrs["notes"])


# -- learning curves, Pareto points -----------------------------------------------------------------
def test_learning_curves_include_pruned_and_failed_trials(study_dir):
    c = learning_curves(study_dir)
    assert list(c.columns) == ["trial", "state", "step", "epoch", "kind", "loss", "examples"]
    pruned = c[c.trial == 3]
    assert set(pruned.state) == {"PRUNED"}
    assert pruned[pruned.kind == "train"].step.tolist() == [1, 2, 3, 4, 5]
    assert pruned[pruned.kind == "eval"].step.tolist() == [5]  # the rung where it was stopped
    assert c[c.trial == 0].query("kind == 'eval'").step.tolist() == [5, 10]
    assert set(c[c.trial == 5].kind) == {"train"}  # FAIL: curve up to the crash, no evals
    assert set(c[c.trial == 7].state) == {"INFEASIBLE"}  # state from the journal, not metrics.json
    assert c.trial.nunique() == 24
    assert c.attrs["missing"] == []


def test_learning_curves_say_which_trained_trials_lost_their_metrics_file(study_dir, monkeypatch):
    """trial_results/ removed (or a study copied without it): the journal keeps the results, not the curves, and
    learning_curves.png showed fewer trials without a word."""
    from moopt.report import analysis

    (study_dir / "trial_results" / "trial_0" / "metrics.json").unlink()
    (study_dir / "trial_results" / "trial_3" / "metrics.json").unlink()
    c = learning_curves(study_dir)
    assert c.attrs["missing"] == [0, 3] and 0 not in set(c.trial)
    titles = []
    real = analysis.pyplot

    def spy():
        plt = real()
        fig_of = plt.subplots

        def subplots(*a, **k):
            fig, ax = fig_of(*a, **k)
            orig = fig.suptitle
            fig.suptitle = lambda t, **kw: titles.append(t) or orig(t, **kw)
            return fig, ax
        monkeypatch.setattr(plt, "subplots", subplots)
        return plt
    monkeypatch.setattr(analysis, "pyplot", spy)
    analysis.plot_learning_curves(c, study_dir / "lc.png", best=1)
    assert titles == ["2 trained trials not drawn: no trial_results/trial_N/metrics.json for trials 0, 3"]


def test_pareto_points_distinguish_states_and_mark_the_best(study_dir):
    data = load_study(study_dir)
    pts = pareto_points(data).set_index("number")
    assert pts.loc[3, "state"] == "PRUNED" and pts.loc[7, "state"] == "INFEASIBLE"
    assert pts.loc[5, "state"] == "FAIL" and not pts.loc[5, "plotted"]  # no metrics, cannot be placed
    assert pts.best.sum() == 1 and pts.loc[data.best, "best"] and pts.loc[data.best, "pareto"]
    assert set(pts.index[pts.pareto]) == set(data.pareto)
    assert not pts.loc[[3, 5, 7], "pareto"].any()  # the front holds COMPLETE trials only


def test_write_analysis_writes_csvs_and_valid_pngs(study_dir):
    a = write_analysis(study_dir, load_study(study_dir))
    for name in ("param_importance.png", "correlations.png", "learning_curves.png"):
        assert (study_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import pandas as pd

    corr = pd.read_csv(study_dir / "correlations.csv", index_col="param")
    assert list(corr.columns) == ["better_eval_loss", "better_eval_accuracy", "better_score"]
    assert corr.loc["learning_rate", "better_eval_loss"] == pytest.approx(a.correlations.loc["learning_rate", "eval_loss"])
    imp = pd.read_csv(study_dir / "param_importance.csv")
    if len(imp):  # empty without the optional deps
        assert imp.groupby("target").share.sum().to_dict() == pytest.approx({t: 1.0 for t in a.importance})
        # the console's name beside the space's key
        assert "lora_r" in set(imp.printed) and (imp.printed == imp.param.map(
            lambda k: f"lora_{k}" if k in ("r", "alpha", "dropout", "target_modules") else k)).all()
        # and report.html's bars and text, as the console and param_importance.png name them
        from moopt.report.html import write_html_report

        page = write_html_report(study_dir, load_study(study_dir), a).read_text()
        section = page[page.index("<h2>Parameter importance</h2>"):page.index("</section>", page.index("<h2>Parameter importance"))]
        assert ". lora_r</span>" in section and ". r</span>" not in section and ". lora_r " in section
        # the two most important parameters for the score, together (Optuna's contour)
        assert (study_dir / "interaction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_interaction_plot_on_too_few_trials_and_a_stale_one_goes(tmp_path):
    pytest.importorskip("optuna")
    out = write_fake_study(tmp_path / "few", synthetic_trials(8))  # 6 COMPLETE: fANOVA's pair would be noise
    (out / "interaction.png").write_bytes(b"stale")
    write_analysis(out, load_study(out))
    assert not (out / "interaction.png").exists()


def test_single_objective_study(tmp_path):
    out = write_fake_study(tmp_path / "one", synthetic_trials(12), objectives=("eval_loss",), weights=(1.0,))
    a = write_analysis(out, load_study(out))
    assert list(a.importance) == ["eval_loss"]
    assert list(a.correlations.columns) == ["eval_loss"]


def test_the_chosen_trial_is_the_front_s_highest_score_and_the_live_line_names_it(tmp_path):
    """The weights pick the trial with the highest weighted progress from the base model: the summary's
    Best value is then the highest score in trials_summary.csv, and the study's live line names that trial
    as it ends. (Normalising each objective over the trials instead would pick X here: it is best on
    eval_loss, which weighs 0.7, while Y closes more of the gap to the ideal on the two together.)"""
    from moopt.records import TrialResult
    from moopt.report.table import fixed_start
    from moopt.study.progress import ProgressBoard

    trials = [{"params": {"learning_rate": 1e-4, "batch_size": 4, "warmup_ratio": 0.0, "r": 8, "target_modules": TARGETS[0]},
               "state": "COMPLETE", "error": None, "metrics": m} for m in (
        {"eval_loss": 0.3, "eval_accuracy": 0.6, "peak_memory_gb": 1.0},  # X: 0.7 x 0.9625 + 0.3 x 0.5 = 0.824
        {"eval_loss": 0.6, "eval_accuracy": 0.9, "peak_memory_gb": 1.0},  # Y: 0.7 x 0.925 + 0.3 x 0.875 = 0.910
        {"eval_loss": 0.7, "eval_accuracy": 0.5, "peak_memory_gb": 1.0})]  # dominated by X
    out = write_fake_study(tmp_path / "s", trials)
    baseline = {"state": "COMPLETE", "metrics": {"eval_loss": 8.0, "eval_accuracy": 0.2}}
    (out / "baseline.json").write_text(json.dumps(baseline))
    data = load_study(out)
    assert data.pareto == [0, 1] and data.best == 1
    assert data.best_score == pytest.approx(0.7 * 0.925 + 0.3 * 0.875)
    assert data.best_score == pytest.approx(data.table.score.max())
    o = data.objectives
    s0 = o.to_minimize(fixed_start(o, baseline, {"memory_constraint_gb": None}))
    board = ProgressBoard(total=3, objective="eval_loss", shown=o.names,
                          score=lambda m: float(o.score(o.to_minimize(m), s0)[0]))
    for n, t in enumerate(trials):
        board.ended(TrialResult(number=n, state="COMPLETE", metrics=t["metrics"]))
    assert board.study_line().startswith(
        "Study: 3/3 trials done, best value 0.910 (trial 1: eval_loss 0.6000, eval_accuracy 0.9000)")
    # no base model evaluation: scores start at the worst trial and move as trials end, so no live score
    assert fixed_start(o, None, {"memory_constraint_gb": None}) is None
    assert fixed_start(o, {"state": "FAIL", "metrics": {}}, {"memory_constraint_gb": None}) is None
    # peak_memory_gb's progress starts at --memory_constraint; without one, at the worst trial
    from moopt.search.objectives import parse_objectives

    om = parse_objectives("multi:eval_loss,peak_memory_gb", "0.5,0.5")
    assert fixed_start(om, baseline, {"memory_constraint_gb": 8.0}) == {"eval_loss": 8.0, "peak_memory_gb": 8.0}
    assert fixed_start(om, baseline, {"memory_constraint_gb": None}) is None


def test_a_trial_cut_by_the_time_budget_that_beats_the_best_is_named_in_the_summary(tmp_path):
    """A trial stopped by --time_budget_hours is PRUNED (its configuration was not trained to the end), so the
    best stays a COMPLETE trial; but its metrics are on the whole validation set, and when they score above the
    best the summary says so and where its adapter is. A rung-pruned trial (metrics on a subset) is not named."""
    import io

    from rich.console import Console

    from moopt.report.results import print_summary
    from moopt.report.table import cut_by_time_ahead

    trials = synthetic_trials(8)
    great = {"eval_loss": 0.5, "eval_accuracy": 0.97, "peak_memory_gb": 1.0}
    trials[3] = {**trials[3], "metrics": dict(great)}  # pruned at a rung: not comparable
    trials[4] = {**trials[4], "state": "PRUNED", "error": "time budget reached at step 5", "metrics": dict(great)}
    trials[6] = {**trials[6], "state": "PRUNED", "error": "time budget reached at step 5",
                 "metrics": {"eval_loss": 9.0, "eval_accuracy": 0.01, "peak_memory_gb": 1.0}}
    out = write_fake_study(tmp_path / "s", trials)
    data = load_study(out)
    assert data.best not in (3, 4, 6)
    assert [n for n, *_ in cut_by_time_ahead(data)] == [4]
    # trials_summary.csv's score: the time-cut trials' too, the one the summary names as it says it; a rung-pruned not
    score = data.table.set_index("number").score
    assert score[4] == pytest.approx(cut_by_time_ahead(data)[0][1]) and score[4] > data.best_score
    assert score[6] < data.best_score and math.isnan(score[3])
    buf = io.StringIO()
    best = data.table[data.table.number == data.best].iloc[0]
    summary = {"best_config": {}, "best_metrics": {n: float(best[f"values_{n}"]) for n in data.objectives.names}}
    print_summary(data, summary, Console(file=buf, width=400, highlight=False))
    said = buf.getvalue()
    assert "Trial 4 was cut by the time budget at step 5 of 10 and already scores" in said
    assert "trial_results/trial_4/adapter" in said and "Trial 6 was cut" not in said and "Trial 3 was cut" not in said
    from moopt.report.html import write_html_report  # report.html says it too (it did only when none completed)

    page = write_html_report(out, data).read_text()
    assert "Trial 4 was cut by the time budget at step 5 of 10 and already scores" in page and "Trial 6 was cut" not in page


def test_when_no_trial_completed_the_summary_points_at_the_best_time_cut_trial_ahead_of_the_base_model(tmp_path):
    """A time budget that cuts every trial leaves no COMPLETE one to recommend; a cut trial's metrics are on the
    whole validation set, so the best of them that is ahead of the base model is named, with its adapter (which
    --keep_adapters best keeps) and the command that trains it to the end. None is named when none is ahead."""
    import io

    from rich.console import Console

    from moopt.report.results import print_summary
    from moopt.report.table import cut_by_time_ahead
    from moopt.study.adapters import trim_adapters

    def study(name, losses, accuracy=0.5):
        trials = synthetic_trials(len(losses))
        for n, loss in enumerate(losses):
            trials[n] = {**trials[n], "state": "PRUNED", "error": "time budget reached at step 5",
                         "metrics": {"eval_loss": loss, "eval_accuracy": accuracy}}
        out = write_fake_study(tmp_path / name, trials)
        (out / "baseline.json").write_text(json.dumps({"state": "COMPLETE",
                                                       "metrics": {"eval_loss": 7.0, "eval_accuracy": 0.2}}))
        for n in range(len(losses)):
            (out / "trial_results" / f"trial_{n}" / "adapter").mkdir()
        data = load_study(out)
        buf = io.StringIO()
        print_summary(data, {}, Console(file=buf, width=400, highlight=False))
        return out, data, buf.getvalue()

    out, data, said = study("ahead", [3.0, 2.5, 4.0])
    assert data.best is None and [n for n, *_ in cut_by_time_ahead(data)] == [1]
    assert "No trial completed; nothing to recommend: 3 cut by the time budget" in said
    assert ("Trial 1 was cut by the time budget at step 5 of 10; on the whole validation set it scores eval_loss 2.5000, "
            "eval_accuracy 0.5000 (the base model: eval_loss 7.0000, eval_accuracy 0.2000): its adapter is "
            "trial_results/trial_1/adapter; moopt train --config trial_results/trial_1/config.yaml") in said
    assert "Trial 0 was cut" not in said and "Trial 2 was cut" not in said
    assert trim_adapters(out, "best", final=True).kept == [1]
    out, data, said = study("behind", [9.0, 8.0], accuracy=0.1)  # worse than the base model: nothing to point at
    assert cut_by_time_ahead(data) == [] and "was cut" not in said


def test_no_configuration_fits_only_when_every_trial_was_ruled_out_by_the_budget(tmp_path):
    """Two INFEASIBLE trials beside three the time budget cut (or one that failed) is not "no configuration fits":
    the summary and the report say what became of each, and name the least infeasible one."""
    import io

    from rich.console import Console

    from moopt.report.html import write_html_report
    from moopt.report.results import print_summary

    def study(name, states):
        trials = synthetic_trials(len(states))
        for n, state in enumerate(states):
            if state == "INFEASIBLE":
                trials[n] = {**trials[n], "state": state, "metrics": {"peak_memory_gb": 3.0 + n},
                             "error": f"not trained: estimate {3.0 + n:.2f} GiB > budget 2.00 GiB"}
            elif state == "CUT":
                trials[n] = {**trials[n], "state": "PRUNED", "error": "time budget reached at step 5",
                             "metrics": {"eval_loss": 3.0, "eval_accuracy": 0.5}}
            else:
                trials[n] = {**trials[n], "state": state, "error": "boom", "metrics": {}}
        out = write_fake_study(tmp_path / name, trials)
        data = load_study(out)
        buf = io.StringIO()
        print_summary(data, {}, Console(file=buf, width=400, highlight=False))
        write_html_report(out, data)
        return buf.getvalue(), (out / "report.html").read_text()

    said, page = study("mixed", ["INFEASIBLE", "CUT", "INFEASIBLE", "CUT", "CUT"])
    assert "configurations tried fits" not in said and "configurations tried fits" not in page, said
    assert ("No trial completed; nothing to recommend: 3 cut by the time budget (a longer --time_budget_hours lets "
            "trials finish); 2 ruled out by the memory budget (not trained).") in said
    assert "Least infeasible: trial 0 (estimate 3.00 GiB > budget 2.00 GiB)" in said
    assert "Least infeasible: trial 0" in page
    said, page = study("failed", ["INFEASIBLE", "FAIL"])
    assert "configurations tried fits" not in said and "1 failed (see trial_results/trial_1/log.txt)" in said
    # the report says what became of them as the console does (it gave only the memory advice)
    assert "nothing to recommend: 1 failed (see trial_results/trial_1/log.txt); 1 ruled out by the memory" in page
    said, page = study("all", ["INFEASIBLE", "INFEASIBLE"])
    # what was tried, not a verdict on the whole space (smaller settings may not have been tried yet)
    assert "None of the 2 configurations tried fits. Least infeasible: trial 0" in said
    assert "None of the 2 configurations tried fits" in page and "more trials (--resume --num_trials)" in said
    assert "score" in load_study(tmp_path / "all").table  # the column a script reads is there, empty, as ever


def test_keep_adapters_keeps_a_time_cut_trial_that_beats_the_best(tmp_path):
    """The summary points at the adapter of a trial the time budget cut when it scores above the best, so
    --keep_adapters pareto|best keeps it; until the study ends, every time-cut trial's (which is ahead can
    change), after it, only the ones ahead."""
    from moopt.study.adapters import trim_adapters

    trials = synthetic_trials(8)
    great = {"eval_loss": 0.5, "eval_accuracy": 0.97, "peak_memory_gb": 1.0}
    trials[4] = {**trials[4], "state": "PRUNED", "error": "time budget reached at step 5", "metrics": dict(great)}
    trials[6] = {**trials[6], "state": "PRUNED", "error": "time budget reached at step 5",
                 "metrics": {"eval_loss": 9.0, "eval_accuracy": 0.01, "peak_memory_gb": 1.0}}
    out = write_fake_study(tmp_path / "s", trials)
    for n in range(8):
        (out / "trial_results" / f"trial_{n}" / "adapter").mkdir(parents=True)
        (out / "trial_results" / f"trial_{n}" / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 1000)
    data = load_study(out)

    def left():
        return {n for n in range(8) if (out / "trial_results" / f"trial_{n}" / "adapter").is_dir()}

    trim_adapters(out, "pareto", final=False)
    assert left() == set(data.pareto) | {4, 6}
    done = trim_adapters(out, "best", final=True)
    assert left() == {data.best, 4} and sorted(done.removed) == sorted((set(data.pareto) | {6}) - {data.best})
    assert done.freed_bytes == 1000 * len(done.removed)


def test_a_study_in_which_no_trial_completed_says_what_became_of_them(tmp_path):
    """No trial ran (the time budget went on the set-up): the summary says so and the table still exists.
    Trials ran but none completed: how many the time budget cut, how many were pruned or failed, and where
    a failure's log is."""
    import io

    import pandas as pd
    from rich.console import Console

    from moopt.report.results import write_results

    def summary(out):
        buf = io.StringIO()
        write_results(out, console=Console(file=buf, width=300, highlight=False))
        return buf.getvalue()

    empty = write_fake_study(tmp_path / "empty", [])
    said = summary(empty)
    assert "Trials: 0\n" in said and "No trial ran; nothing to recommend." in said
    assert list(pd.read_csv(empty / "trials_summary.csv").columns)[:4] == [
        "number", "state", "values_eval_loss", "values_eval_accuracy"]
    trials = synthetic_trials(3)
    trials[0] = {**trials[0], "state": "PRUNED", "error": "time budget reached at step 5"}
    trials[1] = {**trials[1], "state": "FAIL", "error": "RuntimeError: injected", "metrics": {}}
    trials[2] = {**trials[2], "state": "PRUNED", "error": "pruned at step 5"}
    said = summary(write_fake_study(tmp_path / "none", trials))
    assert "Trials: 3 (2 PRUNED, 1 FAIL)" in said
    assert ("No trial completed; nothing to recommend: 1 cut by the time budget (a longer --time_budget_hours lets "
            "trials finish); 1 pruned; 1 failed (see trial_results/trial_1/log.txt).") in said


def test_a_best_trial_at_the_edge_of_its_range_is_said_when_the_best_trials_lean_there(tmp_path):
    """The guide's first pitfall, too narrow search ranges: when the best trial sits in the outer 10% of a range
    (on its scale) and most of the study's best third lies in the outer third on that side, the summary and the
    report say the optimum may lie outside it. Not for a parameter whose best is inside, nor past what a parameter
    can take (warmup_ratio below 0), nor with fewer than 6 COMPLETE trials."""
    import io

    from rich.console import Console

    from moopt.report.analysis import analyze, load_space_spec, range_edges
    from moopt.report.results import print_summary

    rng = random.Random(1)
    trials = []
    for i in range(12):  # eval_loss falls with learning_rate up to the range's top (0.01); warmup does nothing
        lr = 10 ** rng.uniform(-5, -2)
        trials.append({"params": {"learning_rate": lr, "batch_size": rng.choice([4, 8, 16]),
                                  "warmup_ratio": 0.0 if i == 11 else rng.uniform(0.03, 0.07), "r": rng.choice(range(4, 33, 4)),
                                  "target_modules": TARGETS[0]},
                       "state": "COMPLETE", "error": None,
                       "metrics": {"eval_loss": 3.0 - 0.5 * (math.log10(lr) + 5), "eval_accuracy": 0.5}})
    trials[11]["params"]["learning_rate"] = 0.0098  # the best, at the top of 1e-5..1e-2; its warmup is at 0, the floor
    trials[11]["metrics"]["eval_loss"] = 1.4
    out = write_fake_study(tmp_path / "s", trials, weights=(1.0, 0.0))
    data = load_study(out)
    assert data.best == 11
    edges = range_edges(data, load_space_spec(out))
    assert [(e.param, e.side) for e in edges] == [("learning_rate", "high")]
    text = edges[0].text()
    assert text.startswith("learning_rate 0.0098: top 10% of 1e-05 to 0.01 (log scale), with ") and "above it (widen its max)" in text
    buf = io.StringIO()
    best = data.table[data.table.number == 11].iloc[0]
    print_summary(data, {"best_config": {}, "best_metrics": {n: float(best[f"values_{n}"]) for n in data.objectives.names}},
                  Console(file=buf, width=400, highlight=False), out, None, analyze(out, data).edges)
    assert "At the edge of the searched range (the optimum may lie outside it):\n  learning_rate 0.0098: top 10%" in buf.getvalue()
    # too few trials to tell an edge from chance
    few = write_fake_study(tmp_path / "few", [trials[11], *trials[:4]], weights=(1.0, 0.0))
    assert load_study(few).best == 0 and range_edges(load_study(few), load_space_spec(out)) == []
    # the best trial inside the range: nothing said
    trials[11]["params"]["learning_rate"] = 0.003
    assert range_edges(load_study(write_fake_study(tmp_path / "inside", trials, weights=(1.0, 0.0))), load_space_spec(out)) == []
    # an ordered categorical: its first and last values are its ends
    for i, t in enumerate(trials):
        t["params"]["batch_size"] = 16 if t["metrics"]["eval_loss"] < 2.0 else [4, 8][i % 2]
    edges = range_edges(load_study(write_fake_study(tmp_path / "cat", trials, weights=(1.0, 0.0))), load_space_spec(out))
    assert [e.text().split(", with")[0] for e in edges] == ["batch_size 16: the largest of its values [4, 8, 16]"]


def test_weights_given_to_a_resume_choose_the_best_trial_from_then_on(tmp_path):
    """--resume --optimization_weights 0.05,0.95 on a 0.7,0.3 study: the journal's "settings" event carries them,
    and the results (best trial, scores) are computed with them, as the live progress lines were."""
    from moopt.journal import Journal

    trials = synthetic_trials(6)
    trials[0] = {**trials[0], "metrics": {"eval_loss": 0.5, "eval_accuracy": 0.60, "peak_memory_gb": 1.0}}
    trials[1] = {**trials[1], "metrics": {"eval_loss": 2.0, "eval_accuracy": 0.95, "peak_memory_gb": 1.0}}
    out = write_fake_study(tmp_path / "s", trials[:2])
    (out / "baseline.json").write_text(json.dumps({"state": "COMPLETE", "metrics": {"eval_loss": 7.0, "eval_accuracy": 0.1}}))
    assert load_study(out).best == 0
    j = Journal(out)
    j.append({"type": "settings", "updated": "2026-01-02T00:00:00", "weights": [0.05, 0.95], "fingerprint": "ignored"})
    j.close()
    data = load_study(out)
    assert data.objectives.weights == (0.05, 0.95) and data.best == 1
    assert "fingerprint" not in data.header  # only what a resume may change is merged


def test_without_a_base_model_the_best_time_cut_trial_is_named_and_its_adapter_kept(tmp_path):
    """--no-baseline, every trial cut by the time budget: there was no start to score from, so no cut trial was named
    and --keep_adapters pareto|best removed every adapter. Now the best of them, scored from their own worst values."""
    import io

    from rich.console import Console

    from moopt.report.results import print_summary
    from moopt.report.table import cut_by_time_ahead
    from moopt.study.adapters import trim_adapters

    trials = synthetic_trials(3)
    for n, (loss, acc) in enumerate([(3.0, 0.5), (2.5, 0.6), (4.0, 0.4)]):
        trials[n] = {**trials[n], "state": "PRUNED", "error": "time budget reached at step 5",
                     "metrics": {"eval_loss": loss, "eval_accuracy": acc}}
    out = write_fake_study(tmp_path / "s", trials)
    for n in range(3):
        (out / "trial_results" / f"trial_{n}" / "adapter").mkdir()
    data = load_study(out)
    assert [n for n, *_ in cut_by_time_ahead(data)] == [1]
    buf = io.StringIO()
    print_summary(data, {}, Console(file=buf, width=400, highlight=False))
    assert "Trial 1 was cut by the time budget at step 5 of 10" in buf.getvalue()
    assert trim_adapters(out, "best", final=True).kept == [1]


def test_the_summary_says_when_the_best_trials_adapter_is_not_kept(tmp_path):
    """--keep_adapters best, then --resume with other weights picks another trial, whose adapter is gone (or a
    --warm_start took it over with its result only): the summary says so and how to train it, instead of nothing."""
    import io

    from rich.console import Console

    from moopt.report.results import print_summary

    out = write_fake_study(tmp_path / "s", synthetic_trials(6))
    data = load_study(out)
    buf = io.StringIO()
    print_summary(data, {"best_config": {}, "best_metrics": {}}, Console(file=buf, width=400), out)
    assert f"(trial {data.best}'s adapter is not kept: moopt train --config {out}/best_config.yaml trains it)" in buf.getvalue()
    (out / "trial_results" / f"trial_{data.best}" / "adapter").mkdir()
    buf = io.StringIO()
    print_summary(data, {"best_config": {}, "best_metrics": {}}, Console(file=buf, width=400), out)
    assert "adapter is not kept" not in buf.getvalue()


def test_a_trial_that_fell_back_to_torch_is_named_in_the_report(tmp_path):
    """A Triton failure under --kernels auto moves one trial to the torch path: its tokens/s and peak memory are that
    path's, and only its log said so. The report's notes name it (and which trials ran which path)."""
    from moopt.report.analysis import kernel_notes
    from moopt.report.html import write_html_report

    trials = synthetic_trials(6)
    reason = "--kernels auto: triton failed at step 1, torch from there on: triton kernel down failed: out of resource"
    for i, t in enumerate(trials):
        t["end"] = {"backend": "torch" if i == 2 else "triton",
                    "backend_reason": reason if i == 2 else "--kernels auto: CUDA device and triton installed"}
    out = write_fake_study(tmp_path / "s", trials)
    data = load_study(out)
    notes = kernel_notes(data)
    assert notes == ["LoRA kernels: torch in trial 2", "LoRA kernels: triton in trials 0, 1, 3, 4, 5",
                     f"Trial 2: {reason} (its speed and peak memory are the torch path's)"]
    write_html_report(out, data)
    assert "Trial 2: --kernels auto: triton failed at step 1" in (out / "report.html").read_text()
    for t in trials:
        t["end"] = {"backend": "triton", "backend_reason": "--kernels auto: CUDA device and triton installed"}
    assert kernel_notes(load_study(write_fake_study(tmp_path / "same", trials))) == []


def test_the_base_model_is_not_drawn_at_its_evaluation_peak_on_a_memory_axis(tmp_path, monkeypatch):
    """multi:eval_loss,peak_memory_gb: the base model's peak is an evaluation's (no optimizer, no adapter
    gradients), below every trial's, and the score starts memory elsewhere (the worst trial here). Drawn at it, the
    base read as a model that beats every trial on memory: the plots and the report leave that coordinate out
    and keep the base model's eval_loss (a line in the Pareto plot)."""
    import moopt.report.plots as plots
    from moopt.report.analysis import write_analysis
    from moopt.report.html import _payload
    from moopt.report.plots import plot_pareto
    from moopt.report.table import base_metrics

    out = write_fake_study(tmp_path / "s", synthetic_trials(8), objectives=("eval_loss", "peak_memory_gb"), weights=(0.5, 0.5))
    (out / "baseline.json").write_text(json.dumps({"state": "COMPLETE",
                                                   "metrics": {"eval_loss": 8.0, "eval_accuracy": 0.2, "peak_memory_gb": 0.3}}))
    data = load_study(out)
    assert data.score_start["peak_memory_gb"] > 1.0  # the worst trial's, not the base model's 0.3
    assert base_metrics(data) == {"eval_loss": 8.0, "eval_accuracy": 0.2}
    payload = _payload(data, write_analysis(out, data))
    assert payload["base"] == {"values_eval_loss": 8.0}
    drawn = []
    legend = plots.legend_below
    monkeypatch.setattr(plots, "legend_below", lambda fig, h, labels: (drawn.extend(labels), legend(fig, h, labels)))
    plot_pareto(data, out / "pareto_front.png")
    assert (out / "pareto_front.png").stat().st_size > 0
    assert "base model (eval_loss)" in drawn and "base model" not in drawn  # a line at its loss, no point
    # the trials it cannot draw are counted in the legend (synthetic_trials: trial 5 FAILs, with no metrics)
    assert "not drawn (no metrics): 1 FAIL" in drawn


def test_result_files_are_written_by_one_writer_at_a_time(tmp_path):
    """A moopt report that read the journal before the study's final write and wrote after it left best_config.yaml,
    the CSV and the report at the older state until the next report: writers take turns (a flock on the journal)."""
    import fcntl
    import threading
    import time

    from moopt.report.results import write_results

    out = write_fake_study(tmp_path / "s", synthetic_trials(6))
    fd = os.open(out / "journal.jsonl", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another writer is at it
    done = threading.Event()

    def write():
        try:
            write_results(out, quiet=True)
        except FileNotFoundError:  # (the fake study has no trial config.yaml for best_config.yaml: the CSV came first)
            pass
        done.set()

    t = threading.Thread(target=write)
    t.start()
    time.sleep(1.0)
    waited = not done.is_set()
    os.close(fd)
    t.join(60)
    assert waited and done.is_set() and (out / "trials_summary.csv").is_file()


def test_a_space_whose_every_configuration_was_tried_is_said_spent(tmp_path):
    """A refined space of 3 configurations, all trained already: the summary told the user to run a refined study,
    which took all 3 over and trained nothing ("0/6 trials done (+3 taken over)")."""
    from moopt.report.results import spent_space
    from moopt.search.space import load_space

    space = "training:\n  lr_scheduler_type: {type: categorical, values: [linear, cosine, constant]}\nlora:\n  r: {type: categorical, values: [4, 8]}\n"
    trials = []
    for sched in ("linear", "cosine", "constant"):
        for r in (4, 8):
            cfg = {"training": {"lr_scheduler_type": sched}, "lora": {"r": r}}
            trials.append({"params": {"lr_scheduler_type": sched, "r": r}, "state": "COMPLETE", "error": None,
                           "metrics": {"eval_loss": 1.0, "eval_accuracy": 0.5},
                           "end": {"config": load_space_config(space, cfg)}})
    out = write_fake_study(tmp_path / "s", trials, space=space)
    assert spent_space(out, load_space(out / "search_space.yaml")) == 6
    out = write_fake_study(tmp_path / "t", trials[:5], space=space)
    assert spent_space(out, load_space(out / "search_space.yaml")) == 0  # one never tried


def load_space_config(space_text: str, values: dict) -> dict:
    """The TrialConfig (as the journal keeps it) of ``values`` within the space."""
    import yaml

    from moopt.config import TrialConfig
    from moopt.search.space import parse_space

    sp = parse_space(yaml.safe_load(space_text))
    flat = {f"{sec}.{k}": v for sec, kv in values.items() for k, v in kv.items()}
    return TrialConfig.from_flat(flat, base=sp.fixed).to_dict()


def test_when_the_base_model_alone_is_over_the_budget_the_advice_says_nothing_can_fit(tmp_path):
    """Every configuration INFEASIBLE under a budget that the runtime and weights alone exceed: the advice was to
    search smaller batches, ranks or sequences, none of which could help."""
    from moopt.journal import Journal
    from moopt.report.table import least_infeasible_text

    trials = [{"params": t["params"], "state": "INFEASIBLE", "error": "not trained: estimate 0.55 GiB > budget 0.40 GiB",
               "metrics": {"peak_memory_gb": 0.55}} for t in synthetic_trials(3)]
    out = write_fake_study(tmp_path / "s", trials)
    j = Journal(out)
    j.append({"type": "settings", "updated": "2026-01-01T01:00:00", "memory_constraint_gb": 0.4})
    j.close()
    text = least_infeasible_text(load_study(out))
    assert "Raise --memory_constraint, or search smaller" in text  # no base model evaluated: the usual advice
    (out / "baseline.json").write_text(json.dumps({"state": "COMPLETE", "metrics": {"eval_loss": 7.0, "peak_memory_gb": 0.45}}))
    text = least_infeasible_text(load_study(out))
    assert ("The base model alone, evaluated without any training, peaked at 0.45 GiB (its weights and the runtime), "
            "over the budget of 0.40 GiB: no configuration can fit it; raise --memory_constraint above 0.45 GiB") in text
    assert "search smaller" not in text


def test_a_resume_under_a_budget_every_trained_trial_exceeds_does_not_say_nothing_was_trained(tmp_path):
    from moopt.journal import Journal
    from moopt.report.results import write_results

    trials = [t for t in synthetic_trials(6) if t["state"] == "COMPLETE"]
    out = write_fake_study(tmp_path / "s", trials)
    j = Journal(out)
    j.append({"type": "settings", "updated": "2026-01-01T01:00:00", "memory_constraint_gb": 0.5})  # under every peak
    j.close()
    summary = write_results(out, quiet=True)
    assert summary["nothing_fits"] and summary["trained_over"] == len(trials)


def test_the_interaction_plot_puts_numbers_spread_8x_or_more_on_a_log_axis():
    """Batch sizes 2..128 on a linear axis crowd 2, 4, 8 and 16 into one edge: such categoricals and int ranges are
    drawn on a log axis (ticked at the space's values); a narrow spread, strings and float ranges stay as they are."""
    pytest.importorskip("optuna")
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from moopt.report.analysis import _on_plot_axis

    assert _on_plot_axis(CategoricalDistribution([2, 4, 8, 16, 64, 128])) == FloatDistribution(2.0, 128.0, log=True)
    assert _on_plot_axis(IntDistribution(4, 64, step=4)) == FloatDistribution(4.0, 64.0, log=True)
    for same in (CategoricalDistribution([1, 2, 3]), CategoricalDistribution([4, 8, 16]), IntDistribution(4, 16),
                 CategoricalDistribution(["q_proj,v_proj", "all"]), CategoricalDistribution([0, 8, 64]),
                 FloatDistribution(0.0, 0.1)):
        assert _on_plot_axis(same) is same


def test_counts_in_trials_summary_stay_whole_beside_a_running_trial(tmp_path):
    """A RUNNING (or INTERRUPTED) row has no steps: pandas made the column float, and every trial read "38.0"."""
    import csv as csvlib

    from moopt.journal import Journal
    from moopt.report.results import write_results

    out = write_fake_study(tmp_path / "s", synthetic_trials(3))
    for n in range(3):
        (out / "trial_results" / f"trial_{n}" / "config.yaml").write_text("training: {learning_rate: 0.001}\n")
    j = Journal(out)
    j.append({"type": "trial_start", "number": 3, "datetime_start": "2026-01-01T00:09:00", "params": {"r": 8}})
    j.close()
    write_results(out, quiet=True)
    rows = {r["number"]: r for r in csvlib.DictReader((out / "trials_summary.csv").open())}
    assert rows["3"]["state"] == "RUNNING" and rows["3"]["steps"] == ""
    assert rows["0"]["steps"] == "10" and rows["0"]["total_steps"] == "10", rows["0"]


def test_a_correlation_of_exactly_zero_is_written_as_zero():
    """Rank correlation of ties in floating point: correlations.csv read 1.86e-17 where the value is 0."""
    import pandas as pd

    from moopt.report.analysis import _spearman

    x, y = pd.Series([2.0, 1.0, 1.0, 2.0]), pd.Series([0.3259, 0.8377, 0.0499, 0.8227])
    assert float(x.rank().corr(y.rank())) != 0.0  # what it was
    assert _spearman(x, y) == 0.0


def test_parameters_that_moved_together_in_every_trial_are_said_to_share_one_effect(tmp_path):
    """A 4-trial study drew batch 8 with r 8, batch 4 with r 4: importance gave them 9.1% and 6.1% as if apart."""
    trials = synthetic_trials(12)
    for t in trials:
        t["params"]["r"] = {4: 8, 8: 16, 16: 32}[t["params"]["batch_size"]]
    out = write_fake_study(tmp_path / "s", trials)
    imp = param_importance(load_study(out), SCORE, output_dir=out)
    assert imp and [set(g) for g in imp.together] == [{"batch_size", "r"}], imp.together
    assert "batch_size, r: moved together in every one of these trials, so their shares split one effect" \
        in format_importance(imp)
    free = write_fake_study(tmp_path / "free", synthetic_trials(12))  # drawn apart: nothing said
    assert param_importance(load_study(free), SCORE, output_dir=free).together == ()
    # two continuous parameters, each with a value of its own in every trial, correspond one to one trivially: not said
    # (it named learning_rate and warmup_ratio, or any two, in every study searching them)
    import pandas as pd

    from moopt.report.analysis import _moved_together

    done = pd.DataFrame({"params_learning_rate": [1e-4, 2e-4, 3e-4, 5e-4], "params_warmup_ratio": [0.01, 0.05, 0.02, 0.07],
                         "params_r": [4, 8, 4, 8], "params_alpha": [8, 16, 8, 16], "params_b": [4, 4, 8, 8]})
    assert _moved_together(done, ["learning_rate", "warmup_ratio", "r", "alpha", "b"]) == (("r", "alpha"),)


def test_interaction_png_is_not_promised_to_a_study_that_searches_one_parameter(tmp_path):
    """It plots two searched parameters: "not yet: ... it needs 10" promised it to a study that would never write it."""
    import io

    from rich.console import Console

    from moopt.report.results import write_results

    trials = synthetic_trials(4)
    for t in trials:
        t["params"] = {"learning_rate": t["params"]["learning_rate"]}
    out = write_fake_study(tmp_path / "one", trials,
                           space="training:\n  learning_rate: {type: log_uniform, min: 1.0e-05, max: 0.01}\n")
    for n in range(4):
        (out / "trial_results" / f"trial_{n}" / "config.yaml").write_text("training: {learning_rate: 0.001}\n")
    buf = io.StringIO()
    write_results(out, console=Console(file=buf, width=300))
    text = buf.getvalue()
    assert "interaction.png" not in text and "refined_space.yaml                 not yet" in text, text
