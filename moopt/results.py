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
    best: int | None  # chosen by the weighted score among the Pareto front
    best_score: float | None
    hv_history: list[float]  # hypervolume after each finished trial (multi-objective)
    least_infeasible: int | None  # when nothing is feasible
    baseline: dict[str, Any] | None
    header: dict[str, Any]


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

    pareto, best, best_score, least_inf = [], None, None, None
    if len(table):
        ok = table[(table.state == "COMPLETE")].dropna(subset=obj_cols)
        if len(ok):
            F = np.array([objectives.to_minimize(dict(zip(objectives.names, r))) for r in ok[obj_cols].to_numpy()])
            front = NonDominatedSorting().do(F, only_non_dominated_front=True)
            pareto = sorted(int(ok.number.iloc[i]) for i in front)
            scores = objectives.scores(F)  # normalised over feasible finished trials
            table["score"] = np.nan
            table.loc[ok.index, "score"] = scores
            front_scores = {int(ok.number.iloc[i]): scores[i] for i in front}
            best = max(front_scores, key=lambda k: (front_scores[k], -k))
            best_score = float(front_scores[best])
        else:
            inf = table[table.state == "INFEASIBLE"].dropna(subset=["peak_memory_gb"])
            if len(inf):
                least_inf = int(inf.sort_values("peak_memory_gb").number.iloc[0])
        table["pareto"] = table.number.isin(pareto)
    baseline = None
    if (out / "baseline.json").is_file():
        baseline = json.loads((out / "baseline.json").read_text())
    return StudyData(objectives, table, pareto, best, best_score, hypervolume_history(table, objectives),
                     least_inf, baseline, rec.header)


def hypervolume_history(table: pd.DataFrame, objectives: Objectives) -> list[float]:
    """HV of the feasible front after each finished trial, objectives scaled to [0, 1] over all
    COMPLETE trials, reference point 1.1 in every dimension (pymoo's HV indicator), divided by
    1.1^k so that 1 means one trial best on every objective."""
    if not objectives.multi or not len(table):
        return []
    from pymoo.indicators.hv import HV

    cols = [f"values_{n}" for n in objectives.names]
    done = table[table.state != "RUNNING"].sort_values("datetime_complete")
    ok = done[(done.state == "COMPLETE")].dropna(subset=cols)
    if not len(ok):
        return [0.0] * len(done)
    F_all = np.array([objectives.to_minimize(dict(zip(objectives.names, r))) for r in ok[cols].to_numpy()])
    lo, hi = F_all.min(axis=0), F_all.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    hv = HV(ref_point=np.full(len(cols), 1.1))
    out, seen = [], []
    for _, row in done.iterrows():
        if row.state == "COMPLETE" and not row[cols].isna().any():
            seen.append((objectives.to_minimize(dict(zip(objectives.names, row[cols]))) - lo) / span)
        out.append(float(hv(np.array(seen))) / 1.1 ** len(cols) if seen else 0.0)
    return out


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
    from moopt.analysis import format_importance, write_analysis
    from moopt.html_report import write_html_report

    analysis = write_analysis(out, data)
    write_html_report(out, data, analysis)
    summary["param_importance"] = {t: dict(imp) for t, imp in analysis.importance.items()}
    print_summary(data, summary, console)
    if data.best is not None:
        from rich.console import Console

        imp = analysis.importance["score" if data.objectives.multi else data.objectives.names[0]]
        (console or Console(highlight=False)).print(format_importance(imp), markup=False)
    return summary


def print_summary(data: StudyData, summary: dict[str, Any], console=None) -> None:
    from rich.console import Console

    console = console or Console(highlight=False)
    counts = data.table.state.value_counts().to_dict() if len(data.table) else {}
    console.print(f"\nTrials: {len(data.table)} ({', '.join(f'{v} {k}' for k, v in counts.items())})")
    if data.best is None:
        if data.least_infeasible is not None:
            row = data.table[data.table.number == data.least_infeasible].iloc[0]
            console.print(f"[red]No configuration fits.[/] Least infeasible: trial {data.least_infeasible} "
                          f"(peak {row.peak_memory_gb:.2f} GiB)")
        else:
            console.print("[red]No trial completed; nothing to recommend.[/] See trial_results/*/log.txt")
        return
    console.print("Best hyperparameter configuration:")
    console.print(json.dumps(summary["best_config"], indent=2), markup=False)
    m = summary["best_metrics"]
    console.print(f"Best trial: {data.best}  " + "  ".join(f"{k}={v:.4f}" for k, v in m.items()))
    if data.baseline and data.baseline.get("state") == "COMPLETE":
        b = data.baseline["metrics"]
        console.print("Base model (no fine-tuning): " + "  ".join(f"{k}={b[k]:.4f}" for k in m if k in b))
    if data.objectives.multi:
        console.print(f"Best value: {data.best_score:.3f} (higher is better)")
    else:
        name = data.objectives.names[0]
        console.print(f"Best value: {m[name]:.4f} ({'lower' if KNOWN[name][0] == 'minimize' else 'higher'} is better)")


