"""The study as a table, from the journal alone: one row per trial, the Pareto front, the best
trial, the score and the hypervolume history. Needs neither GPU nor model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moopt.journal import read_baseline, replay
from moopt.records import NOT_TRAINED, TIME_BUDGET_CUT, TrialState
from moopt.search.objectives import KNOWN, Objectives
from moopt.search.pareto import hypervolume, nondominated

RUNNING = "RUNNING"  # a trial with a start and no end in the journal, of a study running now
INTERRUPTED = "INTERRUPTED"  # the same, of a study that was stopped (Ctrl-C, SIGTERM, kill): --resume reruns it
UNFINISHED = (RUNNING, INTERRUPTED)


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
    rungs: list[dict[str, Any]] = field(default_factory=list)  # the journal's rung events (number, rung, step, metrics)


def load_study(output_dir: str | Path, stopped: bool = False) -> StudyData:
    """``stopped``: the study is not running (its caller knows: the study's own last write, or ``moopt report``
    asking the study's lock), so a trial with no end was interrupted (INTERRUPTED), not running (RUNNING)."""
    out = Path(output_dir)
    rec = replay(out)
    if not rec.header and 1 not in rec.damaged:
        journal = out / "journal.jsonl"
        raise FileNotFoundError(f"{out}: no such folder" if not out.exists() else
                                f"{journal}: empty (the study recorded nothing: it stopped before it began)"
                                if journal.is_file() and not journal.read_text(errors="replace").strip() else
                                f"{out}: not a study folder (no journal.jsonl; moopt report takes the --output_dir of a "
                                "moopt optimize study)")
    if "objectives" not in rec.header or "weights" not in rec.header:  # its first line, the study's header, is damaged
        raise FileNotFoundError(f"{out / 'journal.jsonl'}: the study's header (its first line) is damaged: the study's "
                                "objectives and settings are lost")
    unfinished = INTERRUPTED if stopped else RUNNING
    objectives = Objectives(tuple(rec.header["objectives"]), tuple(rec.header["weights"]))
    rows = []
    budget = rec.header.get("memory_constraint_gb")  # the latest: a --resume may have lowered it
    for n in sorted(rec.starts):
        s, e = rec.starts[n], rec.ends.get(n)
        m = (e.metrics if e else None) or {}
        row: dict[str, Any] = {"number": n, "state": str(e.state) if e else unfinished}
        untrained = bool(e) and str(e.error or "").startswith(NOT_TRAINED)  # the gate's estimate or probe, not a result
        for name in objectives.names:
            row[f"values_{name}"] = np.nan if untrained else m.get(name, np.nan)
        row["datetime_start"] = pd.Timestamp(s["datetime_start"])
        row["datetime_complete"] = pd.Timestamp(e.datetime_complete) if e else pd.NaT
        row["duration"] = (row["datetime_complete"] - row["datetime_start"]) if e else pd.NaT
        row["duration_s"] = row["duration"].total_seconds() if e else np.nan
        for k, v in s["params"].items():
            row[f"params_{k}"] = v
        for k in ("eval_loss", "eval_accuracy", "eval_perplexity"):
            if k not in objectives.names:
                row[k] = m.get(k, np.nan)
        row["peak_memory_gb"] = m.get("peak_memory_gb", np.nan)
        # measured by the trial's training, by the memory gate's probe, or only estimated (an untrained trial)
        row["peak_memory_from"] = (e.peak_from or "training") if e and "peak_memory_gb" in m else None
        row["steps"] = e.steps if e else None
        row["total_steps"] = e.total_steps if e else None
        row["train_tokens"] = e.train_tokens if e else None
        row["eval_tokens"] = e.eval_tokens if e else None  # rung and final evaluations: what pruning adds
        row["tokens_per_s"] = e.tokens_per_s if e else None
        row["backend"] = e.backend if e else None
        row["backend_reason"] = e.backend_reason if e else None  # e.g. a Triton failure under --kernels auto
        row["dtype"] = e.dtype if e else None  # what the base model ran in (model.dtype auto, resolved)
        row["attention"] = e.attention if e else None  # eager, sdpa, or 'eager N%+sdpa' (moopt.train.recipe.BatchAttention)
        row["error"] = e.error if e else None
        row["taken_from"] = e.taken_from if e else None  # an earlier study's result, not trained again (--warm_start)
        if row["state"] == TrialState.COMPLETE and budget and row["peak_memory_gb"] > budget:
            row["state"] = str(TrialState.INFEASIBLE)  # as the study judges a trial over the budget it has now
            row["error"] = (f"peak {row['peak_memory_gb']:.2f} GiB > --memory_constraint {float(budget):g} GiB, set on a "
                            "--resume after the trial completed")
        rows.append(row)
    obj_cols = [f"values_{n}" for n in objectives.names]
    # with no trial yet (a time budget spent on the set-up), the table still has its leading columns
    table = pd.DataFrame(rows) if rows else pd.DataFrame(
        columns=["number", "state", *obj_cols, "datetime_start", "datetime_complete", "duration", "duration_s"])

    baseline = read_baseline(out, rec)  # (a lost baseline.json: the journal's copy; moopt report writes it back)
    pareto, best, best_score, least_inf, start, origin = [], None, None, None, None, ""
    if len(table):
        table["score"] = np.nan  # progress from the base model toward the ideal: comparable across studies (a column
        ok = table[(table.state == TrialState.COMPLETE)].dropna(subset=obj_cols)  # even when no trial has one)
        if len(ok):
            F = np.array([objectives.to_minimize(dict(zip(objectives.names, r))) for r in ok[obj_cols].to_numpy()])
            front = nondominated(F)
            pareto = sorted(int(ok.number.iloc[i]) for i in front)
            start, origin = score_start(objectives, baseline, rec.header, ok[obj_cols].max(), ok[obj_cols].min())
            score = objectives.score(F, objectives.to_minimize(start))
            table.loc[ok.index, "score"] = score
            # trials the time budget cut are evaluated on the whole validation set as COMPLETE ones are: their score
            # too (the summary names one that scores above the best; it is never the best: not trained to its end)
            cut = table[(table.state == TrialState.PRUNED)
                        & table.error.fillna("").str.startswith(TIME_BUDGET_CUT)].dropna(subset=obj_cols)
            if len(cut):
                Fc = np.array([objectives.to_minimize(dict(zip(objectives.names, r))) for r in cut[obj_cols].to_numpy()])
                table.loc[cut.index, "score"] = objectives.score(Fc, objectives.to_minimize(start))
            # the weights pick one trial from the front: the highest score (the earliest on a tie)
            front_score = {int(ok.number.iloc[i]): float(score[i]) for i in front}
            best = max(front_score, key=lambda k: (front_score[k], -k))
            best_score = front_score[best]
        else:
            inf = table[table.state == TrialState.INFEASIBLE].dropna(subset=["peak_memory_gb"])
            if len(inf):
                least_inf = int(inf.sort_values("peak_memory_gb").number.iloc[0])
        table["pareto"] = table.number.isin(pareto)
    return StudyData(objectives, table, pareto, best, best_score, hypervolume_history(table, objectives, start, origin),
                     least_inf, baseline, rec.header, start, origin, rec.rungs)


def score_start(objectives: Objectives, baseline: dict[str, Any] | None, header: dict[str, Any],
                highest: pd.Series, lowest: pd.Series) -> tuple[dict[str, float], str]:
    """Where each objective's progress starts (score 0): the base model's validation metrics.
    peak_memory_gb starts at --memory_constraint (the base model trains nothing); an objective the
    base model has no value for starts at the worst COMPLETE trial, and the origin says so."""
    ok = baseline is not None and baseline.get("state") == TrialState.COMPLETE
    base = (baseline.get("metrics") or {}) if ok else {}
    start, stand_ins, budget = {}, [], []
    for n in objectives.names:
        worst = float(highest[f"values_{n}"] if KNOWN[n][0] == "minimize" else lowest[f"values_{n}"])
        if n == "peak_memory_gb":
            start[n] = float(header.get("memory_constraint_gb") or worst)
            (budget if header.get("memory_constraint_gb") else stand_ins).append(n)
        elif n in base and np.isfinite(base[n]):
            start[n] = float(base[n])
        else:
            start[n] = worst
            stand_ins.append(n)
    at_budget = [f"{n}: --memory_constraint" for n in budget]  # where a memory objective's progress starts
    if not base:
        lost = baseline is None and (header.get("options") or {}).get("baseline")  # evaluated, its file gone since
        why = ("the base model's evaluation failed (--resume tries it again)" if baseline is not None else
               "no base model evaluation" + (": baseline.json is missing" if lost else ""))
        return start, "the worst trial (" + "; ".join([why, *at_budget]) + ")"
    if not any(n in base and n != "peak_memory_gb" and np.isfinite(base[n]) for n in objectives.names):
        # no objective starts at the base model's value (peak_memory_gb alone): it is no origin here
        if stand_ins:
            return start, "the worst trial" + (f" ({'; '.join(at_budget)})" if at_budget else "")
        return start, "--memory_constraint"
    notes = [f"{', '.join(stand_ins)}: the worst trial"] * bool(stand_ins) + at_budget
    return start, "the base model" + (f" ({'; '.join(notes)})" if notes else "")


def fixed_start(objectives: Objectives, baseline: dict[str, Any] | None, header: dict[str, Any]) -> dict[str, float] | None:
    """score_start's start when it needs no trial (the base model has a value for each objective and
    peak_memory_gb has --memory_constraint): a trial's score is then known when it ends, whatever ends
    later. None otherwise."""
    nan = pd.Series({f"values_{n}": np.nan for n in objectives.names})
    start, _ = score_start(objectives, baseline, header, nan, nan)
    return start if all(np.isfinite(v) for v in start.values()) else None


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
        return HVHistory([0.0] * int((~table.state.isin(UNFINISHED)).sum()))
    cols = [f"values_{n}" for n in objectives.names]
    done = table[~table.state.isin(UNFINISHED)].sort_values("datetime_complete", kind="stable")
    start_min = objectives.to_minimize(start)
    at_ideal = start_min <= objectives.ideal()  # nothing left to gain on it: full progress

    def distance(F: np.ndarray) -> np.ndarray:  # 0 = ideal, 1 = start; pymoo's HV drops rows not below 1
        return np.where(at_ideal, 0.0, 1.0 - objectives.progress(F, start_min))

    ref = np.ones(len(cols))  # volume of the unit box is 1: no normalisation needed
    out, seen = [], []
    for _, row in done.iterrows():
        if row.state == TrialState.COMPLETE and not row[cols].isna().any():
            seen.append(objectives.to_minimize(dict(zip(objectives.names, row[cols]))))
        out.append(hypervolume(distance(np.array(seen)), ref) if seen else 0.0)
    return HVHistory(out, start=dict(start), basis=f"from {origin}" if origin else "")


def best_config(output_dir: Path, number: int) -> dict[str, Any]:
    """The best trial's config.yaml, with whole epochs and alpha written as integers (2, not 2.0); the journal's copy
    (its trial_start) when the trial's folder was removed: the journal is the study's source of truth."""
    import yaml

    from moopt.config import as_written

    path = Path(output_dir) / "trial_results" / f"trial_{number}" / "config.yaml"
    if path.is_file():
        cfg = yaml.safe_load(path.read_text())
    else:
        start = replay(output_dir).starts.get(number) or {}
        if "config" not in start:
            raise FileNotFoundError(f"{path}: not there, and the journal does not record trial {number}'s configuration")
        cfg = start["config"]
    return as_written(cfg)


def searched(output_dir: Path) -> dict[str, list[str]]:
    """The study's searched parameters by section, from its search_space.yaml."""
    import yaml

    path = Path(output_dir) / "search_space.yaml"
    raw = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    return {section: [k for k, spec in body.items() if isinstance(spec, dict)]
            for section, body in raw.items() if isinstance(body, dict)}

def printed_name(output_dir: Path | None):
    """A parameter's name as the console prints it, the guide's: a searched LoRA parameter takes ``lora_`` (``r`` ->
    ``lora_r``); the files name it by its key in the search space (``params_r``)."""
    lora = set(searched(output_dir).get("lora", [])) if output_dir is not None else set()
    return lambda k: f"lora_{k}" if k in lora else k


def nothing_fits_text(data: StudyData) -> str:
    """What the summary says when no configuration fits the memory budget: the budget, the least infeasible
    trial with the gate's own reason (estimate or probe, the spread, the shape), and what would help."""
    budget = data.header.get("memory_constraint_gb")
    n = len(data.table)
    text = (f"None of the {n} configurations tried fits" if n > 1 else "The configuration tried does not fit") + (
        f" the budget of {float(budget):.2f} GiB" if budget else "") + "."
    return f"{text} {least_infeasible_text(data)}"


def nothing_fits(data: StudyData) -> bool:
    """No trial completed, and every one was ruled out by the memory budget (none cut, pruned, failed or running)."""
    return data.least_infeasible is not None and bool((data.table.state == TrialState.INFEASIBLE).all())


def least_infeasible_text(data: StudyData) -> str:
    """The least infeasible trial with the gate's own reason (estimate or probe, the spread, the shape), and what
    would help."""
    row = data.table[data.table.number == data.least_infeasible].iloc[0]
    budget = data.header.get("memory_constraint_gb")
    error = row.get("error")
    reason = error.removeprefix(NOT_TRAINED).strip() if isinstance(error, str) else ""
    text = f"Least infeasible: trial {data.least_infeasible} ({reason or f'peak {row.peak_memory_gb:.2f} GiB'})."
    floor = ((data.baseline or {}).get("metrics") or {}).get("peak_memory_gb")
    if budget and floor and float(floor) > float(budget):  # measured: no smaller setting can help
        return (text + f" The base model alone, evaluated without any training, peaked at {float(floor):.2f} GiB "
                f"(its weights and the runtime), over the budget of {float(budget):.2f} GiB: no configuration can "
                f"fit it; raise --memory_constraint above {float(floor):.2f} GiB, or pick a smaller model.")
    return text + (" Raise --memory_constraint, or search" if budget else " Search") + (
        " smaller batch_size, r, target_modules or max_seq_length (model.gradient_checkpointing lowers the peak"
        " too; on a GPU, model.quantization as well: on a CPU it costs memory instead); where the space holds smaller"
        " settings not yet tried, more trials (--resume --num_trials) may find one that fits.")


def base_metrics(data: StudyData) -> dict[str, float]:
    """The base model's metrics when its evaluation completed, else {}; without its peak memory, which is an
    evaluation's, not a training's (the score starts memory at --memory_constraint or the worst trial): drawn
    beside the trials' peaks it read as a model that beats every trial on memory."""
    b = data.baseline or {}
    m = dict(b.get("metrics") or {}) if b.get("state") == TrialState.COMPLETE else {}
    m.pop("peak_memory_gb", None)
    return m


def cut_by_time_ahead(data: StudyData) -> list[tuple[int, float, dict[str, float], str]]:
    """Trials stopped by --time_budget_hours (PRUNED, "time budget reached at step k") whose metrics, taken
    on the whole validation set as a COMPLETE trial's are, score above the best COMPLETE trial: (number,
    score, metrics, where it was cut). The best stays a COMPLETE trial (a cut one's configuration was not
    trained to the end), but such a trial is the best model the study holds, which the user should hear.
    When no trial completed, the best-scoring cut trial that is ahead of the base model (score > 0), if any; with no
    base model to score from (--no-baseline), the best of the cut trials, scored from their own worst values."""
    t = data.table
    none_completed = data.best_score is None
    if not len(t) or "error" not in t.columns:
        return []
    cols = [f"values_{n}" for n in data.objectives.names]
    cut = t[(t.state == TrialState.PRUNED) & t.error.fillna("").str.startswith(TIME_BUDGET_CUT)].dropna(subset=cols)
    if not len(cut):
        return []
    start = fixed_start(data.objectives, data.baseline, data.header) if none_completed else data.score_start
    floor = 0.0 if none_completed else data.best_score
    if start is None and none_completed:  # nothing to be ahead of: the best of them, from their own worst values
        start, _ = score_start(data.objectives, data.baseline, data.header, cut[cols].max(), cut[cols].min())
        floor = -math.inf
    if start is None:
        return []
    F = np.array([data.objectives.to_minimize(dict(zip(data.objectives.names, r))) for r in cut[cols].to_numpy()])
    scores = data.objectives.score(F, data.objectives.to_minimize(start))
    out = []
    for (_, row), score in zip(cut.iterrows(), scores):
        if score > floor:
            where = row.error.removeprefix(TIME_BUDGET_CUT + " at ")
            if pd.notna(row.get("total_steps")):
                where += f" of {int(row.total_steps)}"
            out.append((int(row.number), float(score), {n: float(row[c]) for n, c in zip(data.objectives.names, cols)}, where))
    return sorted(out, key=lambda o: (-o[1], o[0]))[:1] if none_completed else out


def why_none_completed(table) -> str:
    """What became of the trials of a study in which none completed, in words, with where to look."""
    cut = table[(table.state == TrialState.PRUNED) & table.error.fillna("").str.startswith(TIME_BUDGET_CUT)]
    parts = []
    if len(cut):
        parts.append(f"{len(cut)} cut by the time budget (a longer --time_budget_hours lets trials finish)")
    pruned = (table.state == TrialState.PRUNED).sum() - len(cut)
    if pruned:
        parts.append(f"{pruned} pruned")
    failed = table[table.state == TrialState.FAIL]
    if len(failed):
        first = int(failed.number.iloc[0])
        parts.append(f"{len(failed)} failed (see trial_results/trial_{first}/log.txt)")
    infeasible = table[table.state == TrialState.INFEASIBLE]
    ruled_out = infeasible.error.fillna("").str.startswith(NOT_TRAINED).sum()
    if ruled_out:
        parts.append(f"{ruled_out} ruled out by the memory budget (not trained)")
    if len(infeasible) - ruled_out:
        parts.append(f"{len(infeasible) - ruled_out} ran out of memory")
    running = (table.state == RUNNING).sum()  # started, no end in the journal, the study live
    if running:
        parts.append(f"{running} still running")
    interrupted = (table.state == INTERRUPTED).sum()
    if interrupted:
        parts.append(f"{interrupted} interrupted (--resume reruns them)")
    return "; ".join(parts) or "see trial_results/*/log.txt"
