"""Every result file of a study (trials_summary.csv, best_config.yaml, plots, analysis, report.html)
and the closing summary on the console, from the journal alone: ``moopt report`` rebuilds them for a
study that is running or was interrupted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from moopt.console import plural
from moopt.journal import BASELINE
from moopt.records import TrialState
from moopt.report.plots import plot_optimization, plot_pareto
from moopt.report.table import (
    StudyData,
    best_config,
    cut_by_time_ahead,
    least_infeasible_text,
    load_study,
    nothing_fits,
    nothing_fits_text,
    printed_name,
    searched,
    why_none_completed,
)


def best_config_header(data, cfg: dict | None = None) -> str:
    """best_config.yaml's opening comment: what it was searched on, so that a copy kept elsewhere (where ``moopt
    train`` cannot read the study's journal, and falls back on its defaults) says what to pass to repeat it.
    ``cfg``: the configuration written below it (its max_seq_length against the length validation was cut at)."""
    import shlex

    h = data.header
    fp = h.get("fingerprint") or {}
    seed = fp.get("seed", 42)
    args = [f"--base_model {shlex.quote(h['base_model'])}"] if h.get("base_model") else []
    args += [f"--{f} {shlex.quote(fp[f])}" for f in ("train_file", "validation_file") if fp.get(f)]
    kernels = (h.get("options") or {}).get("kernels")
    args += [f"--kernels {kernels}"] if kernels and kernels != "auto" else []  # dropout masks differ between paths
    args.append(f"--seed {seed}")
    if h.get("model_revision"):  # the hub commit searched on (the main branch may have moved since)
        args.append(f"--revision {h['model_revision']}")
    trained = ((cfg or {}).get("data") or {}).get("max_seq_length")
    at = int(h.get("eval_max_seq_length") or 0)
    if at and (trained is None or at > int(trained)):  # validation was cut at the space's longest, not at the trial's
        args.append(f"--eval_max_seq_length {at}")
    return (f"# moopt: trial {data.best} of the study in this folder, searched on {h.get('base_model', '?')} with seed {seed}.\n"
            "# Here, `moopt train --config best_config.yaml` takes the study's base model, data and seed; a copy kept\n"
            f"# elsewhere repeats the trial with: {' '.join(args)}\n")


def write_results(output_dir: str | Path, quiet: bool = False, console=None, stopped: bool = False) -> dict[str, Any]:
    """Write every result file; unless quiet, print the best configuration as the guide shows. ``stopped``: the
    study was stopped, its running trials are INTERRUPTED (load_study).

    One writer at a time (an exclusive ``flock`` on the journal, which its appends do not take): a ``moopt report``
    that read the journal before the study's final write and wrote after it left best_config.yaml, the CSV and the
    report at that older state (trial 0 best, trial 1 RUNNING) until the next report."""
    import fcntl

    from moopt.journal import JOURNAL

    journal = Path(output_dir) / JOURNAL
    try:
        fd = os.open(journal, os.O_RDONLY)
    except OSError:  # no journal (yet): nothing to keep in step with
        return _write_results(output_dir, quiet, console, stopped)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _write_results(output_dir, quiet, console, stopped)
    finally:
        os.close(fd)  # (drops the lock)


def _write_results(output_dir: str | Path, quiet: bool = False, console=None, stopped: bool = False) -> dict[str, Any]:
    import pandas as pd

    from moopt.yamlio import atomic_write_text, write_json, write_yaml

    out = Path(output_dir)
    data = load_study(out, stopped)
    if data.baseline is not None and not (out / BASELINE).is_file():  # lost: put back from the journal
        write_json(out / BASELINE, data.baseline)
    table = data.table
    csv = table.copy()
    csv["duration"] = csv["duration"].astype(str)
    # counts as 38, not 38.0 beside a RUNNING or INTERRUPTED row's empty cell (a column with a missing value is float
    # in pandas); in the file only: pandas' NA compares to nothing, which the code reading the table would meet
    for col in ("steps", "total_steps", "train_tokens", "eval_tokens"):
        if col in csv:
            csv[col] = pd.to_numeric(csv[col]).round().astype("Int64")
    atomic_write_text(out / "trials_summary.csv", csv.to_csv(index=False))
    summary: dict[str, Any] = {"n_trials": int(len(table)), "best_trial": data.best, "best_score": data.best_score,
                               "pareto": data.pareto,
                               # every trial failed (a model or data the trials cannot train on): the CLI exits 1
                               "all_failed": bool(len(table)) and bool((table.state == TrialState.FAIL).all()),
                               # every configuration was ruled out by the memory budget: nothing trained (exit 1 too)
                               "nothing_fits": nothing_fits(data),
                               # of those, the ones that trained (under an earlier, larger --memory_constraint of a
                               # --resume) and peaked over this one: "nothing was trained" would be untrue
                               "trained_over": int((table.peak_memory_from == "training").sum()) if nothing_fits(data)
                               and "peak_memory_from" in table else 0,
                               # none completed (failed, ruled out, pruned, in a mix; or none ran: a time budget spent
                               # on the set-up): no best_config.yaml to train from, so exit 1 as well
                               "none_completed": data.best is None}
    if data.best is not None:
        cfg = best_config(out, data.best)
        write_yaml(out / "best_config.yaml", cfg, header=best_config_header(data, cfg))
        summary["best_config"] = cfg
        row = table[table.number == data.best].iloc[0]
        summary["best_metrics"] = {n: float(row[f"values_{n}"]) for n in data.objectives.names}
    plot_optimization(data, out / "optimization_plot.png")
    if data.objectives.multi:
        plot_pareto(data, out / "pareto_front.png")
    if quiet:  # after each trial: the table and the two plots; the full analysis at the end
        return summary
    from moopt.report.analysis import write_analysis
    from moopt.report.html import write_html_report
    from moopt.report.refine import write_refined

    analysis = write_analysis(out, data)
    target = "score" if data.objectives.multi else data.objectives.names[0]
    refined = write_refined(out, data, analysis.edges, analysis.importance.get(target))
    write_html_report(out, data, analysis, refined)
    summary["param_importance"] = {t: dict(imp) for t, imp in analysis.importance.items()}
    summary["range_edges"] = [e.text() for e in analysis.edges]
    summary["refined_space"] = [vars(c) for c in refined.changes] if refined else []
    print_summary(data, summary, console, out, analysis.importance, analysis.edges, refined)
    return summary


SPACE_FILE = "search_space.yaml"


def check_study_space(output_dir: str | Path, header: dict[str, Any]) -> str | None:
    """Before any result file is rewritten: the study's search_space.yaml must load (one edited by hand into
    something that does not was a traceback after half the files were rewritten: a ConfigError naming the file, key
    and rule); a lost one is put back from the journal's record of the space (without it the summary said "nothing
    was searched"). A note when it was put back, else None."""
    from moopt.errors import ConfigError
    from moopt.search.space import load_space, parse_space
    from moopt.yamlio import read_yaml_mapping, write_yaml

    path = Path(output_dir) / SPACE_FILE
    written = header.get("space_file")  # (a study from before the journal kept the file: None)
    if path.exists():
        mine = load_space(path)
        theirs = parse_space(written, "the journal") if written is not None else None
        by_name = lambda sp: (sorted(sp.params, key=lambda p: p.name), sp.fixed)  # noqa: E731
        if theirs is not None and by_name(mine) != by_name(theirs):  # the space it reads as (comments, key order,
            # 1e-5 for 1.0e-05, qv for q_proj,v_proj: the same space, taken)
            raise ConfigError(f"{path}: not the space this study searched (its journal's record): edited since?")
            # (the importance, the refined space and the printed names would follow the edit)
        if theirs is not None and json.loads(json.dumps(read_yaml_mapping(path), default=str)) != written:
            write_yaml(path, written)  # the same space, written otherwise (1e-5 is a string to YAML 1.1: the report's
            # readers of the file took it as one): as the study wrote it
            return f"{path}: the same space as the study's, written otherwise: rewritten as the study wrote it"
        return None
    spec = written if written is not None else space_from_journal(header)
    if spec is None:  # a study from before the journal recorded its space: nothing to put back
        return None
    write_yaml(path, spec)
    load_space(path)
    return f"{path}: missing; put back from the journal (what the study searched)" + (
        "" if written is not None else "; the order of a categorical's values is inferred again")