# -- plots (matplotlib, Agg) -----------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_optimization(data: StudyData, path: Path) -> None:
    """Each objective against trial number with best-so-far, plus hypervolume when multi."""
    plt = _plt()
    names = data.objectives.names
    n_ax = len(names) + (1 if data.objectives.multi else 0)
    fig, axes = plt.subplots(1, n_ax, figsize=(5 * n_ax, 4), squeeze=False)
    t = data.table.sort_values("number") if len(data.table) else data.table
    for ax, name in zip(axes[0], names):
        col = f"values_{name}"
        for state, (c, mk) in STATE_STYLE.items():
            sub = t[t.state == state] if len(t) else t
            if len(sub):
                ax.scatter(sub.number, sub[col], c=c, marker=mk, label=state, alpha=0.8)
        done = t[t.state == "COMPLETE"].dropna(subset=[col]) if len(t) else t
        if len(done):
            best = done[col].cummin() if KNOWN[name][0] == "minimize" else done[col].cummax()
            ax.step(done.number, best, where="post", c="k", lw=1.5, label="best so far")
        if data.baseline and name in (data.baseline.get("metrics") or {}):
            ax.axhline(data.baseline["metrics"][name], ls="--", c="tab:purple", lw=1, label="base model")
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{name} ({'lower' if KNOWN[name][0] == 'minimize' else 'higher'} is better)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if data.objectives.multi:
        ax = axes[0][-1]
        ax.plot(range(1, len(data.hv_history) + 1), data.hv_history, marker=".")
        ax.set_xlabel("finished trials")
        ax.set_ylabel("hypervolume (normalised, 1 = ideal)")
        ax.grid(alpha=0.3)
    fig.suptitle("Optimisation history")
    fig.tight_layout()
    _save(fig, path, plt)


def plot_pareto(data: StudyData, path: Path) -> None:
    """First two objectives; Pareto front joined, pruned and infeasible drawn apart, best starred.
    When the front sits in a small corner of the cloud, a second panel zooms on it."""
    plt = _plt()
    a, b = data.objectives.names[:2]
    t = data.table
    front = t[t.number.isin(data.pareto)].sort_values(f"values_{a}") if data.pareto else t.iloc[:0]
    zoom = None
    if len(front) and len(t) > len(front):
        xa, ya = t[f"values_{a}"].dropna(), t[f"values_{b}"].dropna()
        fx, fy = front[f"values_{a}"], front[f"values_{b}"]
        spread = max((fx.max() - fx.min()) / max(xa.max() - xa.min(), 1e-12), (fy.max() - fy.min()) / max(ya.max() - ya.min(), 1e-12))
        if spread < 0.25:
            pad_x = max(fx.max() - fx.min(), 1e-3 * max(abs(fx.max()), 1)) * 0.6
            pad_y = max(fy.max() - fy.min(), 1e-3 * max(abs(fy.max()), 1)) * 0.6
            zoom = ((fx.min() - pad_x, fx.max() + pad_x), (fy.min() - pad_y, fy.max() + pad_y))
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(11 if zoom else 6, 5), squeeze=False)
    for k, ax in enumerate(axes[0]):
        for state, (c, mk) in STATE_STYLE.items():
            sub = t[(t.state == state)] if len(t) else t
            if len(sub):
                ax.scatter(sub[f"values_{a}"], sub[f"values_{b}"], c=c, marker=mk, label=state, alpha=0.7)
        if len(front):
            ax.plot(front[f"values_{a}"], front[f"values_{b}"], c="k", lw=1, label="Pareto front")
        if data.best is not None:
            r = t[t.number == data.best].iloc[0]
            ax.scatter([r[f"values_{a}"]], [r[f"values_{b}"]], s=250, marker="*", c="gold", edgecolors="k",
                       label=f"best (trial {data.best})", zorder=5)
        if k == 1:
            ax.set_xlim(*zoom[0])
            ax.set_ylim(*zoom[1])
            for _, r in t.iterrows():
                x, y = r[f"values_{a}"], r[f"values_{b}"]
                if zoom[0][0] <= x <= zoom[0][1] and zoom[1][0] <= y <= zoom[1][1]:
                    ax.annotate(str(int(r.number)), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
            ax.set_title("zoom on the front (trial numbers)")
        else:
            ax.set_title("Pareto front")
            ax.legend(fontsize=8)
        ax.set_xlabel(f"{a} ({KNOWN[a][0]})")
        ax.set_ylabel(f"{b} ({KNOWN[b][0]})")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path, plt)


def _save(fig, path: Path, plt) -> None:
    import io

    from moopt.yamlio import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
