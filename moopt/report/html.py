"""``report.html``: one self-contained page that opens offline (no CDN, no network).

It renders data computed elsewhere (:mod:`moopt.report.results`, :mod:`moopt.report.analysis`): the PNGs are
embedded as base64 data URIs, the Pareto scatter is inline SVG drawn by a little vanilla JS from
an embedded JSON block (hover a point for its configuration and metrics), and the trials table
sorts on a header click. The page records its own health in the DOM, which the headless-browser
test reads: ``#report-ready`` once the scripts ran, ``#js-errors > .js-error`` for any error.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from moopt.console import plural
from moopt.records import TrialState
from moopt.report.analysis import (
    FEW_TRIALS,
    SCORE,
    Analysis,
    analyze,
    direction_label,
    format_importance,
)
from moopt.report.refine import Refinement, refined_command
from moopt.report.table import (
    StudyData,
    base_metrics,
    cut_by_time_ahead,
    least_infeasible_text,
    nothing_fits,
    nothing_fits_text,
    printed_name,
    why_none_completed,
)

REPORT = "report.html"
# title -> file in the output dir, embedded when present (written by results.py and analysis.py).
# pareto_front.png and param_importance.png are left out: the page draws the same data itself.
IMAGES = {
    "Optimisation history": "optimization_plot.png",
    "Learning curves": "learning_curves.png",
    "Correlations (Spearman)": "correlations.png",
    "The two most important parameters together": "interaction.png",
}
STATE_COLOURS = {TrialState.COMPLETE: "#1f77b4", TrialState.PRUNED: "#ff7f0e", TrialState.INFEASIBLE: "#d62728",
                 TrialState.FAIL: "#7f7f7f"}


def write_html_report(output_dir: str | Path, data: StudyData, analysis: Analysis | None = None,
                      refined: Refinement | None = None) -> Path:
    """Write ``report.html`` into ``output_dir`` (atomic) and return its path. ``analysis``
    defaults to :func:`moopt.report.analysis.analyze` of the same directory; ``refined``: the refined search
    space written next to it (moopt.report.refine), shown when given."""
    from moopt.yamlio import atomic_write_text

    out = Path(output_dir)
    analysis = analysis if analysis is not None else analyze(out, data)
    images = {title: (out / name).read_bytes() for title, name in IMAGES.items() if (out / name).is_file()}
    path = out / REPORT
    atomic_write_text(path, build_html(data, analysis, images, refined, out))
    return path


def _when(created) -> str:
    """The journal's ISO time as trials_summary.csv writes its times: 2026-12-07 11:10:30."""
    import pandas as pd

    try:
        return pd.Timestamp(created).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError):
        return str(created or "?")


def build_html(data: StudyData, analysis: Analysis, images: dict[str, bytes], refined: Refinement | None = None,
               out: Path | None = None) -> str:
    e = html.escape
    h = data.header
    counts = data.table.state.value_counts().to_dict() if len(data.table) else {}
    objectives = ", ".join(f"{n} ×{w:.2f}" for n, w in zip(data.objectives.names, data.objectives.weights))
    facts = [
        ("Base model", h.get("base_model", "?")),
        ("Objectives (weight)", objectives),
        ("Trials", f"{len(data.table)} (" + ", ".join(f"{v} {k}" for k, v in counts.items()) + ")"),
        ("Memory constraint", f"{h['memory_constraint_gb']:g} GiB" if h.get("memory_constraint_gb") else "none"),
        ("Started", _when(h.get("created"))),
    ]
    data_facts = h.get("data") or {}  # the journal's "data" event: files, sizes, the notes the study's start said
    for role, name in (("train", "Training data"), ("validation", "Validation data")):
        if data_facts.get(f"{role}_file"):
            facts.insert(len(facts) - 1, (name, f"{data_facts[f'{role}_file']} ({data_facts.get(f'{role}_examples', '?')} examples)"))
    notes = "".join(f"<p class='warn'>Note: {e(n)}</p>" for n in data_facts.get("notes") or [])
    body = ["<h1>moopt study report</h1>",
            "<dl class='facts'>" + "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in facts) + "</dl>" + notes,
            _best_section(data, analysis.edges),
            _refined_section(data, refined, out),
            _pareto_section(data, analysis),
            _importance_section(analysis, printed_name(out)),
            _images_section(images, data, analysis),
            _table_section(data),
            _notes_section(analysis)]
    payload = json.dumps(_payload(data, analysis), default=str, allow_nan=False).replace("</", "<\\/")
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>moopt report: {e(str(h.get('base_model', '')))}</title>"
            f"<script>{ERROR_JS}</script><style>{CSS}</style></head><body>\n<main>\n"
            + "\n".join(body)
            + f"\n</main>\n<div id='tooltip' role='tooltip' hidden></div>"
            f"<script type='application/json' id='report-data'>{payload}</script>\n<script>{MAIN_JS}</script>\n"
            "</body></html>\n")


