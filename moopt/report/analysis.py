"""What drove the results: parameter importance, correlations, learning curves, Pareto points.

Data first (plain dicts and DataFrames the tests assert on), drawing second (PNG renderers at the
end of the file, matplotlib Agg). Everything comes from the output directory alone, like
:mod:`moopt.report.results`, so ``moopt report`` rebuilds it for a running or interrupted study.

Importance uses Optuna's fANOVA evaluator (functional ANOVA over a random forest; Hutter et al.
2014), fed by an in-memory Optuna study rebuilt from the trials table. Optuna and scikit-learn are
the optional extra ``analysis``; without them importance is empty with a reason, the rest works.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moopt.config import LR_DIVERGES, LR_STILL
from moopt.console import numbered, plural
from moopt.records import FALLBACK, TrialState
from moopt.report.plots import BASE_STYLE, axis_label, legend_below, pyplot, save_figure
from moopt.report.table import UNFINISHED, StudyData, base_metrics, printed_name
from moopt.search.objectives import KNOWN

MIN_TRIALS = 3  # fANOVA on fewer COMPLETE trials says nothing
FEW_TRIALS = 10  # below this the shares move from one seed to the next: the summary says so
SCORE = "score"  # the weighted score column of StudyData.table (higher is better)
MISSING_DEPS = "parameter importance needs optuna and scikit-learn: pip install 'moopt[analysis]'"


class Importance(dict):
    """``{param: share}``, highest first, shares summing to 1; empty with ``reason`` when it could
    not be computed (too few trials, a constant target, optional dependencies missing)."""

    def __init__(self, shares: dict[str, float] | None = None, *, target: str, n_trials: int = 0,
                 method: str = "fanova", reason: str | None = None, rung: int | None = None, n_complete: int | None = None,
                 constant: tuple[str, ...] = (), together: tuple[tuple[str, ...], ...] = ()):
        super().__init__(shares or {})
        # groups of parameters whose values moved together in every one of these trials (each value of one always with
        # the same value of the others): their shares split one effect between them
        self.together = together
        self.target, self.n_trials, self.method, self.reason = target, n_trials, method, reason
        self.constant = constant  # searched parameters that took one value in these trials: not ranked
        # rung: computed on the values the trials had at this pruning rung (0 = the first), because too few
        # trials COMPLETE; n_complete: how many did
        self.rung, self.n_complete = rung, n_complete

    @property
    def at(self) -> str:
        """`` at pruning rung N`` for a title when computed at a rung, else empty."""
        return "" if self.rung is None else f" at pruning rung {self.rung}"

    @property
    def basis(self) -> str:
        """What the shares were computed on, for a table column: ``complete`` or ``rung 0`` (numbered from 0, as the pruning messages are)."""
        return "complete" if self.rung is None else f"rung {self.rung}"


@dataclass
class Analysis:
    """Everything :func:`analyze` computes; what the PNG/CSV/HTML renderers take."""

    importance: dict[str, Importance]  # target (each objective, then "score") -> shares
    correlations: pd.DataFrame  # index: param (one-hot "name=value" for text categoricals), columns: targets
    correlation_notes: list[str]
    curves: pd.DataFrame  # long format, see learning_curves()
    points: pd.DataFrame  # see pareto_points()
    notes: list[str] = field(default_factory=list)
    edges: list = field(default_factory=list)  # RangeEdge: ranges the best trial sits at the end of (range_edges)


# -- search space -> Optuna distributions -------------------------------------------------------------
def _choice_key(v: Any) -> Any:
    """Categorical options as the params_ columns show them: lists comma-joined (target_modules)."""
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v


def load_space_spec(output_dir: str | Path | None) -> dict[str, dict[str, Any]]:
    """``search_space.yaml`` written by the study, keyed by the params_ name (``learning_rate``)."""
    if output_dir is None or not (Path(output_dir) / "search_space.yaml").is_file():
        return {}
    import yaml

    raw = yaml.safe_load((Path(output_dir) / "search_space.yaml").read_text()) or {}
    return {key: spec for body in raw.values() if isinstance(body, dict)
            for key, spec in body.items() if isinstance(spec, dict) and "type" in spec}


def _param_names(table: pd.DataFrame) -> list[str]:
    return [c[len("params_"):] for c in table.columns if c.startswith("params_")]


def _distributions(table: pd.DataFrame, spec: dict[str, dict[str, Any]]):
    """Optuna distributions mirroring the search space; parameters missing from the spec (a study
    without search_space.yaml) are inferred from the table: numbers -> float range, else choices."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for name in _param_names(table):
        col = table[f"params_{name}"].dropna()
        s = spec.get(name)
        if s is not None and s["type"] in ("log_uniform", "uniform"):
            out[name] = FloatDistribution(float(s["min"]), float(s["max"]), log=s["type"] == "log_uniform")
        elif s is not None and s["type"] == "int":
            step = int(s.get("step", 1))
            low = int(s["min"])
            out[name] = IntDistribution(low, low + step * ((int(s["max"]) - low) // step), step=step)
        elif s is not None and s["type"] == "categorical":
            out[name] = CategoricalDistribution([_choice_key(v) for v in s["values"]])
        elif len(col) and pd.api.types.is_numeric_dtype(col):
            out[name] = FloatDistribution(float(col.min()), float(col.max()) if col.max() > col.min() else float(col.min()) + 1.0)
        elif len(col):
            out[name] = CategoricalDistribution(sorted(set(map(str, col))))
    return out


def _to_param(value: Any, dist) -> Any:
    """A table value as a valid point of ``dist`` (4.0 -> 4, clipped to the bounds 6-digit
    rounding may cross), or None when it is not one (then the trial is left out)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(dist, CategoricalDistribution):
        for c in dist.choices:
            if c == value or str(c) == str(value):
                return c
        return None
    if isinstance(dist, IntDistribution):
        return int(min(max(round(float(value)), dist.low), dist.high))
    return float(min(max(float(value), dist.low), dist.high))


def _target_column(data: StudyData, target: str) -> str:
    if target == SCORE:
        return SCORE
    if target not in data.objectives.names:
        raise ValueError(f"importance target must be one of {[*data.objectives.names, SCORE]}, got {target!r}")
    return f"values_{target}"


def _complete(data: StudyData, col: str) -> pd.DataFrame:
    """COMPLETE trials with a finite value in ``col``: pruned trials stopped at a rung, so their
    metrics are not comparable with finished ones."""
    t = data.table
    if not len(t) or col not in t.columns:
        return t.iloc[0:0]
    t = t[t.state == TrialState.COMPLETE]
    return t[np.isfinite(pd.to_numeric(t[col], errors="coerce"))]


def _at_rung(data: StudyData, target: str, col: str) -> tuple[pd.DataFrame, int] | None:
    """The trials (rows of ``data.table``) with their ``target`` value at the pruning rung that the most
    of them reached (the deeper on a tie), ``col`` holding that value; None without rung evaluations.

    Every trial evaluates at the same fractions of its optimizer steps on the same validation subset,
    which is what the pruner compares, so values at one rung are comparable with one another (not with
    the final evaluations). The weighted score needs each objective and the score's 0 (``score_start``)."""
    objectives = data.objectives
    by_rung: dict[int, dict[int, float]] = {}
    for ev in data.rungs:
        m = ev.get("metrics") or {}
        try:
            if target == SCORE:
                if data.score_start is None or any(k not in m for k in objectives.names):
                    continue
                F = np.array([objectives.to_minimize({k: float(m[k]) for k in objectives.names})])
                value = float(objectives.score(F, objectives.to_minimize(data.score_start))[0])
            else:
                value = float(m[target])
        except (KeyError, TypeError, ValueError):
            continue
        if np.isfinite(value):
            by_rung.setdefault(int(ev["rung"]), {})[int(ev["number"])] = value
    if not by_rung:
        return None
    rung = max(by_rung, key=lambda k: (len(by_rung[k]), k))
    values = by_rung[rung]
    rows = data.table[data.table.number.isin(list(values))].copy()
    rows[col] = rows.number.map(values).astype(float)
    return rows, rung


# -- importance ------------------------------------------------------------------------------------
def param_importance(data: StudyData, target: str, seed: int = 0, output_dir: str | Path | None = None) -> Importance:
    """fANOVA share of the variance of ``target`` (an objective name or ``"score"``) explained by
    each parameter, over COMPLETE trials. Same data and seed -> same shares. ``output_dir``
    supplies ``search_space.yaml`` for the distributions (without it they are inferred).

    With pruning, few trials may COMPLETE (the guide's basic study: 5 trials, 2 COMPLETE). When fewer
    than ``MIN_TRIALS`` did and at least that many reached a pruning rung, the shares are computed on
    the values at that rung instead, and say so (``Importance.rung``): what drove the early evaluations."""
    col = _target_column(data, target)
    done = _complete(data, col)
    n = len(done)
    rung, n_complete = None, None
    if n < MIN_TRIALS:
        at = _at_rung(data, target, col)
        if at is None or len(at[0]) < MIN_TRIALS:
            more = f", {len(at[0])} reached a pruning rung" if at is not None else ""
            return Importance(target=target, n_trials=n,
                              reason=f"{plural(n, 'COMPLETE trial')}{more}; importance needs at least {MIN_TRIALS}")
        (done, rung), n_complete = at, n
        n = len(done)
    basis = {"rung": rung, "n_complete": n_complete} if rung is not None else {}
    where = "COMPLETE trial" if rung is None else f"trial at pruning rung {rung}"
    y = done[col].astype(float).to_numpy()
    if np.ptp(y) == 0:
        return Importance(target=target, n_trials=n, reason=f"{target} is the same in every {where}", **basis)
    try:
        import optuna  # noqa: F401
        import sklearn  # noqa: F401  (fANOVA's random forest)
        from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    except ImportError:
        return Importance(target=target, n_trials=n, reason=MISSING_DEPS, **basis)

    dists = _distributions(done, load_space_spec(output_dir))
    # a parameter that took one value in these trials explains nothing (fANOVA would give it 0): said, not ranked
    constant = tuple(sorted(k for k, d in dists.items() if not d.single() and done[f"params_{k}"].nunique(dropna=True) <= 1))
    dists = {k: d for k, d in dists.items() if not d.single() and k not in constant}
    if not dists:
        return Importance(target=target, n_trials=n, reason=f"no parameter varies across the {where}s", **basis)
    study = _optuna_study(done, y, dists, "minimize")  # direction does not matter for variance shares
    if len(study.trials) < MIN_TRIALS:
        return Importance(target=target, n_trials=len(study.trials),
                          reason=f"{plural(len(study.trials), 'trial')} with every parameter inside the search space", **basis)
    shares = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed), normalize=True)
    total = sum(shares.values())
    if not total or not np.isfinite(total):
        return Importance(target=target, n_trials=len(study.trials), reason="fANOVA found no explained variance", **basis)
    shares = {k: float(v) / total for k, v in sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))}
    return Importance(shares, target=target, n_trials=len(study.trials), constant=constant,
                      together=_moved_together(done, list(dists)), **basis)


