"""Results from the journal alone: data first (table, Pareto front, best trial, hypervolume),
then files (trials_summary.csv, best_config.yaml, PNG plots). Needs neither GPU nor model, so
``moopt report`` can rebuild everything for a study that is running or was interrupted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moopt.journal import replay
from moopt.objectives import KNOWN, Objectives

STATE_STYLE = {  # colour, marker for plots
    "COMPLETE": ("tab:blue", "o"),
    "PRUNED": ("tab:orange", "s"),
    "INFEASIBLE": ("tab:red", "x"),
    "FAIL": ("tab:gray", "x"),
}


@dataclass
class StudyData:
    objectives: Objectives
    table: pd.DataFrame  # one row per finished trial, Optuna's trials_dataframe columns
    pareto: list[int]  # trial numbers on the feasible Pareto front of COMPLETE trials
    best: int | None  # chosen by the weighted rank score among the Pareto front
    best_score: float | None  # its weighted progress score (Objectives.score): the summary's "Best value"
    hv_history: HVHistory  # hypervolume of progress after each finished trial (multi-objective)
    least_infeasible: int | None  # when nothing is feasible
    baseline: dict[str, Any] | None
    header: dict[str, Any]
    score_start: dict[str, float] | None = None  # each objective's 0 of the score, and where it came from:
    score_origin: str = ""  # "the base model", or what stood in for it


def load_study(output_dir: str | Path) -> StudyData:
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    out = Path(output_dir)
    rec = replay(out)
    if not rec.header:
        raise FileNotFoundError(f"{out}: no study journal found")
    objectives = Objectives(tuple(rec.header["objectives"]), tuple(rec.header["weights"]))
    rows = []
    for n in sorted(rec.starts):
        s, e = rec.starts[n], rec.ends.get(n)
        m = (e or {}).get("metrics") or {}
        row: dict[str, Any] = {"number": n, "state": e["state"] if e else "RUNNING"}
        for name in objectives.names:
            row[f"values_{name}"] = m.get(name, np.nan)
        row["datetime_start"] = pd.Timestamp(s["datetime_start"])
        row["datetime_complete"] = pd.Timestamp(e["datetime_complete"]) if e else pd.NaT
        row["duration"] = (row["datetime_complete"] - row["datetime_start"]) if e else pd.NaT
        for k, v in s["params"].items():
            row[f"params_{k}"] = v
        for k in ("eval_loss", "eval_accuracy", "eval_perplexity"):
            if k not in objectives.names:
                row[k] = m.get(k, np.nan)
        row["peak_memory_gb"] = m.get("peak_memory_gb", np.nan)
        row["steps"] = (e or {}).get("steps")
        row["total_steps"] = (e or {}).get("total_steps")
        row["train_tokens"] = (e or {}).get("train_tokens")
        row["eval_tokens"] = (e or {}).get("eval_tokens")  # rung and final evaluations: what pruning adds
        row["tokens_per_s"] = (e or {}).get("tokens_per_s")
        row["backend"] = (e or {}).get("backend")
        row["backend_reason"] = (e or {}).get("backend_reason")  # e.g. a Triton failure under --kernels auto
        row["error"] = (e or {}).get("error")
        rows.append(row)
    table = pd.DataFrame(rows)
    obj_cols = [f"values_{n}" for n in objectives.names]

    baseline = None
    if (out / "baseline.json").is_file():
        baseline = json.loads((out / "baseline.json").read_text())
    pareto, best, best_score, least_inf, start, origin = [], None, None, None, None, ""
    if len(table):
        ok = table[(table.state == "COMPLETE")].dropna(subset=obj_cols)
        if len(ok):
            F = np.array([objectives.to_minimize(dict(zip(objectives.names, r))) for r in ok[obj_cols].to_numpy()])
            front = NonDominatedSorting().do(F, only_non_dominated_front=True)
            pareto = sorted(int(ok.number.iloc[i]) for i in front)
            start, origin = score_start(objectives, baseline, rec.header, ok[obj_cols].max(), ok[obj_cols].min())
            table["score"] = np.nan  # progress from the base model toward the ideal: comparable across studies
            table.loc[ok.index, "score"] = objectives.score(F, objectives.to_minimize(start))
            rank = objectives.scores(F)  # normalised over these trials: picks one trial from the front
            table["rank_score"] = np.nan
            table.loc[ok.index, "rank_score"] = rank
            front_rank = {int(ok.number.iloc[i]): rank[i] for i in front}
            best = max(front_rank, key=lambda k: (front_rank[k], -k))
            best_score = float(table.loc[table.number == best, "score"].iloc[0])
        else:
            inf = table[table.state == "INFEASIBLE"].dropna(subset=["peak_memory_gb"])
            if len(inf):
                least_inf = int(inf.sort_values("peak_memory_gb").number.iloc[0])
        table["pareto"] = table.number.isin(pareto)
    return StudyData(objectives, table, pareto, best, best_score, hypervolume_history(table, objectives, start, origin),
                     least_inf, baseline, rec.header, start, origin)


def score_start(objectives: Objectives, baseline: dict[str, Any] | None, header: dict[str, Any],
                highest: pd.Series, lowest: pd.Series) -> tuple[dict[str, float], str]:
    """Where each objective's progress starts (score 0): the base model's validation metrics.
    peak_memory_gb starts at --memory_constraint (the base model trains nothing); an objective the
    base model has no value for starts at the worst COMPLETE trial, and the origin says so."""
    ok = baseline is not None and baseline.get("state") == "COMPLETE"
    base = (baseline.get("metrics") or {}) if ok else {}
    start, stand_ins = {}, []
    for n in objectives.names:
        worst = float(highest[f"values_{n}"] if KNOWN[n][0] == "minimize" else lowest[f"values_{n}"])
        if n == "peak_memory_gb":
            start[n] = float(header.get("memory_constraint_gb") or worst)
            if not header.get("memory_constraint_gb"):
                stand_ins.append(n)
        elif n in base and np.isfinite(base[n]):
            start[n] = float(base[n])
        else:
            start[n] = worst
            stand_ins.append(n)
    if not base:
        return start, "the worst trial (no base model evaluation)"
    return start, "the base model" + (f" ({', '.join(stand_ins)}: the worst trial)" if stand_ins else "")


class HVHistory(list):
    """Hypervolume after each finished trial (a list of floats) plus what it was measured from:
    ``start`` (per objective, natural units: the value that counts as no progress) and ``basis``
    (a short text for axis labels, e.g. "from the base model")."""

    def __init__(self, values=(), *, start: dict[str, float] | None = None, basis: str = ""):
        super().__init__(values)
        self.start, self.basis = start or {}, basis


def hypervolume_history(table: pd.DataFrame, objectives: Objectives, start: dict[str, float] | None = None,
                        origin: str = "") -> HVHistory:
    """HV of the feasible front after each finished trial, in each objective's progress from
    ``start`` (0, :func:`score_start`: the base model) toward its ideal (1) (``Objectives.progress``),
    reference point: progress 0. So 1 means the ideal on every objective (eval_loss 0 and
    eval_accuracy 1), a trial no better than the base model on some objective adds nothing, and one
    trial that halves the loss and the error rate of the base model reaches 0.25 with two objectives,
    whatever else the study holds. An objective whose start already is ideal counts as progress 1."""
    if not objectives.multi or not len(table):
        return HVHistory()
    if not start:  # no COMPLETE trial yet
        return HVHistory([0.0] * int((table.state != "RUNNING").sum()))
    from pymoo.indicators.hv import HV

    cols = [f"values_{n}" for n in objectives.names]
    done = table[table.state != "RUNNING"].sort_values("datetime_complete", kind="stable")
    start_min = objectives.to_minimize(start)
    at_ideal = start_min <= objectives.ideal()  # nothing left to gain on it: full progress

    def distance(F: np.ndarray) -> np.ndarray:  # 0 = ideal, 1 = start; pymoo's HV drops rows not below 1
        return np.where(at_ideal, 0.0, 1.0 - objectives.progress(F, start_min))

    hv = HV(ref_point=np.ones(len(cols)))  # volume of the unit box is 1: no normalisation needed
    out, seen = [], []
    for _, row in done.iterrows():
        if row.state == "COMPLETE" and not row[cols].isna().any():
            seen.append(objectives.to_minimize(dict(zip(objectives.names, row[cols]))))
        out.append(float(hv(distance(np.array(seen)))) if seen else 0.0)
    return HVHistory(out, start=dict(start), basis=f"from {origin}" if origin else "")


def best_config(output_dir: Path, number: int) -> dict[str, Any]:
    """The best trial's config.yaml, with whole epochs and alpha written as integers (2, not 2.0)."""
    import yaml

    cfg = yaml.safe_load((Path(output_dir) / "trial_results" / f"trial_{number}" / "config.yaml").read_text())
    for section, name in (("training", "num_train_epochs"), ("lora", "alpha")):
        v = cfg.get(section, {}).get(name)
        if isinstance(v, float) and v.is_integer():
            cfg[section][name] = int(v)
    return cfg