# -- sections ------------------------------------------------------------------------------------------
def _train_it(n: int) -> str:
    """Where a trial cut by the time budget left its adapter, and the command that trains its configuration through."""
    return (f"its adapter is <code>trial_results/trial_{n}/adapter</code>, and <code>moopt train --config "
            f"trial_results/trial_{n}/config.yaml</code> trains its configuration to the end.")


def _best_section(data: StudyData, edges=()) -> str:
    e = html.escape
    if data.best is None:
        if nothing_fits(data):
            return f"<section><h2>Best configuration</h2><p class='warn'>{e(nothing_fits_text(data))}</p></section>"
        cut = "".join(f" Trial {n} was cut by the time budget at {e(where)}; on the whole validation set it scores "
                      + e(", ".join(f"{k} {_fmt(v, 'metric')}" for k, v in m.items())) + f": {_train_it(n)}"
                      for n, _, m, where in cut_by_time_ahead(data))
        if data.least_infeasible is not None:
            cut += f" {e(least_infeasible_text(data))}"
        why = f": {e(why_none_completed(data.table))}" if len(data.table) else " (no trial ran)"
        return (f"<section><h2>Best configuration</h2><p class='warn'>No trial completed; nothing to recommend{why}."
                f"{cut}</p></section>")
    row = data.table[data.table.number == data.best].iloc[0]
    metrics = [(n, row[f"values_{n}"]) for n in data.objectives.names]
    base = base_metrics(data)
    cells = "".join(
        f"<tr><th>{e(n)}</th><td>{_fmt(v, 'metric')}</td><td class='muted'>{'' if not base or n not in base else 'base model ' + _fmt(base[n], 'metric')}</td></tr>"
        for n, v in metrics)
    cells += (f"<tr><th>best value</th><td>{_fmt(data.best_score, 'score')}</td><td class='muted'>weighted progress from "
              f"{e(data.score_origin)} (0) to the ideal (1)</td></tr>")
    params = "".join(f"<tr><th>{e(c[len('params_'):])}</th><td colspan='2'>{e(_fmt(row[c], 'param'))}</td></tr>"
                     for c in data.table.columns if c.startswith("params_"))
    return (f"<section><h2>Best configuration: trial {data.best}</h2>"
            + ("<p class='muted'>The Pareto front's trial with the highest weighted progress from "
               if data.objectives.multi else f"<p class='muted'>The trial with the best {e(data.objectives.names[0])}: "
               "the most progress from ")
            + f"{e(data.score_origin)} (0) to the ideal (1); full configuration in "
            f"<code>best_config.yaml</code>, adapter in <code>trial_results/trial_{data.best}/adapter</code>.</p>"
            f"<table class='kv'>{cells}{params}</table>"
            + "".join(f"<p class='warn'>Trial {n} was cut by the time budget at {e(where)} and already scores "
                      f"{score:.3f} (" + e(", ".join(f"{k} {_fmt(v, 'metric')}" for k, v in m.items())) + ", on the whole "
                      f"validation set), ahead of the best COMPLETE trial: {_train_it(n)}</p>"
                      for n, score, m, where in cut_by_time_ahead(data))
            + ("<p class='warn'>At the edge of the searched range (the optimum may lie outside it):</p><ul>"
               + "".join(f"<li>{e(x.text())}</li>" for x in edges) + "</ul>" if edges else "")
            + "</section>")