def _moved_together(done: pd.DataFrame, names: list[str]) -> tuple[tuple[str, ...], ...]:
    """Groups (2 or more) of ``names`` whose values correspond one to one across the rows of ``done`` (a small study
    drew batch 8 with r 8 and alpha 16, batch 4 with r 4 and alpha 8: three shares of one effect)."""
    codes = {k: tuple(pd.factorize(done[f"params_{k}"].astype(str))[0]) for k in names}  # each row's value, as its
    groups: dict[tuple, list[str]] = {}  # order of first appearance: equal codes = values in one-to-one correspondence
    for k in names:
        if len(set(codes[k])) == len(codes[k]):  # a value in each trial of its own (a continuous one): any two such
            continue  # correspond one to one, which says nothing
        groups.setdefault(codes[k], []).append(k)
    return tuple(tuple(g) for g in groups.values() if len(g) > 1)


def _optuna_study(done: pd.DataFrame, y, dists: dict, direction: str):
    """An in-memory Optuna study of these trials (``y`` their values) over ``dists``; a trial with a value
    outside them is left out."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction)
    for (_, row), value in zip(done.iterrows(), y):
        params = {k: _to_param(row[f"params_{k}"], d) for k, d in dists.items()}
        if any(v is None for v in params.values()):
            continue
        study.add_trial(optuna.trial.create_trial(value=float(value), params=params, distributions=dists))
    return study


def _on_plot_axis(dist):
    """``dist`` as the contour's axis shows it: numbers spread over 8x or more (batch sizes 2..128, ranks 4..64), a
    categorical or an int range, on a log axis, where a linear one crowds the small values into one edge."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        numbers = [c for c in dist.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if len(numbers) < len(dist.choices) or len(numbers) < 3:
            return dist
        low, high = min(numbers), max(numbers)
    elif isinstance(dist, IntDistribution) and not dist.log:
        low, high = dist.low, dist.high
    else:
        return dist
    return FloatDistribution(float(low), float(high), log=True) if low > 0 and high >= 8 * low else dist


