"""The study's plots (matplotlib, Agg): optimisation history and Pareto front.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from moopt.records import TrialState
from moopt.report.table import UNFINISHED, StudyData, base_metrics
from moopt.search.objectives import IDEAL, KNOWN

STATE_STYLE = {  # colour, marker for plots
    TrialState.COMPLETE: ("tab:blue", "o"),
    TrialState.PRUNED: ("tab:orange", "s"),
    TrialState.INFEASIBLE: ("tab:red", "x"),
    TrialState.FAIL: ("tab:gray", "x"),
}


# -- plots (matplotlib, Agg) -----------------------------------------------------------------------
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


STATE_LABEL = {TrialState.COMPLETE: "COMPLETE", TrialState.PRUNED: "PRUNED (value at its last rung)",
               TrialState.INFEASIBLE: "INFEASIBLE", TrialState.FAIL: "FAIL (no metrics)"}


BASE_STYLE = {"c": "tab:purple", "lw": 1, "ls": "--"}  # the base model, in every plot that shows it


def axis_label(name: str) -> str:
    """``eval_loss (lower is better ←)``: the arrow points toward better, along x and along a
    y label (matplotlib turns the y label a quarter, so → reads as up)."""
    unit = ", GiB" if name == "peak_memory_gb" else ""  # 1024**3 bytes, as every memory figure of moopt's
    return f"{name} ({'lower is better ←' if KNOWN[name][0] == 'minimize' else 'higher is better →'}{unit})"


def _finite(t: pd.DataFrame, cols: list[str]) -> pd.Series:
    """Rows with a finite value in each of ``cols`` (a point the plot can draw)."""
    return np.isfinite(t[cols].apply(pd.to_numeric, errors="coerce")).all(axis=1)


def _scatter_states(ax, t: pd.DataFrame, x: str, y: str) -> None:
    """Trials by state; PRUNED hollow (its values come from a rung, on part of the validation set)."""
    for state, (c, mk) in STATE_STYLE.items():
        sub = t[(t.state == state)].dropna(subset=[x, y]) if len(t) else t
        if not len(sub):
            continue
        face = "none" if state == TrialState.PRUNED else c
        ax.scatter(sub[x], sub[y], marker=mk, label=STATE_LABEL[state], alpha=0.8, zorder=3,
                   **({"facecolors": face, "edgecolors": c} if mk != "x" else {"c": c}))


def _budget_line(ax, data: StudyData, name: str, vertical: bool = False) -> None:
    """The --memory_constraint on a peak_memory_gb axis: where the trials' peaks stand against it (and where the memory
    objective's progress counts from)."""
    budget = data.header.get("memory_constraint_gb")
    if name == "peak_memory_gb" and budget:
        (ax.axvline if vertical else ax.axhline)(float(budget), c="tab:red", ls=":", lw=1.2,
                                                 label=f"--memory_constraint {float(budget):g} GiB")