def space_from_journal(header: dict[str, Any]) -> dict[str, Any] | None:
    """search_space.yaml as the study wrote it (moopt.study.outdir.space_to_yaml), from its journal header's record of
    the space (its fingerprint), or None where the header has none."""
    from moopt.config import TrialConfig, whole

    fp = header.get("fingerprint") or {}
    if not isinstance(fp.get("space"), list):
        return None
    out: dict[str, dict[str, Any]] = {}
    for name, kind, low, high, step, values in fp["space"]:
        section, key = name.split(".", 1)
        out.setdefault(section, {})[key] = (
            {"type": kind, "values": [v if isinstance(v, list) else whole(name, v) for v in values]}  # 16, not 16.0
            if kind == "categorical" else
            {"type": kind, "min": low, "max": high} | ({"step": step} if kind == "int" and step not in (None, 1) else {}))
    defaults = json.loads(json.dumps(TrialConfig().to_dict()))  # (lists, as the journal holds them)
    for section, body in (fp.get("fixed") or {}).items():  # a value the space fixed, where not moopt's default
        for key, value in body.items():
            if key not in out.get(section, {}) and value != defaults.get(section, {}).get(key):
                out.setdefault(section, {})[key] = value if isinstance(value, list) else whole(f"{section}.{key}", value)
    return out