def plot_interaction(data: StudyData, importance: dict[str, "Importance"], output_dir: str | Path, path: Path) -> bool:
    """How the two most important parameters (fANOVA, on the score or the single objective) act together: Optuna's
    contour of the target over them, each COMPLETE trial a dot (the guide's "relationships between
    parameters": the best learning rate often moves with the batch size). Written only when importance was
    computed on at least FEW_TRIALS COMPLETE trials and at least two parameters have a share; else a stale file is
    removed. True when written."""
    target = SCORE if data.objectives.multi else data.objectives.names[0]
    imp = importance.get(target)
    if imp is None or len(imp) < 2 or imp.rung is not None or imp.n_trials < FEW_TRIALS:
        path.unlink(missing_ok=True)
        return False
    import warnings

    from matplotlib.ticker import NullLocator
    from optuna.visualization.matplotlib import plot_contour

    col = _target_column(data, target)
    done = _complete(data, col)
    pair = list(imp)[:2]
    searched = {k: d for k, d in _distributions(done, load_space_spec(output_dir)).items() if k in pair}
    dists = {k: _on_plot_axis(d) for k, d in searched.items()}
    higher = target == SCORE or KNOWN[target][0] == "maximize"
    study = _optuna_study(done, done[col].astype(float).to_numpy(), dists, "maximize" if higher else "minimize")
    label = f"{'weighted score' if target == SCORE else target} ({'higher' if higher else 'lower'} is better)"
    plt = pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning
        ax = plot_contour(study, params=pair, target_name=label)
    ax = ax.flat[0] if isinstance(ax, np.ndarray) else ax
    fig = ax.figure
    fig.set_size_inches(7.5, 5.5)
    name = printed_name(Path(output_dir))  # lora_r, as the console and the other plots name it
    ax.set_xlabel(name(pair[0]))
    ax.set_ylabel(name(pair[1]))
    for p, axis in zip(pair, (ax.xaxis, ax.yaxis)):
        if dists.get(p) is not searched.get(p):  # a log axis for numbers the space names: ticked at them, not 10^k
            d = searched[p]
            ticks = (sorted(d.choices) if hasattr(d, "choices") else
                     [2**k for k in range(math.ceil(math.log2(d.low)), math.floor(math.log2(d.high)) + 1)])
            axis.set_ticks([float(t) for t in ticks], [f"{t:g}" for t in ticks])
            axis.set_minor_locator(NullLocator())
    chosen = done[done.number == data.best] if data.best is not None else done.iloc[:0]
    if len(chosen) and all(f"params_{p}" in chosen for p in pair):
        try:
            ax.scatter([float(chosen[f"params_{pair[0]}"].iloc[0])], [float(chosen[f"params_{pair[1]}"].iloc[0])], s=220,
                       marker="*", c="gold", edgecolors="k", zorder=6, label=f"chosen trial {data.best}")
            ax.legend(loc="best", fontsize=8)
        except (TypeError, ValueError):  # a categorical of strings (target_modules): Optuna's own axis positions
            pass
    ax.set_title(f"{label} over the two most important parameters\n({name(pair[0])} {imp[pair[0]]:.0%}, "
                 f"{name(pair[1])} {imp[pair[1]]:.0%} by fANOVA; {len(study.trials)} COMPLETE trials, interpolated "
                 "between them)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, plt)
    return True


def importance_targets(data: StudyData) -> list[str]:
    """Each objective, then the weighted score (only when there are several objectives)."""
    return [*data.objectives.names, *([SCORE] if data.objectives.multi else [])]


def format_importance(imp: Importance, top: int | None = None, rename=lambda k: k) -> str:
    """The guide's ``Parameter Importance:`` block: ``1. learning_rate      (47.3%)`` lines, then what
    it was computed on. ``rename`` gives a parameter's printed name (``r`` -> ``lora_r``)."""
    what = "the weighted score" if imp.target == SCORE else imp.target
    if not imp:
        return f"Parameter Importance: not computed for {what} ({imp.reason})"
    items = [(rename(k), v) for k, v in (list(imp.items())[:top] if top else imp.items())]
    width = max(len(k) for k, _ in items) + 6
    lines = [f"{i}. {k:<{width}}({v * 100:.1f}%)" for i, (k, v) in enumerate(items, 1)]
    caution = ": too few to trust the order" if imp.n_trials < FEW_TRIALS else ""
    if imp.rung is None:
        basis = f"(fANOVA on {what}, {imp.n_trials} COMPLETE trials{caution})"
    else:  # too few COMPLETE: the values at a pruning rung, which say what drove the early evaluations
        basis = (f"(fANOVA on {what}{imp.at}, {imp.n_trials} trials ({imp.n_complete} COMPLETE): "
                 f"what drove the early evaluations{'; too few to trust the order' if caution else ''})")
    if imp.constant:  # searched, but every one of these trials had the same value: nothing to rank it by
        basis += f"\n(not ranked, one value in every one of these trials: {', '.join(map(rename, imp.constant))})"
    for group in getattr(imp, "together", ()):
        basis += (f"\n({', '.join(map(rename, group))}: moved together in every one of these trials, so their shares "
                  "split one effect that these trials cannot tell apart)")
    return "\n".join(["Parameter Importance:", *lines, basis])


# -- correlations ----------------------------------------------------------------------------------
def correlations(data: StudyData) -> pd.DataFrame:
    """Spearman rank correlation of each parameter with the improvement of each objective (and
    the score), over COMPLETE trials: minimised objectives (eval_loss) are negated first, so on
    every column + means "a higher value of the parameter goes with a better objective" and a
    parameter that helps every objective has the same sign on all of them. Numeric parameters
    (floats, ints, numeric categoricals such as batch_size) enter as they are: Spearman only uses
    their order. Text categoricals (target_modules) enter one-hot, one row ``name=value`` per
    option (+ = choosing it goes with better). What was left out and why: ``.attrs["notes"]``;
    the number of COMPLETE trials: ``.attrs["n_trials"]``."""
    targets = [*data.objectives.names, *([SCORE] if data.objectives.multi else [])]
    cols = {t: _target_column(data, t) for t in targets}
    t = data.table
    done = t[t.state == TrialState.COMPLETE] if len(t) else t
    notes: list[str] = []
    if len(done) < MIN_TRIALS:
        notes.append(f"{plural(len(done), 'COMPLETE trial')}; correlations need at least {MIN_TRIALS}")
        out = pd.DataFrame(columns=targets, dtype=float)
        out.attrs.update(notes=notes, n_trials=len(done))
        return out
    X: dict[str, pd.Series] = {}
    for name in _param_names(done):
        col = done[f"params_{name}"]
        if col.nunique(dropna=True) < 2:
            notes.append(f"{name}: the same in every COMPLETE trial, left out")
        elif pd.api.types.is_numeric_dtype(col):
            X[name] = col.astype(float)
        else:
            for v in sorted(col.dropna().astype(str).unique()):
                X[f"{name}={v}"] = (col.astype(str) == v).astype(float)
    sign = {tgt: -1.0 if tgt != SCORE and KNOWN[tgt][0] == "minimize" else 1.0 for tgt in targets}
    rows = {}
    for pname, x in X.items():
        rows[pname] = {tgt: _spearman(x, sign[tgt] * pd.to_numeric(done[c], errors="coerce")) if c in done else np.nan
                       for tgt, c in cols.items()}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=targets).astype(float)
    out.attrs.update(notes=notes, n_trials=len(done))
    return out