def write_results(output_dir: str | Path, quiet: bool = False, console=None) -> dict[str, Any]:
    """Write every result file; unless quiet, print the best configuration as the guide shows."""
    from moopt.yamlio import atomic_write_text, write_yaml

    out = Path(output_dir)
    data = load_study(out)
    table = data.table
    if len(table):
        csv = table.copy()
        csv["duration"] = csv["duration"].astype(str)
        atomic_write_text(out / "trials_summary.csv", csv.to_csv(index=False))
    summary: dict[str, Any] = {"n_trials": int(len(table)), "best_trial": data.best, "best_score": data.best_score,
                               "pareto": data.pareto}
    if data.best is not None:
        cfg = best_config(out, data.best)
        write_yaml(out / "best_config.yaml", cfg)
        summary["best_config"] = cfg
        row = table[table.number == data.best].iloc[0]
        summary["best_metrics"] = {n: float(row[f"values_{n}"]) for n in data.objectives.names}
    plot_optimization(data, out / "optimization_plot.png")
    if data.objectives.multi:
        plot_pareto(data, out / "pareto_front.png")
    if quiet:  # after each trial: the table and the two plots; the full analysis at the end
        return summary
    from moopt.analysis import write_analysis
    from moopt.html_report import write_html_report

    analysis = write_analysis(out, data)
    write_html_report(out, data, analysis)
    summary["param_importance"] = {t: dict(imp) for t, imp in analysis.importance.items()}
    print_summary(data, summary, console, out, analysis.importance)
    return summary


