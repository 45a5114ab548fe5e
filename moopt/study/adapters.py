"""``--keep_adapters``: which finished trials keep their adapter on disk.

Every trial saves its LoRA adapter (PEFT format) in ``trial_results/trial_N/adapter``. On a large model that
adds up: r 64 on every linear of an 8B model is 168M parameters, 0.6 GiB per trial in fp32 (as trials keep
LoRA weights), 19 GiB for a 30-trial study.

- ``all`` (default): every adapter stays.
- ``pareto``: only the trials on the Pareto front of COMPLETE trials keep theirs. A trial off the front is
  dominated by a COMPLETE trial and stays so whatever finishes later, so its adapter goes as soon as the
  results are written after it ends; pruned, failed and over-budget trials' adapters go likewise.
- ``best``: as ``pareto`` while the study runs (the chosen trial is picked from the front, and which one can
  change as trials finish); when the study ends, only the chosen trial's adapter is left.

Either way a trial cut by ``--time_budget_hours`` that scores above the best keeps its adapter (the summary
names it and points at it).

Everything else in a trial's folder (config, metrics, learning curve) stays: the report and ``--resume`` read
it, and ``moopt train --config`` trains any configuration again.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from moopt.model_files import fmt_bytes, folder_bytes

KEEP_CHOICES = ("all", "pareto", "best")


@dataclass
class Trimmed:
    kept: list[int]  # finished trials whose adapter is on disk
    removed: list[int]  # removed now
    freed_bytes: int


def trim_adapters(output_dir: str | Path, keep: str, final: bool) -> Trimmed:
    """Remove the adapters ``keep`` does not keep, among trials the journal says have finished (a running
    trial's folder is never touched). ``final``: the study has ended (``best`` then keeps only the chosen)."""
    from moopt.report.table import UNFINISHED, load_study

    out = Path(output_dir)
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep_adapters: {keep!r} is not one of {', '.join(KEEP_CHOICES)}")
    data = load_study(out)
    finished = [int(n) for n, s in zip(data.table.number, data.table.state) if s not in UNFINISHED] if len(data.table) else []
    if keep == "all":
        wanted = set(finished)
    else:
        from moopt.records import TIME_BUDGET_CUT
        from moopt.report.table import cut_by_time_ahead

        wanted = ({data.best} - {None}) if keep == "best" and final else set(data.pareto)
        # a trial the time budget cut that scores above the best: the summary points at its adapter
        if final:
            wanted |= {n for n, *_ in cut_by_time_ahead(data)}
        elif "error" in data.table.columns:  # which is ahead can change until the end
            wanted |= set(data.table.number[data.table.error.fillna("").str.startswith(TIME_BUDGET_CUT)].astype(int))
    kept, removed, freed = [], [], 0
    for n in finished:
        adapter = out / "trial_results" / f"trial_{n}" / "adapter"
        if not adapter.is_dir():
            continue
        if n in wanted:
            kept.append(n)
            continue
        freed += folder_bytes(adapter)
        shutil.rmtree(adapter, ignore_errors=True)
        removed.append(n)
    return Trimmed(kept, removed, freed)


def describe(keep: str, done: list[Trimmed]) -> str | None:
    """One line for the end of a study: what ``--keep_adapters`` removed over the whole run."""
    if keep == "all" or not done:
        return None
    removed = sorted({n for t in done for n in t.removed})
    size = fmt_bytes(sum(t.freed_bytes for t in done))
    kept = done[-1].kept
    kept_text = f"trial{'s' if len(kept) > 1 else ''} {', '.join(map(str, kept))}" if kept else "no trial"
    if not removed:
        return f"Adapters (--keep_adapters {keep}): kept for {kept_text}; none removed"
    return f"Adapters (--keep_adapters {keep}): kept for {kept_text}; removed for {len(removed)} other{'s' if len(removed) > 1 else ''} ({size})"