def _refined_section(data: StudyData, refined: Refinement | None, out: Path | None) -> str:
    if refined is None or out is None:
        return ""
    e = html.escape
    rows = "".join(f"<tr><th>{e(c.name)}</th><td>{e(c.before)}</td><td>{e(c.after)}</td><td class='muted'>{e(c.why)}</td></tr>"
                   for c in refined.changes)
    return (f"<section><h2>Refined search space</h2><p class='muted'>The guide's coarse &rarr; refined search: "
            f"<code>refined_space.yaml</code> narrows each range around the {len(refined.top)} best trials by {e(refined.by)} "
            f"(trials {', '.join(map(str, refined.top))}) and widens it past an end they lean against. "
            f"Run it with the best trials so far seeding its first generation:</p>"
            f"<pre>{e(refined_command(data.header, out))}</pre>"
            f"<table class='kv'><tr><th>parameter</th><th>searched</th><th>refined</th><th>why</th></tr>{rows}</table>"
            "</section>")


def _pareto_section(data: StudyData, analysis: Analysis) -> str:
    pts = analysis.points
    left = pts[~pts.plotted] if len(pts) else pts
    missing = "".join(f"<li>trial {int(r.number)} {html.escape(r.state)}: {html.escape(str(r.error or 'no metrics'))}</li>"
                      for r in left.itertuples())
    present = set(pts[pts.plotted].state) if len(pts) else set()  # the states drawn, not every possible one
    legend = "".join(f"<span><i class='hollow' style='border-color:{c}'></i>{s} (hollow: values at its last rung)</span>"
                     if s == TrialState.PRUNED else f"<span><i style='background:{c}'></i>{s}</span>"
                     for s, c in STATE_COLOURS.items() if s in present)
    if present:  # an empty plot (every trial infeasible or failed) gets no key of what it does not draw
        n_front = int((pts.plotted & pts.pareto).sum()) if len(pts) else 0  # (a front of one trial draws no line)
        legend += ({0: "", 1: "<span><i class='pt-front'></i>Pareto front (1 trial: dark rim)</span>"}.get(
                       n_front, "<span><i class='front'></i>Pareto front</span>") if data.objectives.multi else "") + \
            ("<span><i class='ring'></i>best (gold ring)</span>" if data.best is not None else "")
    if present and base_metrics(data):
        legend += "<span><i class='base'></i>base model (no fine-tuning)</span>"
    title = "Pareto front" if data.objectives.multi else "Objective by trial"
    return (f"<section><h2>{title}</h2><p class='muted'>Hover a point for its configuration and metrics. "
            f"Pruned trials show their values at the rung where they stopped.</p>"
            f"<div class='axes'><label for='x-axis'>x</label> <select id='x-axis'></select> "
            f"<label for='y-axis'>y</label> <select id='y-axis'></select></div>"
            f"<div id='pareto'></div><noscript><p class='warn'>This plot needs JavaScript: "
            + ("pareto_front.png next to this report shows the front" if data.objectives.multi else
               "optimization_plot.png next to this report shows each trial's value")
            + ", and the trials table below has every trial's values.</p></noscript>"
            f"<div class='legend'>{legend}</div>"
            + (f"<details><summary>{plural(len(left), 'trial')} not plotted (no metrics)</summary><ul>{missing}</ul></details>" if len(left) else "")
            + "</section>")


def _importance_section(analysis: Analysis, rename=lambda k: k) -> str:
    """``rename``: each parameter's name as the console prints it (lora_r)."""
    e = html.escape
    blocks = []
    for tg, imp in analysis.importance.items():
        name = ("weighted score" if tg == SCORE else tg) + (f"{imp.at} ({imp.n_trials} trials)" if imp else "")
        if not imp:
            blocks.append(f"<div class='imp'><h3>{e(name)}</h3><p class='muted'>Not computed: {e(imp.reason or '')}</p></div>")
            continue
        bars = "".join(f"<div class='bar'><span class='label'>{i}. {e(k)}</span><span class='track'>"
                       f"<span style='width:{v * 100:.1f}%'></span></span><span class='pct'>{v * 100:.1f}%</span></div>"
                       for i, (k, v) in enumerate(((rename(k), v) for k, v in imp.items()), 1))
        blocks.append(f"<div class='imp'><h3>{e(name)}</h3>{bars}</div>")
    text = "\n\n".join(format_importance(imp, rename=rename) for imp in analysis.importance.values())
    n = min((imp.n_trials for imp in analysis.importance.values() if imp), default=None)
    few = (f"<p class='warn'>Only {n} trials: the shares are rough; run more trials before trusting them.</p>"
           if n is not None and n < FEW_TRIALS else "")
    if any(imp.rung is not None for imp in analysis.importance.values() if imp):
        few += ("<p class='warn'>Too few trials COMPLETE: the shares are computed on the values the trials had at a "
                "pruning rung (on its evaluation subset), so they say what drove the early evaluations.</p>")
    return (f"<section><h2>Parameter importance</h2><p class='muted'>Share of each target's variance explained "
            f"by each parameter (fANOVA over a random forest, COMPLETE trials): how much, not which direction "
            f"(the correlation map below says which).</p>{few}"
            f"<div class='imps'>{''.join(blocks)}</div><details><summary>as text</summary><pre>{e(text)}</pre></details></section>")


