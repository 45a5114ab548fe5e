"""report.html: written, self-contained, and working in a real headless browser (Debian's chromium).

The page records its own health in the DOM (``#report-ready`` after init, ``#js-errors > .js-error``
for any error), so ``chromium --dump-dom`` proves that its scripts ran without errors.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_analysis import synthetic_trials, write_fake_study

from moopt.report.analysis import write_analysis
from moopt.report.html import REPORT, write_html_report
from moopt.report.plots import plot_optimization, plot_pareto
from moopt.report.table import load_study

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = write_fake_study(tmp_path_factory.mktemp("report") / "study", synthetic_trials(24))
    data = load_study(out)
    plot_optimization(data, out / "optimization_plot.png")
    plot_pareto(data, out / "pareto_front.png")
    return write_html_report(out, data, write_analysis(out, data))


def plotted_trials(report: Path) -> set[int]:
    pts = load_study(report.parent).table.dropna(subset=["values_eval_loss", "values_eval_accuracy"])
    return set(pts.number.astype(int))


def test_report_is_one_self_contained_file(report):
    text = report.read_text()
    assert report.name == REPORT
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)  # nothing fetched
    assert "<link" not in text and "@import" not in text and "url(http" not in text
    assert text.count("data:image/png;base64,") == 4  # history, learning curves, correlations, interaction
    assert re.search(r"1\. learning_rate +\(", text)  # importance as the guide prints it
    data = json.loads(re.search(r"<script type='application/json' id='report-data'>(.*?)</script>", text, re.S).group(1))
    assert {p["number"] for p in data["points"]} == plotted_trials(report)
    assert sum(p["best"] for p in data["points"]) == 1


# -- in a real browser ------------------------------------------------------------------------------
def browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip("no headless browser: install Debian's chromium (`apt-get install -y chromium`)")


def dump_dom(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """Load ``page`` headless with no network, return (DOM after the scripts ran, console lines)."""
    cmd = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
           "--enable-logging=stderr", "--v=0", "--dump-dom", page.resolve().as_uri()]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=25)
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish loading the report within 25 s")
    assert res.returncode == 0, res.stderr[-2000:]
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    return res.stdout, console


def with_script(report: Path, dest: Path, js: str) -> Path:
    """A copy of the report with ``js`` run after the page's own scripts."""
    dest.write_text(report.read_text().replace("</body>", f"<script>{js}</script></body>"))
    return dest


def test_report_loads_in_chromium_without_errors_and_draws_every_point(report, tmp_path):
    dom, console = dump_dom(report, tmp_path)
    assert console == []  # no console message at all, errors included
    assert 'class="js-error"' not in dom
    ready = re.search(r'<div id="report-ready"[^>]*data-points="(\d+)"', dom)
    assert ready, "the page's init did not finish"
    trials = {int(n) for n in re.findall(r'<circle [^>]*data-trial="(\d+)"', dom)}
    assert trials == plotted_trials(report) and int(ready.group(1)) == len(trials)
    assert len(re.findall(r'<circle [^>]*class="pt[^"]*\bbest\b', dom)) == 1
    states = set(re.findall(r'<circle [^>]*data-state="(\w+)"', dom))
    assert {"COMPLETE", "PRUNED", "INFEASIBLE"} <= states  # FAIL has no metrics, so no point


def test_hover_shows_the_configuration_and_headers_sort_the_table(report, tmp_path):
    probe = """
      var r = {}, c = document.querySelector('circle[data-trial="3"]');
      c.dispatchEvent(new MouseEvent('mouseenter', {clientX: 20, clientY: 20}));
      var tip = document.getElementById('tooltip');
      r.tipVisible = !tip.hidden; r.tip = tip.textContent;
      c.dispatchEvent(new MouseEvent('mouseleave')); r.tipHidden = tip.hidden;
      var th = document.querySelector('#trials th[data-col="0"]');
      th.click(); th.click();  // trial number, descending
      r.desc = Array.from(document.querySelectorAll('#trials tbody tr')).map(function (tr) { return tr.cells[0].textContent; });
      var loss = document.querySelector('#trials th[data-col="2"]'); loss.click();
      r.loss = Array.from(document.querySelectorAll('#trials tbody tr')).map(function (tr) { return tr.cells[2].textContent; });
      var out = document.createElement('pre'); out.id = 'probe'; out.textContent = JSON.stringify(r); document.body.appendChild(out);
    """
    dom, console = dump_dom(with_script(report, tmp_path / "probe.html", probe), tmp_path)
    assert console == [] and 'class="js-error"' not in dom
    r = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1)))
    assert r["tipVisible"] and r["tipHidden"]
    assert "trial 3" in r["tip"] and "PRUNED" in r["tip"] and "learning_rate:" in r["tip"] and "eval_loss:" in r["tip"]
    assert r["desc"] == [str(n) for n in range(23, -1, -1)]
    losses = [float(v) for v in r["loss"] if v]
    assert losses == sorted(losses) and r["loss"][-1] == ""  # ascending, the failed trial (no value) last