def searched(output_dir: Path) -> dict[str, list[str]]:
    """The study's searched parameters by section, from its search_space.yaml."""
    import yaml

    path = Path(output_dir) / "search_space.yaml"
    raw = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    return {section: [k for k, spec in body.items() if isinstance(spec, dict)]
            for section, body in raw.items() if isinstance(body, dict)}


def _short(v: Any) -> Any:
    """Console form of a value: 3 significant digits (2.35e-05, 0.063), whole floats as integers,
    target modules by their alias (``attention``) or comma-joined."""
    from moopt.config import TARGET_ALIASES

    if isinstance(v, float):
        return int(v) if v.is_integer() else float(f"{v:.3g}")
    if isinstance(v, (list, tuple)):
        return next((k for k, mods in TARGET_ALIASES.items() if tuple(v) == mods), ",".join(map(str, v)))
    return v


def print_summary(data: StudyData, summary: dict[str, Any], console=None, output_dir: Path | None = None,
                  importance: dict | None = None) -> None:
    """The guide's closing summary: the searched parameters of the best trial as JSON, ``Best value``,
    ``Parameter Importance`` and where the results are."""
    from rich.console import Console

    console = console or Console(highlight=False, soft_wrap=True)
    say = lambda text="": console.print(text, markup=False, soft_wrap=True)  # noqa: E731
    counts = data.table.state.value_counts().to_dict() if len(data.table) else {}
    say(f"\nTrials: {len(data.table)} ({', '.join(f'{v} {k}' for k, v in counts.items())})")
    if data.best is None:
        if data.least_infeasible is not None:
            row = data.table[data.table.number == data.least_infeasible].iloc[0]
            say(f"No configuration fits. Least infeasible: trial {data.least_infeasible} (peak {row.peak_memory_gb:.2f} GiB)")
        else:
            say("No trial completed; nothing to recommend. See trial_results/*/log.txt")
        if output_dir is not None:
            say(f"Trials table: {Path(output_dir) / 'trials_summary.csv'}")
        return
    cfg = summary["best_config"]
    shown = {sec: {k: _short(cfg.get(sec, {}).get(k)) for k in keys}
             for sec, keys in (searched(output_dir) if output_dir is not None else {}).items() if keys}
    say("Best hyperparameter configuration:")
    say(json.dumps(shown, indent=2) if shown else "{}  (the space fixes every parameter: nothing was searched)")
    say()
    say(f"Best value: {data.best_score:.3f} (higher is better)")
    m = summary["best_metrics"]
    start = data.score_start or {}
    say(f"  trial {data.best}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items())
        + f"; {data.score_origin}: " + ", ".join(f"{k} {start[k]:.4f}" for k in m if k in start))
    weights = " + ".join(f"{w:.2g} x {n}" for n, w in zip(data.objectives.names, data.objectives.weights))
    say(f"  (weighted progress from {data.score_origin.split(' (')[0]} (0) to the ideal (1): {weights})")
    if importance:
        from moopt.analysis import format_importance

        target = "score" if data.objectives.multi else data.objectives.names[0]
        lora = set(searched(output_dir).get("lora", [])) if output_dir is not None else set()
        say()
        say(format_importance(importance[target], rename=lambda k: f"lora_{k}" if k in lora else k))
    if output_dir is not None:
        out = Path(output_dir)
        say()
        say(f"Results in {out}/:")
        files = [("best_config.yaml", "the best configuration: moopt train --config ... trains the final adapter"),
                 ("report.html", "the report: Pareto front, trials table, plots (opens offline)"),
                 (f"trial_results/trial_{data.best}/adapter", "the best trial's adapter (PEFT format)"),
                 ("trials_summary.csv", "every trial"),
                 ("optimization_plot.png", "progress of the search")]
        files += [("pareto_front.png", "the Pareto front")] if data.objectives.multi else []
        for name, what in files:
            if (out / name).exists():
                say(f"  {name:<34} {what}")