ALT = {  # what each plot shows, for a reader who cannot see it (the caption is its title); its numbers are in text below
    "Optimisation history": "Each objective by trial number, with the best so far and the chosen trial starred{best}, "
                            "and the hypervolume of progress by finished trials. The trials table below has every value.",
    "Learning curves": "Training and validation loss of each trial by step or epoch{best}; pruned trials end in a cross. "
                       "Each trial's final values are in the trials table below.",
    "Correlations (Spearman)": "Heat map of the Spearman correlation of each parameter with each objective's better "
                               "direction, -1 to +1. {corr}",
    "The two most important parameters together": "Contour of the target over the two most important parameters, "
                                                  "interpolated between the COMPLETE trials{best}.",
}


def _alt(title: str, data: StudyData, analysis: Analysis | None) -> str:
    best = f" (the chosen trial is {data.best})" if data.best is not None else ""
    corr = ""
    if analysis is not None and len(analysis.correlations):
        c = analysis.correlations.stack().dropna()
        top = c.abs().sort_values(ascending=False).index[:4]
        corr = "Strongest: " + "; ".join(f"{p} with {t} {c[(p, t)]:+.2f}" for p, t in top) + "."
    return ALT.get(title, title).format(best=best, corr=corr)


def _images_section(images: dict[str, bytes], data: StudyData | None = None, analysis: Analysis | None = None) -> str:
    figs = "".join(f"<figure><figcaption>{html.escape(t)}</figcaption>"
                   f"<img alt='{html.escape(_alt(t, data, analysis) if data is not None else t)}' "
                   f"src='data:image/png;base64,{base64.b64encode(b).decode()}'></figure>"
                   for t, b in images.items())
    return f"<section><h2>Plots</h2>{figs or '<p class=muted>No plots yet.</p>'}</section>"


def _table_section(data: StudyData) -> str:
    t = data.table
    if not len(t):
        return "<section><h2>Trials</h2><p class='muted'>No trials yet.</p></section>"
    cols = ["number", "state", *[f"values_{n}" for n in data.objectives.names]]
    cols += [c for c in ("score", "pareto", "peak_memory_gb", "duration") if c in t.columns]
    cols += [c for c in t.columns if c.startswith("params_")] + ["error"]
    cols += ["taken_from"] if "taken_from" in t.columns and t.taken_from.notna().any() else []  # --warm_start's
    head = "".join(f"<th data-col='{i}' tabindex='0'>{html.escape(_header(c))}</th>" for i, c in enumerate(cols))
    rows = []
    for _, r in t.sort_values("number").iterrows():
        cells = []
        for c in cols:
            v = r.get(c)
            if c == "duration":
                v = v.total_seconds() if isinstance(v, pd.Timedelta) else None
            key = "" if _missing(v) else (float(v) if _is_num(v) else str(v))
            if isinstance(key, float) and not math.isfinite(key):  # JSON has no Infinity: the sort's JSON.parse threw
                key = math.copysign(1e308, key)
            shown = _fmt(v, _kind(c))
            if c == "peak_memory_gb" and shown and r.get("peak_memory_from") in ("estimate", "measured"):
                # an untrained trial's: the gate's estimate, or a probe's measure, not a training's peak
                shown += " (estimate)" if r.get("peak_memory_from") == "estimate" else " (measured, not trained)"
            cells.append(f"<td data-v='{html.escape(json.dumps(key))}'>{html.escape(shown)}</td>")
        cls = " class='best'" if r.number == data.best else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (f"<section><h2>Trials</h2><p class='muted'>Click a header to sort. Also in <code>trials_summary.csv</code>.</p>"
            f"<div class='scroll'><table id='trials'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div></section>")


def _notes_section(analysis: Analysis) -> str:
    notes = [*analysis.correlation_notes, *analysis.notes]
    if not notes:
        return ""
    return "<section><h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul></section>"


