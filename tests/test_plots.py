"""What the pictures show, as data: hypervolume of progress from the base model, the Pareto zoom
decision, the sign convention of the correlation map, which learning curves stand out. The PNG
renderers are only checked to write valid files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_analysis import TARGETS, write_fake_study

from moopt.report.analysis import (
    HIGHLIGHT,
    MUTED,
    correlations,
    curve_roles,
    learning_curves,
    plot_learning_curves,
    write_analysis,
)
from moopt.report.plots import pareto_zoom, plot_optimization, plot_pareto
from moopt.report.table import load_study

PNG = b"\x89PNG\r\n\x1a\n"


def trial(loss: float, acc: float, state: str = "COMPLETE", lr: float = 1e-4, r: int = 8, memory: float = 1.0) -> dict:
    params = {"learning_rate": lr, "batch_size": 8, "warmup_ratio": 0.05, "r": r, "target_modules": TARGETS[0]}
    return {"params": params, "state": state, "error": None if state == "COMPLETE" else state.lower(),
            "metrics": {"eval_loss": loss, "eval_accuracy": acc, "peak_memory_gb": memory}}


def study(tmp_path: Path, trials: list[dict], base: dict | None = None, **kw):
    out = write_fake_study(tmp_path / "s", trials, **kw)
    if base is not None:
        (out / "baseline.json").write_text(json.dumps({"state": "COMPLETE", "metrics": base, "error": None}))
    return load_study(out)


# -- hypervolume ------------------------------------------------------------------------------------
def test_hypervolume_measures_progress_from_the_base_model_toward_the_ideal(tmp_path):
    data = study(tmp_path, [trial(3.0, 0.4),  # a quarter of the way on both: 0.25 * 0.25
                            trial(4.5, 0.9),  # worse loss than the base model: adds nothing
                            trial(2.0, 0.6, "PRUNED"), trial(2.0, 0.6, "INFEASIBLE"),  # not on the front
                            trial(2.0, 0.6)],  # halfway on both: 0.5 * 0.5
                 base={"eval_loss": 4.0, "eval_accuracy": 0.2})
    assert data.hv_history == pytest.approx([0.0625, 0.0625, 0.0625, 0.0625, 0.25])
    assert data.hv_history.basis == "from the base model"
    assert data.hv_history.start == pytest.approx({"eval_loss": 4.0, "eval_accuracy": 0.2})


def test_hypervolume_stays_far_from_1_when_one_trial_merely_beats_the_rest(tmp_path):
    """The old scale (min-max over the study's own trials) put any dominating trial at 1."""
    base = {"eval_loss": 4.18, "eval_accuracy": 0.0}
    data = study(tmp_path, [trial(4.11, 0.20), trial(3.70, 0.53), trial(3.80, 0.50)], base=base)
    assert data.pareto == [1]
    expected = (4.18 - 3.70) / 4.18 * 0.53  # the product of the two progresses
    assert data.hv_history[-1] == pytest.approx(expected) and data.hv_history[-1] < 0.1
    # the same trial alone: the same figure, whatever else the study holds
    alone = study(tmp_path / "alone", [trial(3.70, 0.53)], base=base)
    assert alone.hv_history == pytest.approx([expected])
    # ideal on every objective is 1
    assert study(tmp_path / "ideal", [trial(0.0, 1.0)], base=base).hv_history == pytest.approx([1.0])


def test_hypervolume_without_base_model_starts_from_the_worst_trial_and_says_so(tmp_path):
    data = study(tmp_path, [trial(3.0, 0.4), trial(2.0, 0.6)])
    # start (3.0, 0.4): trial 1 is a third of the way on both
    assert data.hv_history == pytest.approx([0.0, 1 / 9])
    assert data.hv_history.basis == "from the worst trial (no base model evaluation)"


def test_hypervolume_of_peak_memory_starts_from_the_worst_trial_not_the_untrained_base_model(tmp_path):
    data = study(tmp_path, [trial(3.0, 0.4, memory=2.0), trial(2.0, 0.6, memory=1.0)],
                 base={"eval_loss": 4.0, "eval_accuracy": 0.2, "peak_memory_gb": 0.5},
                 objectives=("eval_loss", "peak_memory_gb"), weights=(0.5, 0.5))
    # eval_loss from 4.0: 0.25 then 0.5; memory from 2.0 GiB (worst trial): 0 then 0.5
    assert data.hv_history == pytest.approx([0.0, 0.25])
    assert data.hv_history.start == pytest.approx({"eval_loss": 4.0, "peak_memory_gb": 2.0})
    assert data.hv_history.basis == "from the base model (peak_memory_gb: the worst trial)"


def test_a_memory_objective_under_a_budget_starts_at_the_budget_and_the_summary_says_so():
    """The base model trains nothing, so peak_memory_gb's progress starts at --memory_constraint: the
    summary's start line must not call that figure the base model's."""
    import pandas as pd

    from moopt.report.table import score_start
    from moopt.search.objectives import parse_objectives

    o = parse_objectives("multi:eval_loss,peak_memory_gb", "0.5,0.5")
    worst = pd.Series({"values_eval_loss": 3.0, "values_peak_memory_gb": 1.5})
    base = {"state": "COMPLETE", "metrics": {"eval_loss": 5.0, "peak_memory_gb": 0.4}}
    assert score_start(o, base, {"memory_constraint_gb": 2.0}, worst, worst) == (
        {"eval_loss": 5.0, "peak_memory_gb": 2.0}, "the base model (peak_memory_gb: --memory_constraint)")
    assert score_start(o, None, {"memory_constraint_gb": 2.0}, worst, worst) == (
        {"eval_loss": 3.0, "peak_memory_gb": 2.0}, "the worst trial (no base model evaluation; peak_memory_gb: --memory_constraint)")
    # peak_memory_gb alone: the base model starts nothing, and is not named as the origin
    mem = parse_objectives("peak_memory_gb", None)
    assert score_start(mem, base, {}, worst, worst) == ({"peak_memory_gb": 1.5}, "the worst trial")
    assert score_start(mem, base, {"memory_constraint_gb": 2.0}, worst, worst) == (
        {"peak_memory_gb": 2.0}, "--memory_constraint")


# -- Pareto zoom ------------------------------------------------------------------------------------
def test_no_zoom_on_a_front_of_one_point(tmp_path):
    """The ±0.0005 panel with one star: a front of one trial has nothing to zoom on."""
    data = study(tmp_path, [trial(4.11, 0.2), trial(3.6942, 0.53125), trial(3.6960, 0.53125), trial(4.15, 0.09, "PRUNED")],
                 base={"eval_loss": 4.18, "eval_accuracy": 0.0})
    assert data.pareto == [1]
    assert pareto_zoom(data) is None


def test_zoom_on_a_front_bunched_in_a_corner_pads_relative_to_the_data(tmp_path):
    far = [trial(4.0 + 0.01 * i, 0.1 - 0.01 * i) for i in range(5)]
    data = study(tmp_path, [*far, trial(2.00, 0.80), trial(2.02, 0.81), trial(2.05, 0.82)])
    assert data.pareto == [5, 6, 7]
    (x0, x1), (y0, y1) = pareto_zoom(data)
    assert x0 < 2.00 and x1 > 2.05 and y0 < 0.80 and y1 > 0.82  # every front point inside
    full_x, full_y = 4.04 - 2.00, 0.82 - 0.06
    assert (x1 - x0) <= 0.5 * full_x and (y1 - y0) <= 0.5 * full_y  # at least twice as close
    assert (y1 - y0) >= 0.03 * full_y * 2  # padding relative to the data, not a fixed ±0.0005


def test_no_zoom_when_the_front_spans_the_cloud(tmp_path):
    data = study(tmp_path, [trial(2.0, 0.2), trial(3.0, 0.5), trial(4.0, 0.8), trial(4.0, 0.3)])
    assert data.pareto == [0, 1, 2]
    assert pareto_zoom(data) is None


def test_plots_render_with_and_without_zoom_or_base_model(tmp_path):
    cases = {"one": ([trial(3.7, 0.53), trial(4.1, 0.2)], {"eval_loss": 4.18, "eval_accuracy": 0.0}),
             "zoom": ([*[trial(4.0 + 0.01 * i, 0.1) for i in range(5)], trial(2.0, 0.8), trial(2.05, 0.82)], None),
             "fail": ([trial(3.0, 0.4), {**trial(0, 0, "FAIL"), "metrics": {}}], None)}
    for name, (trials, base) in cases.items():
        data = study(tmp_path / name, trials, base=base)
        for plot, png in ((plot_optimization, "opt.png"), (plot_pareto, "pareto.png")):
            plot(data, tmp_path / name / png)
            assert (tmp_path / name / png).read_bytes()[:8] == PNG, (name, png)
        write_analysis(tmp_path / name / "s", data)
        assert (tmp_path / name / "s" / "learning_curves.png").read_bytes()[:8] == PNG


# -- correlation map sign -------------------------------------------------------------------------
def test_correlation_map_gives_a_helpful_parameter_the_same_sign_on_every_objective(tmp_path):
    """r lowers eval_loss and raises eval_accuracy: both are improvements, so both +."""
    trials = [trial(3.0 - 0.1 * i, 0.3 + 0.05 * i, r=4 + 4 * i, lr=10 ** (-5 + (i * 7 % 5) / 2)) for i in range(6)]
    corr = correlations(study(tmp_path, trials))
    assert corr.loc["r", "eval_loss"] == pytest.approx(1.0)
    assert corr.loc["r", "eval_accuracy"] == pytest.approx(1.0)
    assert corr.loc["r", "score"] == pytest.approx(1.0)
    assert corr.attrs["n_trials"] == 6


# -- learning curves --------------------------------------------------------------------------------
def test_learning_curves_light_up_the_chosen_trial_and_the_front():
    roles = curve_roles(list(range(12)), best=3, pareto=[1, 3, 5])
    assert roles[3] == ("black", "trial 3 (chosen)")
    assert roles[1] == (HIGHLIGHT[0], "trial 1 (Pareto front)") and roles[5] == (HIGHLIGHT[1], "trial 5 (Pareto front)")
    assert all(roles[n] == (MUTED, None) for n in (0, 2, 4, 6, 7, 8, 9, 10, 11))
    # a long front: the first len(HIGHLIGHT) in colour, the rest under one legend entry
    many = curve_roles(list(range(20)), best=0, pareto=list(range(12)))
    named = [label for _, label in many.values() if label]
    assert len(named) == 1 + len(HIGHLIGHT) + 1 and f"{11 - len(HIGHLIGHT)} more Pareto trials" in named


def test_learning_curves_record_how_many_validation_examples_each_eval_used(tmp_path):
    out = write_fake_study(tmp_path / "s", [trial(3.0, 0.4), trial(2.0, 0.6, "PRUNED")])
    for n, evals in ((0, [{"step": 5, "examples": 8, "eval_loss": 2.5}, {"step": 10, "examples": 32, "eval_loss": 2.1}]),
                     (1, [{"step": 5, "examples": 8, "eval_loss": 2.4}])):
        f = out / "trial_results" / f"trial_{n}" / "metrics.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), "evals": evals}))
    c = learning_curves(out)
    ev = c[c.kind == "eval"]
    assert ev.examples.tolist() == [8, 32, 8]
    assert c[c.kind == "train"].examples.isna().all()


def test_learning_curves_put_trials_of_different_batch_sizes_on_one_epoch_axis(tmp_path, monkeypatch):
    """Against optimizer steps a batch-16 trial's whole run ended where a batch-4 trial had done a quarter of its
    epoch: the x-axis is epochs (passes over the training data); an evaluation sits at its step's epoch."""
    from matplotlib.figure import Figure

    out = write_fake_study(tmp_path / "s", [trial(3.0, 0.4), trial(2.0, 0.6)])
    for n, steps in ((0, 40), (1, 10)):  # one epoch at batch 4, one at batch 16
        f = out / "trial_results" / f"trial_{n}" / "metrics.json"
        curve = [{"step": s, "epoch": round(s / steps, 4), "train_loss": 3.0 - s / steps, "lr": 1e-4} for s in range(1, steps + 1)]
        f.write_text(json.dumps({**json.loads(f.read_text()), "curve": curve,
                                 "evals": [{"step": steps // 2, "examples": 8, "eval_loss": 2.5},
                                           {"step": steps, "examples": 32, "eval_loss": 2.0}]}))
    c = learning_curves(out)
    ends = c[c.kind == "train"].groupby("trial").epoch.max()
    assert ends.tolist() == [1.0, 1.0]
    assert c[c.kind == "eval"].epoch.tolist() == [0.5, 1.0, 0.5, 1.0]

    drawn = {}
    real = Figure.savefig

    def keep(fig, *a, **k):
        drawn["x"] = [ax.get_xlabel() for ax in fig.axes[:2]]
        drawn["ends"] = sorted(max(line.get_xdata()) for line in fig.axes[0].get_lines() if len(line.get_xdata()) > 1)
        return real(fig, *a, **k)

    monkeypatch.setattr(Figure, "savefig", keep)
    plot_learning_curves(c, tmp_path / "lc.png", best=0)
    assert drawn["x"] == ["epoch (passes over the training data)"] * 2
    assert drawn["ends"] == [1.0, 1.0]


def test_report_page_places_the_base_model_on_the_objectives_only(tmp_path):
    import re

    from moopt.report.html import write_html_report

    data = study(tmp_path, [trial(3.0, 0.4), trial(2.0, 0.6), trial(2.5, 0.5)],
                 base={"eval_loss": 4.0, "eval_accuracy": 0.2, "peak_memory_gb": 0.5})
    text = write_html_report(tmp_path / "s", data).read_text()
    payload = json.loads(re.search(r"id='report-data'>(.*?)</script>", text, re.DOTALL).group(1))
    # its peak memory is that of evaluation, no point of comparison for a training trial
    assert payload["base"] == {"values_eval_loss": 4.0, "values_eval_accuracy": 0.2}
    assert "base model (no fine-tuning)" in text


def test_pareto_labels_of_coinciding_trials_are_joined():
    import pandas as pd

    from moopt.report.plots import _label_groups

    pts = pd.DataFrame({"number": [1, 3, 7, 0], "x": [3.6942, 3.6975, 3.6960, 4.11], "y": [0.53125, 0.53125, 0.53125, 0.2]})
    assert list(_label_groups(pts, "x", "y").values()) == [["0"], ["1", "3", "7"]]


def test_pareto_labels_of_nearby_groups_do_not_overlap():
    """Two groups a few percent apart printed over each other ("7,914,10,11,12" in the guide's multi-objective
    study): a label that would overlap one placed already moves up."""
    from moopt.report.plots import _annotate_apart, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    groups = {(0.30, 0.50): ["7", "9"], (0.33, 0.505): ["14", "10", "11", "12"], (0.31, 0.51): ["13", "16"],
              (0.9, 0.1): ["2"]}
    labels = _annotate_apart(ax, groups)
    renderer = fig.canvas.get_renderer()
    boxes = [lab.get_window_extent(renderer) for lab in labels]
    assert len(boxes) == 4 and not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert sorted(lab.get_text() for lab in labels) == ["13,16", "14,10,11,12", "2", "7,9"]
    plt.close(fig)


def test_a_pareto_label_moves_off_the_base_models_diamond():
    """A trial near the base model had its number printed under the diamond (drawn over it)."""
    from matplotlib.transforms import Bbox

    from moopt.report.plots import _annotate_apart, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    ax.scatter([0.30, 0.9], [0.50, 0.1])  # autoscaled limits, as plot_pareto's first panel has
    base = (0.305, 0.505)
    labels = {lab.get_text(): lab for lab in _annotate_apart(ax, {(0.30, 0.50): ["4"], (0.9, 0.1): ["2"]}, [base])}
    renderer = fig.canvas.get_renderer()
    px, py = ax.transData.transform(base)
    r = 4.5 * fig.dpi / 72  # the diamond's own half width (s=80: about 9 points across)
    diamond = Bbox.from_extents(px - r, py - r, px + r, py + r)
    assert not labels["4"].get_window_extent(renderer).overlaps(diamond)
    assert _annotate_apart(ax, {(0.30, 0.50): ["4"]})[0].get_window_extent(renderer).overlaps(diamond)  # (without)
    plt.close(fig)


def test_the_history_plot_marks_trials_still_running_or_interrupted(tmp_path, monkeypatch):
    """After a stop, the x axis ran to the interrupted trial with nothing at it and no word in the legend."""
    from moopt.journal import Journal
    from moopt.report import plots

    out = write_fake_study(tmp_path / "s", [trial(3.0, 0.4), trial(2.5, 0.5)])
    j = Journal(out)
    j.append({"type": "trial_start", "number": 2, "datetime_start": "2026-01-01T00:03:00",
              "params": trial(0, 0)["params"]})  # started, never ended: RUNNING, or INTERRUPTED once stopped
    j.close()
    labels = []
    monkeypatch.setattr(plots, "legend_below", lambda fig, handles, names: labels.extend(names))
    plot_optimization(load_study(out), tmp_path / "opt.png")
    assert any(x.endswith(", no value yet (o on the axis)") for x in labels), labels