# -- plots (matplotlib, Agg) -----------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


STATE_LABEL = {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED (value at its last rung)", "INFEASIBLE": "INFEASIBLE",
               "FAIL": "FAIL (no metrics)"}
BASE_STYLE = {"c": "tab:purple", "lw": 1, "ls": "--"}  # the base model, in every plot that shows it


def axis_label(name: str) -> str:
    """``eval_loss (lower is better ←)``: the arrow points toward better, along x and along a
    y label (matplotlib turns the y label a quarter, so → reads as up)."""
    return f"{name} ({'lower is better ←' if KNOWN[name][0] == 'minimize' else 'higher is better →'})"


def base_metrics(data: StudyData) -> dict[str, float]:
    """The base model's metrics when its evaluation completed, else {}."""
    b = data.baseline or {}
    return dict(b.get("metrics") or {}) if b.get("state") == "COMPLETE" else {}


def _scatter_states(ax, t: pd.DataFrame, x: str, y: str) -> None:
    """Trials by state; PRUNED hollow (its values come from a rung, on part of the validation set)."""
    for state, (c, mk) in STATE_STYLE.items():
        sub = t[(t.state == state)].dropna(subset=[x, y]) if len(t) else t
        if not len(sub):
            continue
        face = "none" if state == "PRUNED" else c
        ax.scatter(sub[x], sub[y], marker=mk, label=STATE_LABEL[state], alpha=0.8, zorder=3,
                   **({"facecolors": face, "edgecolors": c} if mk != "x" else {"c": c}))