def test_a_script_error_would_be_caught(report, tmp_path):
    """The checks above can fail: an error thrown on the page lands in #js-errors."""
    dom, console = dump_dom(with_script(report, tmp_path / "broken.html", "undefinedFunction();"), tmp_path)
    assert 'class="js-error"' in dom and "undefinedFunction" in dom
    assert any("undefinedFunction" in line for line in console)


def test_an_infinite_metric_neither_breaks_the_tables_sort_nor_vanishes_from_the_plot(tmp_path, monkeypatch):
    """An infinite eval_loss was written as data-v='Infinity', which the sort's JSON.parse throws on; the optimisation
    plot dropped the trial without a mark (only NaN was marked) and the axis started past it. The Pareto zoom reached
    past what a metric can be (a loss under 0, an accuracy over 1)."""
    from moopt.report.plots import pareto_zoom
    from moopt.report.table import load_study

    trials = synthetic_trials(8)
    trials[0] = {**trials[0], "metrics": {**trials[0]["metrics"], "eval_loss": float("inf")}}
    out = write_fake_study(tmp_path / "s", trials)
    data = load_study(out)
    write_html_report(out, data)
    keys = re.findall(r"data-v='([^']*)'", (out / REPORT).read_text())
    for k in keys:
        json.loads(html.unescape(k))  # what the page's JSON.parse does
    assert not any("Infinity" in k for k in keys)
    from moopt.report import plots

    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, plt: drawn.append(fig))
    plot_optimization(data, out / "optimization_plot.png")
    fig = drawn[0]
    assert fig.axes[0].get_xlim()[0] < 0  # trial 0 (inf) on the axis, marked
    assert any("no finite metric" in t.get_text() for t in fig.legends[0].texts)
    trials[1] = {**trials[1], "metrics": {**trials[1]["metrics"], "eval_loss": 0.01, "eval_accuracy": 0.999}}
    zoom = pareto_zoom(load_study(write_fake_study(tmp_path / "z", trials)))
    assert zoom is None or (zoom[0][0] >= 0 and zoom[1][1] <= 1), zoom


def test_the_trials_table_says_which_peaks_no_training_measured(tmp_path):
    """An untrained INFEASIBLE trial's peak GiB (the gate's estimate) sat among training peaks unmarked; the CSV's
    peak_memory_from told them apart, the page did not."""
    trials = synthetic_trials(8)  # trial 7 is INFEASIBLE
    trials[7]["end"] = {"peak_from": "estimate"}
    trials[6]["state"], trials[6]["error"], trials[6]["end"] = "INFEASIBLE", "not trained: probe", {"peak_from": "measured"}
    out = write_fake_study(tmp_path / "s", trials)
    data = load_study(out)
    text = write_html_report(out, data, write_analysis(out, data)).read_text()
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"<tr[^>]*><td data-v='(\d+)(?:\.0)?'>.*?</tr>", text)}
    assert "(estimate)</td>" in rows[7] and "(measured, not trained)</td>" in rows[6]
    assert "(estimate)" not in rows[0] and "not trained)" not in rows[0]