def better_label(target: str) -> str:
    """``lower eval_loss``: what "better" means for a target, the column title of correlations."""
    if target == SCORE:
        return "higher weighted score"
    return f"{'lower' if KNOWN[target][0] == 'minimize' else 'higher'} {target}"


def _spearman(x: pd.Series, y: pd.Series) -> float:
    ok = x.notna() & y.notna() & np.isfinite(y)
    if ok.sum() < MIN_TRIALS or x[ok].nunique() < 2 or y[ok].nunique() < 2:
        return float("nan")
    rho = float(x[ok].rank().corr(y[ok].rank()))  # Pearson of ranks (ties averaged) = Spearman
    return 0.0 if abs(rho) < 1e-12 else rho  # (an exact 0 came out as 1.86e-17 in correlations.csv)


# -- learning curves ------------------------------------------------------------------------------
CURVE_COLUMNS = ["trial", "state", "step", "epoch", "kind", "loss", "examples"]


def learning_curves(output_dir: str | Path) -> pd.DataFrame:
    """Long format, one row per point: trial, state, step, epoch (passes over the training data at that step: what
    trials of different batch sizes share), kind ("train" per optimizer step, "eval" at each rung and at the end),
    loss, examples (validation examples of an eval point:
    rungs use a subset, so they can sit apart from the final eval; NaN for train points). Pruned
    and failed trials included: a pruned trial's last eval row is where it was stopped. State comes from the journal (which also
    knows INFEASIBLE), else from metrics.json."""
    from moopt.journal import replay

    out = Path(output_dir)
    ends = replay(out).ends
    rows = []
    for f in sorted((out / "trial_results").glob("trial_*/metrics.json")):
        try:
            number = int(f.parent.name.split("_", 1)[1])
            m = json.loads(f.read_text())
        except (ValueError, json.JSONDecodeError):
            continue  # a baseline folder or a file being written
        state = str(ends[number].state) if number in ends else m.get("state", "RUNNING")
        curve = [p for p in m.get("curve") or [] if "step" in p]
        steps = [int(p["step"]) for p in curve]
        epochs = [float(p.get("epoch", np.nan)) for p in curve]
        for p, s, e in zip(curve, steps, epochs):
            rows.append((number, state, s, e, "train", float(p["train_loss"]), np.nan))
        for p in m.get("evals") or []:
            if "eval_loss" in p:  # an evaluation's epoch: that of its step on the training curve
                e = float(np.interp(int(p["step"]), [0, *steps], [0.0, *epochs])) if steps else np.nan
                rows.append((number, state, int(p["step"]), e, "eval", float(p["eval_loss"]),
                             float(p.get("examples", np.nan))))
    df = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    df = df.sort_values(["trial", "kind", "step"], kind="stable").reset_index(drop=True)
    # trained trials whose metrics.json is gone (trial_results/ removed, or the study copied without it): the journal
    # keeps their results but not their curves, which the plot then says, rather than showing fewer trials silently
    drawn = set(df.trial)
    df.attrs["missing"] = sorted(n for n, e in ends.items() if (e.steps or 0) > 0 and n not in drawn)
    return df