# -- data for the scatter ----------------------------------------------------------------------------
def _payload(data: StudyData, analysis: Analysis) -> dict[str, Any]:
    names = list(data.objectives.names)
    axes = [{"key": f"values_{n}", "label": direction_label(n)} for n in names]
    pts = analysis.points
    if data.objectives.multi:
        axes.append({"key": "score", "label": direction_label(SCORE)})
    if "peak_memory_gb" in pts and pts.peak_memory_gb.notna().any():
        axes.append({"key": "peak_memory_gb", "label": "peak_memory_gb (GiB)"})
    axes.append({"key": "number", "label": "trial number"})
    default = [axes[0]["key"], axes[1]["key"]] if data.objectives.multi else ["number", axes[0]["key"]]
    points = []
    for _, r in pts[pts.plotted].iterrows() if len(pts) else []:
        points.append({
            "number": int(r.number), "state": r.state, "pareto": bool(r.pareto), "best": bool(r.best),
            "error": None if _missing(r.error) else str(r.error),
            "values": {a["key"]: _num(r.get(a["key"])) for a in axes},
            "params": {c[len("params_"):]: _plain(r[c]) for c in pts.columns if c.startswith("params_")},
        })
    # the base model on the objectives' axes only (base_metrics: not its peak memory, an evaluation's)
    base = {f"values_{n}": _num(v) for n, v in base_metrics(data).items() if n in names}
    return {"axes": axes, "default": default, "colours": STATE_COLOURS, "points": points, "base": base}


def _header(col: str) -> str:
    for prefix in ("values_", "params_"):
        if col.startswith(prefix):
            return col[len(prefix):]
    return {"number": "trial", "duration": "duration (s)", "peak_memory_gb": "peak GiB",
            "taken_from": "taken over from"}.get(col, col)


def _missing(v: Any) -> bool:
    if v is None or v is pd.NaT:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) or hasattr(v, "dtype") and v.dtype.kind in "iuf"


def _num(v: Any) -> float | None:
    return None if _missing(v) or not _is_num(v) or not math.isfinite(float(v)) else float(v)


def _plain(v: Any) -> Any:
    if _missing(v):
        return None
    if hasattr(v, "item"):
        v = v.item()
    return v if isinstance(v, (int, float, str, bool)) else str(v)


def _fmt(v: Any, kind: str = "") -> str:
    """A cell as the console prints it: ``kind`` "metric" (objective values, peaks) to 4 decimals, "score" to 3,
    "param" to 3 significant digits; else an integer as such, other numbers to 4 significant digits."""
    if _missing(v):
        return ""
    if isinstance(v, (bool,)) or (hasattr(v, "dtype") and v.dtype.kind == "b"):
        return "yes" if v else ""
    if _is_num(v):
        v = float(v)
        if kind in ("metric", "score") and math.isfinite(v):
            return f"{v:.{4 if kind == 'metric' else 3}f}"
        if v.is_integer() and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.3g}" if kind == "param" else f"{v:.4g}"
    return str(v)


def _kind(column: str) -> str:
    """_fmt's kind of a trials-table column."""
    if column.startswith("values_") or column == "peak_memory_gb":
        return "metric"
    return "score" if column == "score" else "param" if column.startswith("params_") else ""


ERROR_JS = r"""
window.addEventListener('error', function (ev) {
  var box = document.getElementById('js-errors');
  if (!box) { box = document.createElement('div'); box.id = 'js-errors';
    (document.body || document.documentElement).appendChild(box); }
  var p = document.createElement('p'); p.className = 'js-error';
  p.textContent = 'JavaScript error: ' + ev.message + ' (line ' + ev.lineno + ')';
  box.appendChild(p);
});
"""