def test_report_numbers_read_as_the_console_prints_them(tmp_path):
    """Metrics to 4 decimals, the score to 3, parameters to 3 significant digits: at 4 significant digits two trials
    of eval_loss 3.7856 and 3.7859 both read 3.786, and the chosen row looked like a dominated one."""
    trials = synthetic_trials(4)
    trials[1]["metrics"] = {**trials[1]["metrics"], "eval_loss": 3.78563, "eval_accuracy": 0.5}
    trials[2]["metrics"] = {**trials[2]["metrics"], "eval_loss": 3.78591, "eval_accuracy": 0.5}
    out = write_fake_study(tmp_path / "study", trials)
    data = load_study(out)
    text = write_html_report(out, data).read_text()
    cells = re.findall(r"<td data-v='[^']*'>([^<]*)</td>", text)
    assert "3.7856" in cells and "3.7859" in cells and "0.5000" in cells
    lr = data.table.params_learning_rate.iloc[0]
    assert f"{lr:.3g}" in cells and f"{lr:.4g}" not in cells or f"{lr:.3g}" == f"{lr:.4g}"
    assert re.search(r"<th>best value</th><td>\d\.\d{3}</td>", text)


def test_a_screen_reader_gets_names_and_the_keyboard_sorts(report, tmp_path):
    """Each point named (trial, state, its two values), the axis pickers labelled, plots described beyond their
    caption, a header sorted by Space as by Enter, and a word where JavaScript is off."""
    probe = """
      var th = document.querySelector('#trials th[data-col="0"]');
      th.dispatchEvent(new KeyboardEvent('keydown', {key: ' '}));
      var out = document.createElement('pre'); out.id = 'probe'; out.textContent = th.getAttribute('aria-sort');
      document.body.appendChild(out);
    """
    dom, console = dump_dom(with_script(report, tmp_path / "a11y.html", probe), tmp_path)
    assert console == [] and 'class="js-error"' not in dom
    assert re.search(r'<pre id="probe">ascending</pre>', dom)
    names = re.findall(r'<circle [^>]*aria-label="([^"]*)"', dom)
    assert len(names) == len(plotted_trials(report)) and any(", chosen" in n for n in names)
    assert all(re.match(r"trial \d+ [A-Z]+.*: .+ [-\d.]+, .+ [-\d.]+$", n) for n in names), names[:3]
    text = report.read_text()
    assert "<label for='x-axis'>" in text and "<label for='y-axis'>" in text and "<noscript>" in text
    alts = re.findall(r"<img alt='([^']*)'", text)
    assert alts and all(len(a) > 60 for a in alts), alts  # more than the caption it sits under


def test_an_empty_plot_has_no_key_of_what_it_does_not_draw(tmp_path):
    """Every trial INFEASIBLE: the panel said "no trial has these values yet" under a legend of a gold-ringed best
    and a base model."""
    trials = synthetic_trials(3)
    for t in trials:
        t["state"], t["error"], t["metrics"] = "INFEASIBLE", "not trained: estimate 9 GiB > budget 8 GiB", {"peak_memory_gb": 9.0}
    out = write_fake_study(tmp_path / "s", trials)
    (out / "baseline.json").write_text(json.dumps({"state": "COMPLETE", "metrics": {"eval_loss": 7.0, "eval_accuracy": 0.1}}))
    data = load_study(out)
    text = write_html_report(out, data, write_analysis(out, data)).read_text()
    legend = re.search(r"<div class='legend'>(.*?)</div>", text).group(1)
    assert "gold ring" not in legend and "base model" not in legend and "Pareto front" not in legend
    other = write_fake_study(tmp_path / "t", synthetic_trials(8))
    full = write_html_report(other, load_study(other), write_analysis(other, load_study(other))).read_text()
    assert "best (gold ring)" in re.search(r"<div class='legend'>(.*?)</div>", full).group(1)


def test_without_javascript_the_report_names_a_plot_the_study_wrote(tmp_path):
    """A single-objective study writes no pareto_front.png, which the no-JavaScript line pointed to."""
    multi = write_fake_study(tmp_path / "m", synthetic_trials(4))
    one = write_fake_study(tmp_path / "o", synthetic_trials(4), objectives=("eval_loss",), weights=(1.0,))
    for out, plot in ((multi, "pareto_front.png"), (one, "optimization_plot.png")):
        text = write_html_report(out, load_study(out), write_analysis(out, load_study(out))).read_text()
        assert f"This plot needs JavaScript: {plot} next to this report" in re.search(r"<noscript>(.*?)</noscript>",
                                                                                         text).group(1)