def plot_optimization(data: StudyData, path: Path) -> None:
    """Each objective against trial number with best-so-far and the chosen trial starred, plus
    the hypervolume of progress when multi."""
    import textwrap

    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    names = data.objectives.names
    n_ax = len(names) + (1 if data.objectives.multi else 0)
    fig, axes = plt.subplots(1, n_ax, figsize=(5 * n_ax, 4.2), squeeze=False)
    t = data.table.sort_values("number") if len(data.table) else data.table
    base = base_metrics(data)
    for ax, name in zip(axes[0], names):
        col = f"values_{name}"
        if len(t):
            _scatter_states(ax, t, "number", col)
            missing = t[t[col].isna() & (t.state != "RUNNING")]
            if len(missing):  # FAIL (or no metrics): a mark on the bottom edge at its trial number
                ax.scatter(missing.number, [0.0] * len(missing), marker="x", c="tab:gray", clip_on=False, zorder=3,
                           transform=ax.get_xaxis_transform(),
                           label=f"{'/'.join(sorted(set(missing.state)))}, no metrics (x on the axis)")
        done = t[t.state == "COMPLETE"].dropna(subset=[col]) if len(t) else t
        if len(done):
            best = done[col].cummin() if KNOWN[name][0] == "minimize" else done[col].cummax()
            ax.step(done.number, best, where="post", c="k", lw=1.5, label="best so far (COMPLETE)")
        if data.best is not None:
            r = t[t.number == data.best].iloc[0]
            ax.scatter([data.best], [r[col]], s=220, marker="*", c="gold", edgecolors="k", zorder=5,
                       label=f"chosen trial {data.best}")
        if name in base:
            ax.axhline(base[name], **BASE_STYLE, label="base model")
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(axis_label(name))
        ax.grid(alpha=0.3)
    if data.objectives.multi:
        ax, hv = axes[0][-1], data.hv_history
        x = range(1, len(hv) + 1)
        ax.plot(x, hv, marker=".", c="tab:green")
        top = max(hv, default=0.0)
        ax.set_ylim(0, max(top * 1.25, 0.05))  # autoscaled: a study far from the ideal is still readable
        basis = getattr(hv, "basis", "")
        if len(hv):
            msg = (f"now {hv[-1]:.3g}" if top > 0 else "0: no COMPLETE trial yet" if not basis else
                   "0: no COMPLETE trial beats the start\non every objective yet")
            ax.annotate(msg, (len(hv), hv[-1]), textcoords="offset points", xytext=(-6, 8), ha="right", fontsize=8)
        ax.set_xlabel("finished trials")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("\n".join(["hypervolume of progress", *textwrap.wrap(basis, 48),
                                 "(0 = start, 1 = ideal on every objective)"]), fontsize=8)
        ax.set_title("hypervolume (higher is better)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("Optimisation history")
    _legend_below(fig, *axes[0][0].get_legend_handles_labels())  # the same on every objective's panel
    _save(fig, path, plt)


ZOOM_SPREAD = 0.5  # zoom only when the front's window is at most half the full panel on both axes
ZOOM_PAD = (0.15, 0.03)  # padding: 15% of the front's range, at least 3% of the full panel's
LABEL_POINTS = 20  # trial numbers on the full panel up to this many points


def pareto_zoom(data: StudyData) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The (x, y) limits of a panel zoomed on the front of the first two objectives, or None when
    zooming would not help: fewer than two distinct front points in the plane, or a window (front
    padded relative to the data ranges) wider than ZOOM_SPREAD of the full panel on either axis."""
    a, b = (f"values_{n}" for n in data.objectives.names[:2])
    t = data.table
    if not data.pareto or not len(t):
        return None
    pts = t[[a, b]].astype(float)
    pts = pts[np.isfinite(pts).all(axis=1)]
    base = base_metrics(data)
    names = data.objectives.names[:2]
    if all(n in base for n in names):  # the full panel also shows the base model
        pts = pd.concat([pts, pd.DataFrame([[base[names[0]], base[names[1]]]], columns=[a, b])])
    front = t[t.number.isin(data.pareto)][[a, b]].astype(float).dropna()
    if len(front.drop_duplicates()) < 2:
        return None
    out = []
    for col in (a, b):
        full = pts[col].max() - pts[col].min()
        lo, hi = front[col].min(), front[col].max()
        pad = max(ZOOM_PAD[0] * (hi - lo), ZOOM_PAD[1] * full)
        if full <= 0 or (hi - lo + 2 * pad) > ZOOM_SPREAD * full:
            return None
        out.append((float(lo - pad), float(hi + pad)))
    return out[0], out[1]


def _label_groups(points: pd.DataFrame, x: str, y: str, near: float = 0.02) -> dict[tuple[float, float], list[str]]:
    """Trial numbers of points within ``near`` of the plotted ranges of the first point of a
    group, joined under one label ("1,3,7") so that coinciding points do not print over each other."""
    span = [max(float(points[c].max() - points[c].min()), 1e-12) if len(points) else 1.0 for c in (x, y)]
    groups: dict[tuple[float, float], list[str]] = {}
    for _, r in points.sort_values("number").iterrows():
        px, py = float(r[x]), float(r[y])
        anchor = next(((ax, ay) for ax, ay in groups
                       if abs(px - ax) <= near * span[0] and abs(py - ay) <= near * span[1]), (px, py))
        groups.setdefault(anchor, []).append(str(int(r.number)))
    return groups


def plot_pareto(data: StudyData, path: Path) -> None:
    """First two objectives: trials by state, the Pareto front joined, the chosen trial starred,
    the base model as a diamond, trial numbers next to the points when there are few. When the
    front sits in a small corner (pareto_zoom), a second panel zooms on it with trial numbers."""
    plt = _plt()
    a, b = data.objectives.names[:2]
    xa, yb = f"values_{a}", f"values_{b}"
    t = data.table
    front = t[t.number.isin(data.pareto)].sort_values(xa) if data.pareto else t.iloc[:0]
    base = base_metrics(data)
    zoom = pareto_zoom(data)
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(12 if zoom else 6.5, 5), squeeze=False)
    for k, ax in enumerate(axes[0]):
        if len(t):
            _scatter_states(ax, t, xa, yb)
        if len(front):  # joined only with two objectives: a projected front of three zigzags
            ax.plot(front[xa], front[yb], c="k", lw=1 if len(data.objectives.names) == 2 else 0, marker="o", mfc="none", ms=9,
                    label=f"Pareto front ({len(front)} trial{'s' if len(front) > 1 else ''})")
        if data.best is not None:
            r = t[t.number == data.best].iloc[0]
            ax.scatter([r[xa]], [r[yb]], s=250, marker="*", c="gold", edgecolors="k",
                       label=f"chosen trial {data.best}", zorder=5)
        if a in base and b in base:
            ax.scatter([base[a]], [base[b]], s=80, marker="D", c="tab:purple", label="base model", zorder=4)
        if k == 1:
            ax.set_xlim(*zoom[0])
            ax.set_ylim(*zoom[1])
        shown = t.dropna(subset=[xa, yb]) if len(t) else t
        if k == 1:
            shown = shown[shown[xa].between(*zoom[0]) & shown[yb].between(*zoom[1])]
        if k == 1 or len(shown) <= LABEL_POINTS:
            for (x, y), numbers in _label_groups(shown, xa, yb).items():
                ax.annotate(",".join(numbers), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
        if k == 1:
            ax.set_title("zoom on the front (trial numbers)", fontsize=10)
        else:
            ax.set_title("Pareto front" + (" (first two objectives)" if len(data.objectives.names) > 2 else ""),
                         fontsize=10)
        ax.set_xlabel(axis_label(a))
        ax.set_ylabel(axis_label(b))
        ax.grid(alpha=0.3)
    _legend_below(fig, *axes[0][0].get_legend_handles_labels())
    _save(fig, path, plt)


def _legend_below(fig, handles: list, labels: list[str]) -> None:
    """One legend under the panels, where it hides no point: as many columns as fit the width
    (a label is up to ~2.7 in at 8 pt), the figure made taller by its rows; then tight_layout."""
    width, height = fig.get_size_inches()
    ncol = max(1, min(len(handles), int(width / 2.7)))
    rows = -(-len(handles) // ncol)
    extra = 0.2 * rows + 0.15 if handles else 0.0  # inches
    fig.set_size_inches(width, height + extra)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, extra / (height + extra), 1, 1))


def _save(fig, path: Path, plt) -> None:
    import io

    from moopt.yamlio import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