# -- Pareto points ---------------------------------------------------------------------------------
def pareto_points(data: StudyData) -> pd.DataFrame:
    """One row per finished trial: number, state, the objective values, ``plotted`` (has every
    objective value), ``pareto`` (on the feasible front of COMPLETE trials), ``best`` (the chosen
    trial), score, peak_memory_gb, error and the params. Infeasible, pruned and failed trials keep
    their state; a pruned trial's values are those of its last rung."""
    t = data.table
    obj = [f"values_{n}" for n in data.objectives.names]
    keep = ["number", "state", *obj, "score", "peak_memory_gb", "error",
            *[c for c in t.columns if c.startswith("params_")]]
    if not len(t):
        return pd.DataFrame(columns=[*keep, "plotted", "pareto", "best"])
    pts = t[~t.state.isin(UNFINISHED)].reindex(columns=keep).copy()
    pts["plotted"] = pts[obj].notna().all(axis=1) & np.isfinite(pts[obj].astype(float)).all(axis=1)
    pts["pareto"] = pts.number.isin(data.pareto)
    pts["best"] = pts.number == data.best if data.best is not None else False
    return pts.sort_values("number").reset_index(drop=True)


# -- ranges the best trial sits at the edge of ------------------------------------------------------
EDGE = 0.1  # the best trial within the outer 10% of a range, on its scale (log for log_uniform)
EDGE_MIN_TRIALS = 6  # COMPLETE trials: with fewer, the best sits at an edge by chance as often as not
# values a parameter cannot go beyond, whatever the range says: no note asks to widen past them
LIMITS = {"dropout": (0.0, 1.0), "warmup_ratio": (0.0, 1.0), "adam_beta1": (0.0, 1.0), "adam_beta2": (0.0, 1.0),
          "weight_decay": (0.0, None), "adam_epsilon": (0.0, None), "max_grad_norm": (0.0, None),
          "r": (1, None), "alpha": (1, None), "batch_size": (1, None), "gradient_accumulation_steps": (1, None),
          # where LoRA barely moves or diverges: a refined space widened to 0.17 that its own study's start calls so
          "learning_rate": (LR_STILL, LR_DIVERGES)}
EDGE_SKIPPED = ("max_seq_length",)  # bounded by the data and the memory, not an optimum to look past
# ... and the trend over every COMPLETE trial must point outward: Spearman's rank correlation of the parameter
# with the score, one-sided p below this. NSGA-II breeds the best trial's values into its next trials, so the best
# trials "leaning" to an end is weak evidence alone: on a 10-trial demo study, r 4 and alpha 64 (the best's, copied
# into its neighbours; rho -0.36 and +0.11 over all trials) leaned as much as batch_size 4 (rho -0.74, p 0.007).
EDGE_TREND_P = 0.1


@dataclass
class RangeEdge:
    param: str
    value: Any  # the best trial's
    side: str  # "low" | "high"
    low: Any  # the range's ends (the first and last values of an ordered categorical)
    high: Any
    scale: str  # "log scale" | "linear scale" | "values [..]"
    leaning: int  # how many of the best trials lie in the outer third on that side
    top: int  # of how many
    rho: float  # Spearman's rank correlation of the parameter with the score over the COMPLETE trials
    p: float  # its one-sided p value, outward

    def text(self) -> str:
        fmt = _fmt_value
        if self.scale.startswith("values"):
            where = f"the {'smallest' if self.side == 'low' else 'largest'} of its {self.scale}"
            fix = f"try {'smaller' if self.side == 'low' else 'larger'} values"
        else:
            where = f"{'bottom' if self.side == 'low' else 'top'} {EDGE:.0%} of {fmt(self.low)} to {fmt(self.high)} ({self.scale})"
            fix = f"widen its {'min' if self.side == 'low' else 'max'}"
        return (f"{self.param} {fmt(self.value)}: {where}, with {self.leaning} of the {self.top} best trials on that side "
                f"and a trend that way over all (rank correlation with the score {self.rho:+.2f}, p {self.p:.2g}); "
                f"the optimum may lie {'below' if self.side == 'low' else 'above'} it ({fix})")