def _integer_ticks(ax, numbers) -> None:
    """Trial numbers on an axis: each one where there are few (a 1-trial study read -0.5 ... 0.5 in tenths), else
    integer ticks."""
    from matplotlib.ticker import MaxNLocator

    numbers = sorted({int(v) for v in numbers})
    if 0 < len(numbers) <= 12:
        ax.set_xticks(numbers)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_optimization(data: StudyData, path: Path) -> None:
    """Each objective against trial number with best-so-far and the chosen trial starred, plus
    the hypervolume of progress when multi."""
    import textwrap

    plt = pyplot()
    names = data.objectives.names
    n_ax = len(names) + (1 if data.objectives.multi else 0)
    fig, axes = plt.subplots(1, n_ax, figsize=(5 * n_ax, 4.2), squeeze=False)
    t = data.table.sort_values("number") if len(data.table) else data.table
    base = base_metrics(data)
    for ax, name in zip(axes[0], names):
        col = f"values_{name}"
        finite = _finite(t, [col]) if len(t) else None
        if len(t):
            _scatter_states(ax, t, "number", col)
            missing = t[~finite & ~t.state.isin(UNFINISHED)]  # NaN, or an infinite loss
            if len(missing):  # FAIL (or no finite metric): a mark on the bottom edge at its trial number
                ax.scatter(missing.number, [0.0] * len(missing), marker="x", c="tab:gray", clip_on=False, zorder=3,
                           transform=ax.get_xaxis_transform(),
                           label=f"{'/'.join(sorted(set(missing.state)))}, no finite metric (x on the axis)")
            waiting = t[t.state.isin(UNFINISHED)]  # a study read mid-run or after a stop: said, not an empty column
            if len(waiting):
                ax.scatter(waiting.number, [0.0] * len(waiting), marker="o", facecolors="none", edgecolors="tab:gray",
                           clip_on=False, zorder=3, transform=ax.get_xaxis_transform(),
                           label=f"{'/'.join(sorted(set(map(str, waiting.state))))}, no value yet (o on the axis)")
            ax.set_xlim(float(t.number.min()) - 0.5, float(t.number.max()) + 0.5)  # every trial, marked ones included
        done = t[(t.state == TrialState.COMPLETE) & finite] if len(t) else t
        if len(done):
            best = done[col].cummin() if KNOWN[name][0] == "minimize" else done[col].cummax()
            ax.step(done.number, best, where="post", c="k", lw=1.5, label="best so far (COMPLETE)")
        if data.best is not None:
            r = t[t.number == data.best].iloc[0]
            ax.scatter([data.best], [r[col]], s=220, marker="*", c="gold", edgecolors="k", zorder=5,
                       label=f"chosen trial {data.best}")
        if name in base:
            ax.axhline(base[name], **BASE_STYLE, label="base model")
        _budget_line(ax, data, name)
        ax.set_xlabel("trial")
        _integer_ticks(ax, t.number if len(t) else [])
        ax.set_ylabel(axis_label(name))
        ax.grid(alpha=0.3)
    if data.objectives.multi:
        ax, hv = axes[0][-1], data.hv_history
        x = range(1, len(hv) + 1)
        ax.plot(x, hv, marker=".", c="tab:green")
        top = max(hv, default=0.0)
        # autoscaled, so a study far from the ideal still shows its rise; never past a little above the ideal (1)
        ax.set_ylim(0, min(top * 1.25, 1.05) if top > 0 else 0.05)
        basis = getattr(hv, "basis", "")
        if len(hv):
            msg = (f"now {hv[-1]:.3g}" if top > 0 else "0: no COMPLETE trial" if not basis else
                   "0: no COMPLETE trial beats the start\non every objective")
            ax.annotate(msg, (len(hv), hv[-1]), textcoords="offset points", xytext=(-6, 8), ha="right", fontsize=8)
        ax.set_xlabel("finished trials")
        _integer_ticks(ax, list(x))
        ax.set_ylabel("\n".join(["hypervolume of progress", *textwrap.wrap(basis, 48),
                                 "(0 = start, 1 = ideal on every objective)"]), fontsize=8)
        ax.set_title("hypervolume (higher is better)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("Optimisation history")
    legend_below(fig, *axes[0][0].get_legend_handles_labels())  # the same on every objective's panel
    save_figure(fig, path, plt)


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
        name = col.removeprefix("values_")
        # not past what the metric can be: a loss or memory under 0, an accuracy over 1 (the ideal)
        low_end = IDEAL.get(name) if KNOWN.get(name, ("",))[0] == "minimize" else None
        high_end = IDEAL.get(name) if KNOWN.get(name, ("",))[0] == "maximize" else None
        out.append((float(max(lo - pad, low_end) if low_end is not None else lo - pad),
                    float(min(hi + pad, high_end) if high_end is not None else hi + pad)))
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


def _annotate_apart(ax, groups: dict[tuple[float, float], list[str]], avoid: list[tuple[float, float]] = ()) -> list:
    """Each group's trial numbers beside its point; a label that would overlap one already placed, or a marker at
    ``avoid`` (the base model's diamond, which hid a label under it), moves up in steps of its own height (two
    nearby groups printed over each other as "7,914,10,11")."""
    from matplotlib.transforms import Bbox

    ax.get_xlim(), ax.get_ylim()  # (the autoscaled limits settled: the data-to-pixel transform as drawn)
    renderer = ax.figure.canvas.get_renderer()
    half = 6 * ax.figure.dpi / 72  # a diamond of s=80 (about 9 points across), and a little room: in pixels
    placed, labels = [], []
    for x, y in avoid:
        px, py = ax.transData.transform((x, y))
        placed.append(Bbox.from_extents(px - half, py - half, px + half, py + half))
    for (x, y), numbers in sorted(groups.items(), key=lambda g: (g[0][1], g[0][0])):
        label = ax.annotate(",".join(numbers), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
        for lift in range(12):
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(b) for b in placed):
                break
            label.set_position((5, 4 + (lift + 1) * 9))
        placed.append(label.get_window_extent(renderer))
        labels.append(label)
    return labels


def plot_pareto(data: StudyData, path: Path) -> None:
    """First two objectives: trials by state, the Pareto front joined, the chosen trial starred,
    the base model as a diamond, trial numbers next to the points when there are few. When the
    front sits in a small corner (pareto_zoom), a second panel zooms on it with trial numbers."""
    plt = pyplot()
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
            ax.scatter([base[a]], [base[b]], s=80, marker="D", c="tab:purple", label="base model",
                       zorder=2.5)  # under the trials' points: one on the base model's values stays in sight
        elif a in base or b in base:  # the other axis is one the base model has no training value for (memory)
            line, name = (ax.axvline, a) if a in base else (ax.axhline, b)
            line(base[name], **BASE_STYLE, label=f"base model ({name})")
        _budget_line(ax, data, a, vertical=True)
        _budget_line(ax, data, b)
        if k == 1:
            ax.set_xlim(*zoom[0])
            ax.set_ylim(*zoom[1])
        shown = t.dropna(subset=[xa, yb]) if len(t) else t
        if k == 1:
            shown = shown[shown[xa].between(*zoom[0]) & shown[yb].between(*zoom[1])]
        if k == 1 or len(shown) <= LABEL_POINTS:
            _annotate_apart(ax, _label_groups(shown, xa, yb), [(base[a], base[b])] if a in base and b in base else [])
        if k == 1:
            ax.set_title("zoom on the front (trial numbers)", fontsize=10)
        else:
            rest = ", ".join(data.objectives.names[2:])
            ax.set_title("Pareto front" + (f" (first two objectives; a ringed trial that looks dominated is on the front "
                                           f"by {rest})" if rest else ""), fontsize=10 if not rest else 8, wrap=True)
        ax.set_xlabel(axis_label(a))
        ax.set_ylabel(axis_label(b))
        ax.grid(alpha=0.3)
    if len(t):  # trials without both values (INFEASIBLE untrained, FAIL) are not points: say how many, as the report does
        left = t[~_finite(t, [xa, yb]) & ~t.state.isin(UNFINISHED)]
        if len(left):
            counts = ", ".join(f"{n} {s}" for s, n in left.state.value_counts().sort_index().items())
            axes[0][0].plot([], [], ls="none", label=f"not drawn (no metrics): {counts}")
    legend_below(fig, *axes[0][0].get_legend_handles_labels())
    save_figure(fig, path, plt)


def legend_below(fig, handles: list, labels: list[str]) -> None:
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


def save_figure(fig, path: Path, plt) -> None:
    import io

    from moopt.yamlio import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", pad_inches=0.1)  # no label cut at an edge
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