def test_the_chosen_trial_is_drawn_over_a_later_trial_at_its_spot_and_each_tip_names_the_other(tmp_path):
    """A later trial 0.0001 worse than the chosen one covered its point (drawn in trial order): hovering the gold ring
    showed the other trial's configuration. The front and the chosen trial are drawn last; a tip names the trials at
    its spot."""
    trials = synthetic_trials(12)
    first = write_fake_study(tmp_path / "a", trials)
    best = int(load_study(first).best)
    twin = {**trials[best], "metrics": {**trials[best]["metrics"], "eval_loss": trials[best]["metrics"]["eval_loss"] + 1e-4}}
    near = {**twin, "metrics": {**twin["metrics"], "eval_loss": trials[best]["metrics"]["eval_loss"] + 0.016}}  # ~9 px off
    out = write_fake_study(tmp_path / "b", [*trials, twin, near])
    data = load_study(out)
    assert int(data.best) == best
    page = write_html_report(out, data, write_analysis(out, data))
    probe = f"""
      var r = {{}}, b = document.querySelector('circle.pt[data-trial="{best}"]');
      b.scrollIntoView({{block: 'center', inline: 'center'}});
      var box = b.getBoundingClientRect();
      var hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
      r.top = hit && hit.getAttribute('data-trial');
      var tip = document.getElementById('tooltip');
      document.querySelector('circle.pt[data-trial="12"]').dispatchEvent(new MouseEvent('mouseenter'));
      r.twinTip = tip.textContent;
      b.dispatchEvent(new MouseEvent('mouseenter')); r.bestTip = tip.textContent;
      var c13 = document.querySelector('circle.pt[data-trial="13"]').getBoundingClientRect(), cb = b.getBoundingClientRect();
      r.gap = Math.hypot(c13.left + c13.width / 2 - cb.left - cb.width / 2, c13.top + c13.height / 2 - cb.top - cb.height / 2);
      r.hidden = Array.from(document.querySelectorAll('circle.pt')).filter(function (c) {{
        var n = c.getAttribute('data-trial');
        c.scrollIntoView({{block: 'center', inline: 'center'}}); var q = c.getBoundingClientRect();
        var h = document.elementFromPoint(q.left + q.width / 2, q.top + q.height / 2);
        if (h === c) return false;
        if (!h || !h.classList.contains('pt')) return true;  // the ring, or nothing
        h.dispatchEvent(new MouseEvent('mouseenter'));  // a point over it: its tip names it
        var m = tip.textContent.match(/at the same spot: trials? ([0-9, ]+)/);
        return !(m && m[1].split(', ').indexOf(n) >= 0); }}).map(function (c) {{ return c.getAttribute('data-trial'); }});
      var out = document.createElement('pre'); out.id = 'probe'; out.textContent = JSON.stringify(r); document.body.appendChild(out);
    """
    dom, console = dump_dom(with_script(page, tmp_path / "probe.html", probe), tmp_path)
    assert console == [] and 'class="js-error"' not in dom
    r = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1)))
    assert r["top"] == str(best), r
    assert f"at the same spot: trial {best}" in r["twinTip"] and "at the same spot: trial 12" in r["bestTip"], r
    # every point is on top at its own centre, or named in the tip of the one over it: the ring drawn over a neighbour
    # 10 px away hid it from the mouse
    assert 7 < r["gap"] < 11 and r["hidden"] == [], r  # (trial 13: under the 11 px ring, apart from the point)


def test_a_front_of_one_trial_is_keyed_as_a_point_not_a_line(tmp_path):
    trials = [t for t in synthetic_trials(8) if t["state"] == "COMPLETE"][:3]
    for i, t in enumerate(trials):  # one dominates the others
        t["metrics"] = {"eval_loss": 1.0 + i, "eval_accuracy": 0.9 - 0.1 * i, "peak_memory_gb": 1.0}
    out = write_fake_study(tmp_path / "s", trials)
    data = load_study(out)
    text = write_html_report(out, data, write_analysis(out, data)).read_text()
    legend = re.search(r"<div class='legend'>(.*?)</div>", text).group(1)
    assert "Pareto front (1 trial: dark rim)" in legend and "class='front'" not in legend