def _fmt_value(v: Any) -> str:
    """A range's value as the search space file would give it: 64 (not 64.0), 0.00133, q_proj."""
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1:
        return str(int(v))
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _position(spec: dict[str, Any]):
    """value -> its place in the range, 0 (low end) .. 1 (high end), on the parameter's scale; None for a
    parameter without a scale (an unordered or non-numeric categorical) or with fewer than 3 values (each then
    an end: whether the better trials lean to one is a coin toss on a parameter that does not matter)."""
    t = spec.get("type")
    if t in ("log_uniform", "uniform", "int"):
        lo, hi = float(spec["min"]), float(spec["max"])
        if not hi > lo or (t == "int" and (hi - lo) // int(spec.get("step", 1)) < 2):  # 2 values: each an end
            return None
        if t == "log_uniform":
            return lambda v: (math.log(float(v)) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return lambda v: (float(v) - lo) / (hi - lo)
    values = spec.get("values") or []
    numeric = bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    ascending = numeric and list(values) == sorted(values)
    if t != "categorical" or len(values) < 3 or not ascending or spec.get("ordered") is False:
        return None
    return lambda v: next((i / (len(values) - 1) for i, x in enumerate(values) if float(x) == float(v)), None)


def range_edges(data: StudyData, spec: dict[str, dict[str, Any]]) -> list[RangeEdge]:
    """Searched ranges whose end the best trial sits at (within EDGE of it) while most of the study's best third
    (by score, at least 3 trials) lies in the outer third on the same side: the optimum may lie outside the range
    (the guide's first pitfall, "too narrow search ranges"). Not where the parameter cannot go further (LIMITS:
    dropout 0, batch_size 1, ...), nor with fewer than EDGE_MIN_TRIALS COMPLETE trials."""
    t = data.table
    if data.best is None or SCORE not in t.columns:
        return []
    ok = t[(t.state == TrialState.COMPLETE) & t[SCORE].notna()]
    if len(ok) < EDGE_MIN_TRIALS:
        return []
    top = ok.nlargest(max(3, len(ok) // 3), SCORE)
    best = ok[ok.number == data.best]
    out = []
    for name, s in spec.items():
        col = f"params_{name}"
        pos = _position(s)
        if name in EDGE_SKIPPED or pos is None or col not in ok.columns or not len(best) or pd.isna(best[col].iloc[0]):
            continue
        value = best[col].iloc[0]
        u = pos(value)
        places = [pos(v) for v in top[col].dropna()]
        places = [p for p in places if p is not None]
        if u is None or not places:
            continue
        values = s.get("values")
        low, high = (values[0], values[-1]) if values else (s["min"], s["max"])
        floor, ceiling = LIMITS.get(name, (None, None))
        every = [(pos(v), sc) for v, sc in zip(ok[col], ok[SCORE]) if pd.notna(v)]
        every = [(x, sc) for x, sc in every if x is not None]
        for side, at_edge, leaning, room in (
                ("low", u <= EDGE, sum(p <= 1 / 3 for p in places), floor is None or float(low) > floor),
                ("high", u >= 1 - EDGE, sum(p >= 2 / 3 for p in places), ceiling is None or float(high) < ceiling)):
            if not (at_edge and room and 2 * leaning > len(places)) or len({x for x, _ in every}) < 2:
                continue
            from scipy.stats import spearmanr

            rho, p = spearmanr([x for x, _ in every], [sc for _, sc in every],
                               alternative="less" if side == "low" else "greater")
            if not p < EDGE_TREND_P:
                continue
            scale = (f"values [{', '.join(map(_fmt_value, values))}]" if values else
                     "log scale" if s["type"] == "log_uniform" else "linear scale")
            out.append(RangeEdge(name, value.item() if hasattr(value, "item") else value, side, low, high, scale,
                                 leaning, len(places), float(rho), float(p)))
    return out


def kernel_notes(data: StudyData) -> list[str]:
    """Trials that ran another LoRA kernel path than the rest (a Triton failure under --kernels auto moves a trial
    to torch): their tokens/s and peak memory are that path's, so the report says which they are."""
    t = data.table
    if "backend" not in t:
        return []
    ran = t.dropna(subset=["backend"])
    failed = ran[ran["backend_reason"].astype("string").str.contains(FALLBACK, regex=False, na=False)]
    if ran.backend.nunique() < 2 and failed.empty:
        return []
    out = [f"LoRA kernels: {b} in {numbered('trial', rows.number)}" for b, rows in ran.groupby("backend")]
    out += [f"Trial {r.number}: {r.backend_reason} (its speed and peak memory are the torch path's)" for r in failed.itertuples()]
    return out


# -- all at once ----------------------------------------------------------------------------------
def analyze(output_dir: str | Path, data: StudyData, seed: int = 0) -> Analysis:
    imp = {tg: param_importance(data, tg, seed=seed, output_dir=output_dir) for tg in importance_targets(data)}
    corr = correlations(data)
    return Analysis(imp, corr, corr.attrs.get("notes", []), learning_curves(output_dir), pareto_points(data),
                    notes=kernel_notes(data), edges=range_edges(data, load_space_spec(output_dir)))


def write_analysis(output_dir: str | Path, data: StudyData, seed: int = 0) -> Analysis:
    """Compute, then write param_importance.csv, correlations.csv and the three PNGs."""
    from moopt.yamlio import atomic_write_text

    out = Path(output_dir)
    a = analyze(out, data, seed=seed)
    shown = printed_name(out)  # the console's name beside the space's key: lora_r for r
    rows = [{"target": tg, "rank": i, "param": k, "printed": shown(k), "share": v, "n_trials": imp.n_trials,
             "basis": imp.basis} for tg, imp in a.importance.items() for i, (k, v) in enumerate(imp.items(), 1)]
    # basis: complete, or rung N (see param_importance)
    columns = ["target", "rank", "param", "printed", "share", "n_trials", "basis"]
    atomic_write_text(out / "param_importance.csv", pd.DataFrame(rows, columns=columns).to_csv(index=False))
    # columns say what + goes with: "better_eval_loss" (lower eval_loss), as the PNG shows
    atomic_write_text(out / "correlations.csv",
                      a.correlations.rename(columns=lambda c: f"better_{c}").rename_axis("param").to_csv())
    plot_importance(a.importance, out / "param_importance.png", rename=shown)
    plot_correlations(a.correlations, out / "correlations.png", rename=shown)
    plot_learning_curves(a.curves, out / "learning_curves.png", best=data.best, pareto=data.pareto,
                         base_eval_loss=base_metrics(data).get("eval_loss"))
    try:
        plot_interaction(data, a.importance, out, out / "interaction.png")
    except ImportError:  # optuna is the optional extra "analysis": importance said so already
        pass
    return a


# -- renderers (matplotlib, Agg) ------------------------------------------------------------------


def plot_importance(importance: dict[str, Importance], path: Path, rename=lambda k: k) -> None:
    """One horizontal bar chart per target, largest share on top; the trial count in each title,
    with a warning when it is below FEW_TRIALS. ``rename``: each parameter's name as the console prints it."""
    plt = pyplot()
    targets = list(importance) or ["(none)"]
    fig, axes = plt.subplots(1, len(targets), figsize=(4.5 * len(targets), 3.8), squeeze=False)
    for ax, tg in zip(axes[0], targets):
        imp = importance.get(tg)
        name = "weighted score" if tg == SCORE else tg
        ax.set_title(name + (f"{imp.at} ({imp.n_trials} trials)" if imp else ""), fontsize=10)
        if not imp:
            ax.text(0.5, 0.5, (imp.reason if imp is not None else "no data"), ha="center", va="center",
                    wrap=True, fontsize=8, transform=ax.transAxes)
            ax.set_axis_off()
            continue
        names, shares = [rename(k) for k in list(imp)[::-1]], [imp[k] * 100 for k in list(imp)[::-1]]
        ax.barh(names, shares, color="tab:blue" if imp.n_trials >= FEW_TRIALS else "#9ab6d3")
        for i, s in enumerate(shares):
            ax.text(s, i, f" {s:.1f}%", va="center", fontsize=8)
        ax.set_xlim(0, max(shares) * 1.25)
        ax.set_xlabel("share of variance explained (%)")
        ax.grid(axis="x", alpha=0.3)
    n = min((imp.n_trials for imp in importance.values() if imp), default=None)
    rung = any(imp.rung is not None for imp in importance.values() if imp)
    title = "Parameter importance (fANOVA over COMPLETE trials; says how much, not which direction)"
    if rung:
        complete = min(imp.n_complete for imp in importance.values() if imp and imp.rung is not None)
        title = (f"Parameter importance at a pruning rung (only {complete} COMPLETE): what drove the early evaluations "
                 "(fANOVA; says how much, not which direction)")
    if n is not None and n < FEW_TRIALS:
        title += f"\nonly {n} trials: the shares are rough, run more trials before trusting them"
    chars = max(40, int(fig.get_figwidth() * 72 / (11 * 0.6)))  # what a line of 11 pt text holds across the figure
    title = "\n".join(textwrap.fill(line, chars) for line in title.split("\n"))
    fig.suptitle(title, fontsize=11, color="black" if n is None or n >= FEW_TRIALS else "#b42318")
    fig.tight_layout()
    save_figure(fig, path, plt)


def plot_correlations(corr: pd.DataFrame, path: Path, rename=lambda k: k) -> None:
    """Heatmap of Spearman correlations with improvement (see correlations()), -1 .. +1 on a
    diverging map centred on 0: green = the parameter going up goes with a better objective,
    pink = with a worse one, on every column alike. Values written in the cells. ``rename``: each parameter's
    name as the console prints it (lora_r), as param_importance.png names it."""
    plt = pyplot()
    n_rows, n_cols = max(len(corr.index), 1), max(len(corr.columns), 1)
    longest = max([len(str(i)) for i in corr.index] + [10])  # one-hot labels run long: ~0.07 in per char
    fig, ax = plt.subplots(figsize=(3.2 + 0.07 * longest + 1.5 * n_cols, 2.0 + 0.4 * n_rows))
    n = corr.attrs.get("n_trials")
    if corr.empty:
        ax.text(0.5, 0.5, "too few COMPLETE trials", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        im = ax.imshow(corr.to_numpy(dtype=float), cmap="PiYG", vmin=-1, vmax=1, aspect="auto")
        ax.set_xticks(range(len(corr.columns)), [better_label(c) for c in corr.columns], fontsize=9)
        ax.set_yticks(range(len(corr.index)), [rename(str(i).split("=", 1)[0]) + (f"={str(i).split('=', 1)[1]}" if "="
                                               in str(i) else "") for i in corr.index])
        for i in range(len(corr.index)):
            for j in range(len(corr.columns)):
                v = corr.iat[i, j]
                ax.text(j, i, "–" if pd.isna(v) else f"{v:+.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(v) > 0.75 else "black")
        bar = fig.colorbar(im, ax=ax)
        bar.set_label("Spearman ρ with the better direction\n+ green: higher parameter value, better objective\n"
                      "− pink: higher parameter value, worse objective", fontsize=8)
    onehot = any("=" in str(i) for i in corr.index)
    few = bool(n) and n < FEW_TRIALS  # a ±1.00 from 3 trials, in full colour, read as evidence
    ax.set_title("Parameter vs objective (Spearman ρ" + (f", {n} COMPLETE trial{'s' if n != 1 else ''}" if n else "") + ")"
                 + ("\nrows name=value: 1 when that value was chosen" if onehot else "")
                 + (f"\nonly {n} trial{'s' if n != 1 else ''}: a few trials give large ρ by chance" if few else ""),
                 fontsize=10, color="#b42318" if few else "black")
    fig.tight_layout()
    save_figure(fig, path, plt)


HIGHLIGHT = ["tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:cyan", "tab:olive"]
MUTED = "#bbbbbb"  # trials neither chosen nor on the front
LINESTYLE = {TrialState.COMPLETE: "-", TrialState.PRUNED: "--", TrialState.INFEASIBLE: ":", TrialState.FAIL: "-."}


def curve_roles(trials: list[int], best: int | None, pareto: list[int] | tuple[int, ...]) -> dict[int, tuple[str, str | None]]:
    """trial -> (colour, legend label or None): the chosen trial black, the other Pareto trials
    one colour each (up to len(HIGHLIGHT), the rest dark grey under one label), the others muted."""
    roles: dict[int, tuple[str, str | None]] = {n: (MUTED, None) for n in trials}
    if best is not None and best in roles:
        roles[best] = ("black", f"trial {best} (chosen)")
    rest = [n for n in sorted(pareto) if n != best and n in roles]
    for n, c in zip(rest, HIGHLIGHT):
        roles[n] = (c, f"trial {n} (Pareto front)")
    extra = rest[len(HIGHLIGHT):]
    for i, n in enumerate(extra):
        roles[n] = ("#555555", f"{len(extra)} more Pareto trials" if i == 0 else None)
    return roles


def plot_learning_curves(curves: pd.DataFrame, path: Path, best: int | None = None,
                         pareto: list[int] | tuple[int, ...] = (), base_eval_loss: float | None = None) -> None:
    """Train loss (left) and eval loss (right) against epoch (against step where a curve has no epoch), one line
    per trial: trials of different batch sizes take different steps over the same data. The chosen trial
    and the Pareto front in colour and named in the legend, the others muted grey; line style by
    state (pruned dashed with an x where it was stopped). Eval points on part of the validation
    set (rungs) hollow; the base model's eval loss dashed purple."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    roles = curve_roles(sorted(set(curves.trial)) if len(curves) else [], best, pareto)
    order = sorted(roles, key=lambda n: (roles[n][0] != MUTED, n == best))  # muted first, chosen on top
    legend: dict[str, object] = {}  # label -> handle, one legend for both panels
    states_seen: set[str] = set()
    rung_evals = False
    x = "epoch" if len(curves) and "epoch" in curves and curves.epoch.notna().all() else "step"
    for ax, kind in zip(axes, ("train", "eval")):
        sub = curves[curves.kind == kind] if len(curves) else curves
        for trial in order:
            g = sub[sub.trial == trial] if len(sub) else sub
            if not len(g):
                continue
            state = g.state.iloc[0]
            states_seen.add(state)
            colour, label = roles[trial]
            lit = colour != MUTED
            ax.plot(g[x], g.loss, c=colour, ls=LINESTYLE.get(state, "-"), lw=(2.2 if trial == best else 1.6) if lit else 0.9,
                    alpha=1.0 if lit else 0.8, zorder=3 if lit else 2, label=label,
                    marker="o" if len(g) == 1 and kind == "train" else None, ms=4)  # one step: a line of one point is none
            if kind == "eval":
                full = g.examples.max() if g.examples.notna().any() else np.nan
                part = g.examples < full
                ax.scatter(g[x][~part], g.loss[~part], c=colour, s=14 if lit else 8, zorder=4 if lit else 2)
                ax.scatter(g[x][part], g.loss[part], facecolors="white", edgecolors=colour, s=18 if lit else 10,
                           zorder=4 if lit else 2)
            if state == TrialState.PRUNED:
                ax.plot(g[x].iloc[-1], g.loss.iloc[-1], "x", c=colour if lit else "#999999",
                        ms=7 if lit else 5, mew=1.8 if lit else 1.2, zorder=4 if lit else 2)
        if kind == "eval" and base_eval_loss is not None and np.isfinite(base_eval_loss):
            ax.axhline(base_eval_loss, **BASE_STYLE, label="base model (no fine-tuning)")
        if not len(sub):
            ax.text(0.5, 0.5, "no curves recorded", ha="center", va="center", transform=ax.transAxes)
        legend.update({lb: h for h, lb in zip(*ax.get_legend_handles_labels())})
        if kind == "eval" and len(sub):
            rung_evals = bool((sub.examples < sub.groupby("trial").examples.transform("max")).any())
        ax.set_xlabel("epoch (passes over the training data)" if x == "epoch" else "optimizer step")
        ax.set_ylabel(f"{kind} loss (lower is better)")
        ax.set_title(f"{kind} loss" + (" (per optimizer step)" if kind == "train" else " (rungs and final)"), fontsize=10)
        ax.grid(alpha=0.3)
    # the chosen trial first, the front, the base model; then what grey lines and line styles mean
    labels = sorted(legend, key=lambda lb: (not lb.endswith("(chosen)"), lb.startswith("base model")))
    handles = [legend[lb] for lb in labels]
    if any(c == MUTED for c, _ in roles.values()):
        handles.append(Line2D([], [], c=MUTED, lw=1.5))
        labels.append("other trials")
    for state, text in ((TrialState.PRUNED, "pruned (x = stopped)"), (TrialState.INFEASIBLE, "infeasible"), (TrialState.FAIL, "failed")):
        if state in states_seen:
            handles.append(Line2D([], [], c="#666666", ls=LINESTYLE[state], lw=1.2, marker="x" if state == TrialState.PRUNED else None))
            labels.append(text)
    if rung_evals:
        handles.append(Line2D([], [], ls="", marker="o", mfc="white", mec="#666666"))
        labels.append("rung eval (on part of the validation set)")
    missing = curves.attrs.get("missing") or []
    if missing:  # their metrics.json is gone: said where the curves would be
        shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        fig.suptitle(f"{plural(len(missing), 'trained trial')} not drawn: no trial_results/trial_N/metrics.json for "
                     f"{'trial' if len(missing) == 1 else 'trials'} {shown}", fontsize=9, color="#b35900")
    legend_below(fig, handles, labels)
    save_figure(fig, path, plt)


def direction_label(name: str) -> str:
    """An axis title saying which way is better, the arrow pointing there (see results.axis_label)."""
    if name == SCORE:
        return "weighted score (higher is better →)"
    return axis_label(name)