def _study_space(output_dir):
    """The study's own copy of its search space (search_space.yaml), or None."""
    from moopt.search.space import load_space

    try:
        return load_space(Path(output_dir) / "search_space.yaml")
    except Exception:  # noqa: BLE001 (a study written before the copy, or one edited by hand: no claim is made)
        return None


def spent_space(output_dir, space, complete_only: bool = False) -> int:
    """How many configurations ``space`` holds where the study has tried every one of them (trained or ruled out:
    NSGA-II proposes none again; with ``complete_only``, COMPLETE: what a --warm_start study takes over), else 0 (a
    continuous parameter, or some never tried)."""
    from moopt.config import TrialConfig
    from moopt.journal import replay

    n = space.n_configurations() if space is not None else float("inf")
    if not n or n == float("inf"):
        return 0
    tried = set()
    for e in replay(output_dir).ends.values():
        if not e.config or (complete_only and str(e.state) != TrialState.COMPLETE):
            continue
        cfg = TrialConfig.from_dict(e.config)
        try:
            moved = space.decode(space.encode(cfg))
        except (ValueError, KeyError, TypeError):
            continue
        if moved == cfg:  # it lies in the space
            tried.add(json.dumps(cfg.to_dict(), sort_keys=True, default=str))
    return int(n) if len(tried) >= n else 0