MAIN_JS = r"""
(function () {
  'use strict';
  var D = JSON.parse(document.getElementById('report-data').textContent);
  var SVG = 'http://www.w3.org/2000/svg';
  var W = 680, H = 420, M = {l: 70, r: 20, t: 15, b: 50};
  var tip = document.getElementById('tooltip');

  function el(name, attrs, parent) {
    var n = document.createElementNS(SVG, name);
    for (var k in attrs) n.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(n);
    return n;
  }
  function niceTicks(lo, hi, n) {
    var span = hi - lo, step = Math.pow(10, Math.floor(Math.log10(span / n)));
    var err = span / n / step;
    step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
    var out = [], digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push({v: v, s: v.toFixed(digits)});
    return out;
  }
  function extent(vals) {
    var lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals);
    if (hi === lo) { var d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
    var pad = (hi - lo) * 0.06;
    return [lo - pad, hi + pad];
  }
  function fmt(v) {
    if (v === null || v === undefined) return '–';
    if (typeof v !== 'number') return String(v);
    // as the console and the tables: 4 decimals, or 3 significant digits under 0.01 (a learning rate)
    return Number.isInteger(v) ? String(v) : Math.abs(v) >= 0.01 ? v.toFixed(4) : v.toPrecision(3);
  }
  function label(key) {
    for (var i = 0; i < D.axes.length; i++) if (D.axes[i].key === key) return D.axes[i].label;
    return key;
  }

  var onPlot = [];  // the points drawn, with their positions: points at one spot are named in each one's tip
  function showTip(p, ev) {
    var rows = ['<b>trial ' + p.number + '</b> <span style="color:' + esc(D.colours[p.state] || '#999') + '">' + esc(p.state) + '</span>'
      + (p.best ? ' · best' : '') + (p.pareto ? ' · Pareto' : '')];
    var here = onPlot.filter(function (q) { return q !== p && Math.hypot(q.sx - p.sx, q.sy - p.sy) < 8; });  // (points overlap: 6.5 px and a rim)
    if (here.length) rows.push('<i>at the same spot: trial' + (here.length > 1 ? 's ' : ' ') +
                               here.map(function (q) { return q.number; }).join(', ') + '</i>');
    D.axes.forEach(function (a) { if (a.key !== 'number') rows.push(esc(a.key.replace('values_', '')) + ': ' + esc(fmt(p.values[a.key]))); });
    rows.push('<hr>');
    Object.keys(p.params).forEach(function (k) { rows.push(esc(k) + ': ' + esc(fmt(p.params[k]))); });
    if (p.error) rows.push('<hr>' + esc(p.error));
    tip.innerHTML = '';
    rows.forEach(function (r) { var d = document.createElement('div'); d.innerHTML = r; tip.appendChild(d); });  // escaped above
    tip.hidden = false;
    tip.style.left = (ev.pageX + 14) + 'px';
    tip.style.top = (ev.pageY + 14) + 'px';
  }
  function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]; }); }

  function draw(xk, yk) {
    var box = document.getElementById('pareto');
    box.innerHTML = '';
    var svg = el('svg', {viewBox: '0 0 ' + W + ' ' + H, width: '100%', role: 'group',
                         'aria-label': 'Trials: ' + label(yk) + ' against ' + label(xk) + '; each point is focusable'}, box);
    var pts = D.points.filter(function (p) { return p.values[xk] !== null && p.values[yk] !== null; });
    if (!pts.length) { var t = el('text', {x: W / 2, y: H / 2, 'text-anchor': 'middle'}, svg); t.textContent = 'no trial has these values yet'; return 0; }
    var base = (D.base && D.base[xk] != null && D.base[yk] != null) ? D.base : null;
    var xv = pts.map(function (p) { return p.values[xk]; }), yv = pts.map(function (p) { return p.values[yk]; });
    if (base) { xv.push(base[xk]); yv.push(base[yk]); }
    var ex = extent(xv), ey = extent(yv);
    function sx(v) { return M.l + (v - ex[0]) / (ex[1] - ex[0]) * (W - M.l - M.r); }
    function sy(v) { return H - M.b - (v - ey[0]) / (ey[1] - ey[0]) * (H - M.t - M.b); }
    var g = el('g', {'class': 'grid'}, svg);
    niceTicks(ex[0], ex[1], 6).forEach(function (t) {
      el('line', {x1: sx(t.v), x2: sx(t.v), y1: M.t, y2: H - M.b}, g);
      el('text', {x: sx(t.v), y: H - M.b + 16, 'text-anchor': 'middle'}, g).textContent = t.s;
    });
    niceTicks(ey[0], ey[1], 6).forEach(function (t) {
      el('line', {x1: M.l, x2: W - M.r, y1: sy(t.v), y2: sy(t.v)}, g);
      el('text', {x: M.l - 6, y: sy(t.v) + 4, 'text-anchor': 'end'}, g).textContent = t.s;
    });
    el('rect', {x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, 'class': 'frame'}, svg);
    el('text', {x: (M.l + W - M.r) / 2, y: H - 10, 'text-anchor': 'middle', 'class': 'axis'}, svg).textContent = label(xk);
    el('text', {x: 16, y: (M.t + H - M.b) / 2, 'text-anchor': 'middle', 'class': 'axis',
                transform: 'rotate(-90 16 ' + (M.t + H - M.b) / 2 + ')'}, svg).textContent = label(yk);
    var front = pts.filter(function (p) { return p.pareto; }).sort(function (a, b) { return a.values[xk] - b.values[xk]; });
    if (front.length > 1)
      el('polyline', {'class': 'front', points: front.map(function (p) { return sx(p.values[xk]) + ',' + sy(p.values[yk]); }).join(' ')}, svg);
    if (base) {
      var bx = sx(base[xk]), by = sy(base[yk]);
      el('rect', {x: bx - 5, y: by - 5, width: 10, height: 10, 'class': 'base', transform: 'rotate(45 ' + bx + ' ' + by + ')'}, svg)
        .appendChild(document.createElementNS(SVG, 'title')).textContent = 'base model (no fine-tuning)';
    }
    // the front's points over the others and the chosen one over all (a trial drawn later on the same spot hid it)
    function rank(p) { return p.best ? 2 : p.pareto ? 1 : 0; }
    onPlot = pts.slice().sort(function (a, b) { return rank(a) - rank(b) || a.number - b.number; });
    onPlot.forEach(function (p) {  // the gold ring under every point: drawn over its neighbours it hid them from the mouse
      if (p.best) el('circle', {cx: sx(p.values[xk]), cy: sy(p.values[yk]), r: 11, 'class': 'best-ring'}, svg);
    });
    onPlot.forEach(function (p) {
      var x = sx(p.values[xk]), y = sy(p.values[yk]);
      p.sx = x; p.sy = y;
      var c = el('circle', {cx: x, cy: y, r: p.pareto ? 6.5 : 5, fill: D.colours[p.state] || '#999',
                            'class': 'pt' + (p.pareto ? ' pareto' : '') + (p.best ? ' best' : '') + (p.state === 'PRUNED' ? ' pruned' : ''),
                            'data-trial': p.number, 'data-state': p.state, tabindex: 0, role: 'img',
                            'aria-label': 'trial ' + p.number + ' ' + p.state + (p.best ? ', chosen' : '') +
                              (p.pareto ? ', on the Pareto front' : '') + ': ' + label(xk) + ' ' + fmt(p.values[xk]) +
                              ', ' + label(yk) + ' ' + fmt(p.values[yk])}, svg);
      c.addEventListener('mouseenter', function (ev) { showTip(p, ev); });
      c.addEventListener('mousemove', function (ev) { tip.style.left = (ev.pageX + 14) + 'px'; tip.style.top = (ev.pageY + 14) + 'px'; });
      c.addEventListener('mouseleave', function () { tip.hidden = true; });
      c.addEventListener('focus', function () { var r = c.getBoundingClientRect();
        showTip(p, {pageX: r.right + window.scrollX, pageY: r.bottom + window.scrollY}); });
      c.addEventListener('blur', function () { tip.hidden = true; });
    });
    return pts.length;
  }

  var xs = document.getElementById('x-axis'), ys = document.getElementById('y-axis');
  D.axes.forEach(function (a) {
    [xs, ys].forEach(function (s) {
      var o = document.createElement('option'); o.value = a.key; o.textContent = a.key.replace('values_', ''); s.appendChild(o);
    });
  });
  xs.value = D['default'][0]; ys.value = D['default'][1];
  function redraw() { return draw(xs.value, ys.value); }
  xs.addEventListener('change', redraw); ys.addEventListener('change', redraw);
  var drawn = redraw();

  // sortable trials table: numbers numerically, empty cells last, click again to reverse
  var table = document.getElementById('trials');
  if (table) {
    var ths = table.querySelectorAll('th');
    ths.forEach(function (th) {
      function sort() {
        var col = +th.getAttribute('data-col'), asc = th.getAttribute('aria-sort') !== 'ascending';
        ths.forEach(function (o) { o.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var va = JSON.parse(a.cells[col].getAttribute('data-v')), vb = JSON.parse(b.cells[col].getAttribute('data-v'));
          if (va === '' || vb === '') return va === vb ? 0 : va === '' ? 1 : -1;
          var r = (typeof va === 'number' && typeof vb === 'number') ? va - vb : String(va).localeCompare(String(vb));
          return asc ? r : -r;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener('click', sort);
      th.addEventListener('keydown', function (ev) {
        if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); sort(); } });
    });
  }

  var ok = document.createElement('div');
  ok.id = 'report-ready'; ok.hidden = true; ok.setAttribute('data-points', drawn);
  document.body.appendChild(ok);
})();
"""

CSS = """
:root { --fg: #1d2330; --muted: #667085; --line: #e3e6ec; --accent: #1f77b4; }
body { margin: 0; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: #f6f7f9; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { font-size: 24px; margin: 0 0 12px; }
h2 { font-size: 18px; margin: 0 0 8px; }
h3 { font-size: 14px; margin: 0 0 6px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px; margin: 16px 0; }
.muted { color: var(--muted); }
.warn { color: #b42318; font-weight: 600; }
code { background: #f0f2f5; padding: 1px 4px; border-radius: 3px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
table.kv th { text-align: left; font-weight: 500; color: var(--muted); padding: 2px 16px 2px 0; }
table.kv td { padding: 2px 12px 2px 0; }
.scroll { overflow-x: auto; }
#trials th, #trials td { padding: 4px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; text-align: right; }
#trials th { position: sticky; top: 0; background: #fafbfc; cursor: pointer; user-select: none; }
#trials th[aria-sort=ascending]::after { content: " ▲"; } #trials th[aria-sort=descending]::after { content: " ▼"; }
#trials tr.best td { background: #fff8db; font-weight: 600; }
#trials tbody tr:hover td { background: #f0f5fb; }
#pareto svg { max-width: 680px; display: block; }
.grid line { stroke: #eceef2; } .grid text { font-size: 11px; fill: var(--muted); }
.frame { fill: none; stroke: #c9ced6; } .axis { font-size: 12px; fill: var(--fg); }
.front { fill: none; stroke: #222; stroke-width: 1.2; stroke-dasharray: 4 3; }
.pt { stroke: #fff; stroke-width: 1; cursor: pointer; opacity: .9; } .pt.pareto { stroke: #222; stroke-width: 1.5; }
.pt:hover, .pt:focus { stroke: #000; stroke-width: 2; outline: none; }
.best-ring { fill: #ffd700; stroke: #222; stroke-width: 1; opacity: .85; pointer-events: none; }
.pt.pruned { fill: #fff; stroke: #ff7f0e; stroke-width: 2; } .base { fill: #9467bd; stroke: #fff; }
.legend { display: flex; flex-wrap: wrap; gap: 14px; color: var(--muted); font-size: 12px; margin-top: 6px; }
.legend i { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 5px; vertical-align: middle; }
.legend i.front { border-radius: 0; height: 0; width: 16px; border-top: 1.5px dashed #222; }
.legend i.pt-front { background: #fff; border: 1.5px solid #222; width: 8px; height: 8px; }
.legend i.ring { background: #ffd700; border: 1px solid #222; }
.legend i.hollow { background: #fff; border: 2px solid; width: 7px; height: 7px; }
.legend i.base { background: #9467bd; border-radius: 0; transform: rotate(45deg); }
.axes { font-size: 12px; color: var(--muted); margin-bottom: 4px; } .axes select { margin: 0 10px 0 2px; }
#tooltip { position: absolute; z-index: 10; background: #fff; border: 1px solid #c9ced6; border-radius: 6px; padding: 8px 10px;
  box-shadow: 0 4px 14px rgba(0,0,0,.12); font-size: 12px; max-width: 340px; pointer-events: none; }
#tooltip hr { border: 0; border-top: 1px solid var(--line); margin: 4px 0; }
.imps { display: flex; flex-wrap: wrap; gap: 24px; }
.imp { flex: 1 1 300px; }
.bar { display: grid; grid-template-columns: 150px 1fr 52px; align-items: center; gap: 8px; font-size: 12px; }
.bar .track { background: #eef1f5; border-radius: 3px; height: 10px; }
.bar .track span { display: block; height: 100%; background: var(--accent); border-radius: 3px; }
.bar .pct { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 12px 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
figure img { max-width: 100%; border: 1px solid var(--line); border-radius: 4px; }
#js-errors { background: #fee4e2; color: #b42318; padding: 8px 24px; }
"""