def print_summary(data: StudyData, summary: dict[str, Any], console=None, output_dir: Path | None = None,
                  importance: dict | None = None, edges: list | None = None, refined=None) -> None:
    """The guide's closing summary: the searched parameters of the best trial as JSON, ``Best value``,
    ``Parameter Importance`` and where the results are."""
    from moopt.console import study_console

    console = console or study_console()
    say = lambda text="": console.print(text, markup=False, soft_wrap=True)  # noqa: E731
    counts = data.table.state.value_counts().to_dict() if len(data.table) else {}
    taken = data.table.taken_from.dropna() if "taken_from" in data.table else []
    say(f"\nTrials: {len(data.table)}" + (f" ({', '.join(f'{v} {k}' for k, v in counts.items())})" if counts else "")
        + (f"; {len(taken)} of them taken over from {taken.iloc[0].rsplit(' trial ', 1)[0]} with their results, "
           "not trained again" if len(taken) else ""))
    if data.best is None:
        if nothing_fits(data):
            say(nothing_fits_text(data))
        elif not len(data.table):
            say("No trial ran; nothing to recommend.")
        else:
            say("No trial completed; nothing to recommend: " + why_none_completed(data.table) + ".")
            for number, _, metrics, cut in cut_by_time_ahead(data):
                base = (data.baseline or {}).get("metrics") or {}
                say(f"  Trial {number} was cut by the time budget at {cut}; on the whole validation set it scores "
                    + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                    + (" (the base model: " + ", ".join(f"{k} {base[k]:.4f}" for k in metrics if k in base) + ")"
                       if any(k in base for k in metrics) else "")
                    + f": its adapter is {_in(output_dir)}trial_results/trial_{number}/adapter; moopt train --config "
                    f"{_in(output_dir)}trial_results/trial_{number}/config.yaml trains its configuration to the end")
            if data.least_infeasible is not None:
                say(f"  {least_infeasible_text(data)}")
        if output_dir is not None and len(data.table):
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
    best_row = data.table[data.table.number == data.best].iloc[0]
    if isinstance(best_row.get("taken_from"), str):  # a refined study whose new trials did not beat the earlier best
        trained = int(data.table.taken_from.isna().sum())
        beaten = ("this study trained no trial of its own" if trained == 0 else
                  "the one trial this study trained did not beat it" if trained == 1 else
                  f"none of the {trained} trials this study trained beat it")
        say(f"  (taken over from {best_row.taken_from}: {beaten})")
    weights = " + ".join(f"{w:.2g} x {n}" for n, w in zip(data.objectives.names, data.objectives.weights))
    say(f"  (weighted progress from {data.score_origin.split(' (')[0]} (0) to the ideal (1): {weights})")
    for number, score, metrics, cut in cut_by_time_ahead(data):
        say(f"  Trial {number} was cut by the time budget at {cut} and already scores {score:.3f} ("
            + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + ", on the whole validation set), ahead of "
            f"the best COMPLETE trial: its adapter is {_in(output_dir)}trial_results/trial_{number}/adapter; "
            f"moopt train --config {_in(output_dir)}trial_results/trial_{number}/config.yaml trains its configuration "
            "to the end")
    if edges:  # the guide's first pitfall: too narrow search ranges
        say()
        say("At the edge of the searched range (the optimum may lie outside it):")
        for e in edges:
            say(f"  {e.text()}")
    if importance:
        from moopt.report.analysis import format_importance

        target = "score" if data.objectives.multi else data.objectives.names[0]
        say()
        say(format_importance(importance[target], rename=printed_name(output_dir)))
    from moopt.report.analysis import FEW_TRIALS, MIN_TRIALS
    from moopt.report.refine import REFINE_MIN_TRIALS

    complete = int((data.table.state == TrialState.COMPLETE).sum()) if len(data.table) else 0
    if output_dir is not None:
        out = Path(output_dir)
        say()
        say(f"Results in {out}/:")
        files = [("best_config.yaml", "the best configuration, exact (printed above to 3 digits): moopt train --config "
                                      "... trains the final adapter"),
                 ("report.html", "the report: " + ("Pareto front, " if data.objectives.multi else "the objective by trial, ")
                  + "trials table, plots (opens offline)"),
                 (f"trial_results/trial_{data.best}/adapter", "the best trial's adapter (PEFT format)"),
                 ("trials_summary.csv", "every trial"),
                 ("optimization_plot.png", "progress of the search")]
        files += [("pareto_front.png", "the Pareto front")] if data.objectives.multi else []
        few = f" (not yet: {plural(complete, 'COMPLETE trial')}, it needs {MIN_TRIALS})"
        shown = (importance or {}).get("score" if data.objectives.multi else data.objectives.names[0])
        if shown and shown.rung is not None:  # too few COMPLETE, computed on the trials' values at a pruning rung
            imp_note = f" (at pruning rung {shown.rung}: {plural(complete, 'COMPLETE trial')})"
        else:
            imp_note = few if complete < MIN_TRIALS else ""
        files += [("learning_curves.png", "each trial's training and validation loss"),
                  ("param_importance.png", "parameter importance (fANOVA), by objective" + imp_note),
                  ("correlations.png", "which way each parameter moves each objective"
                   + (few if complete < MIN_TRIALS else "")),
                  ("interaction.png", "the two most important parameters together")]
        files += [("refined_space.yaml", "the search space for a refined study (below)")] if refined else []
        pair = sum(map(len, searched(out).values())) >= 2  # interaction.png plots two searched parameters
        later = [(name, f"not yet: {plural(complete, 'COMPLETE trial')}, it needs {need}")  # said, not left to guess
                 for name, need in (("interaction.png", FEW_TRIALS), ("refined_space.yaml", REFINE_MIN_TRIALS))
                 if complete < need and not (out / name).exists() and (pair or name != "interaction.png")]
        for name, what in files:
            if (out / name).exists():
                say(f"  {name:<34} {what}")
        for name, what in later:
            say(f"  {name:<34} {what}")
        if data.best is not None and not (out / "trial_results" / f"trial_{data.best}" / "adapter").exists():
            # --keep_adapters removed it while another trial was best (the weights changed on --resume), or a
            # --warm_start took the trial over with its result only
            say(f"  (trial {data.best}'s adapter is not kept: moopt train --config {out}/best_config.yaml trains it)")
    if refined is None and output_dir is not None and data.best is not None and complete >= REFINE_MIN_TRIALS:
        say()  # (the README promises the file from REFINE_MIN_TRIALS COMPLETE trials on: say why there is none)
        spent = spent_space(output_dir, _study_space(output_dir))
        say(f"Refined search space: none (on these {complete} COMPLETE trials no range moves, narrows or widens, no "
            "categorical value is dropped and no parameter fixed): no refined_space.yaml; "
            + (f"every one of the space's {spent} configurations was tried: nothing is left to search" if spent else
               "--resume --num_trials searches on in the same space"))
    if refined is not None and output_dir is not None:
        say()
        say(f"Refined search space (the guide's coarse -> refined search; {Path(output_dir) / 'refined_space.yaml'}):")
        width = max(len(c.name.split('.', 1)[1]) for c in refined.changes)
        for c in refined.changes:
            say(f"  {c.name.split('.', 1)[1]:<{width}}  {c.before} -> {c.after}: {c.why}")
        from moopt.search.space import parse_space

        spent = spent_space(output_dir, parse_space(refined.space, source="refined_space.yaml"), complete_only=True)
        if spent:  # a warm-started study on it would take each over and train nothing
            say(f"  Every one of its {spent} configurations was trained in this study: a refined study would take each "
                "over and train none; widen a range or add values to search further")
        else:
            say("Run it, the best trials so far seeding its first generation:")
            from moopt.report.refine import refined_command

            say("  " + refined_command(data.header, Path(output_dir)))


def _short(v: Any) -> Any:
    """Console form of a value: 3 significant digits (2.35e-05, 0.063), whole floats as integers,
    target modules by their alias (``attention``) or comma-joined."""
    from moopt.config import target_alias

    if isinstance(v, float):
        return int(v) if v.is_integer() else float(f"{v:.3g}")
    if isinstance(v, (list, tuple)):
        return target_alias(v) or ",".join(map(str, v))
    return v


def _in(output_dir: Path | None) -> str:
    """The study folder before a path inside it, so that a command said can be run from where the study was started."""
    return f"{output_dir}/" if output_dir is not None else ""
