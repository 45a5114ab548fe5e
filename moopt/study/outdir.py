"""A study's output folder: refusing to clobber one, clearing one, and what ``--resume`` must find unchanged.

The ``cfg`` these functions take is a ``moopt.study.scheduler.StudyConfig`` (not imported: scheduler imports this module).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from moopt.config import TrialConfig
from moopt.errors import ConfigError
from moopt.journal import JOURNAL, replay
from moopt.records import TrialState
from moopt.search.space import SearchSpace
from moopt.study.checkpoint import ENGINE_FILE
from moopt.study.lock import LOCK_FILE, StudyLock

OUR_FILES = (JOURNAL, ENGINE_FILE, "best_config.yaml", "trials_summary.csv", "optimization_plot.png",
             "pareto_front.png", "search_space.yaml", "baseline.json", "study.json")
RESULT_FILES = ("param_importance.csv", "param_importance.png", "correlations.csv", "correlations.png",
                "learning_curves.png", "report.html")


def check_writable_dir(out: Path, option: str = "--output_dir") -> None:
    """Refuse, in one line, a folder that cannot be made or written: a file in its place (or in its
    path), or a parent this user cannot write (writes nothing)."""
    where = next((p for p in (out, *out.absolute().parents) if p.exists()), None)
    if where is not None and not where.is_dir():
        what = "is a file, not a folder" if where == out else f"cannot be created: {where} is a file"
        raise ConfigError(f"{option} {out}: {what}")
    if where is not None and not os.access(where, os.W_OK | os.X_OK):
        what = "is not writable" if where == out else f"cannot be created: {where} is not writable"
        raise ConfigError(f"{option} {out}: {what} by this user")
    if where != out:  # the OS may still refuse (a read-only mount, /proc; root passes os.access): make it, then remove it
        top = next(p for p in (out, *out.absolute().parents) if p.parent.exists())
        try:
            out.mkdir(parents=True)
        except OSError as e:
            raise ConfigError(f"{option} {out}: cannot be created ({e.strerror})") from None
        shutil.rmtree(top, ignore_errors=True)


def check_output_dir(cfg: Any) -> None:
    """Refuse to clobber an existing study unless --resume or --overwrite (writes nothing)."""
    out = Path(cfg.output_dir)
    check_writable_dir(out)
    StudyLock(out).check()  # a study running there: refused at once, whatever the flags
    holds_study = (out / JOURNAL).is_file()
    if holds_study and not (cfg.resume or cfg.overwrite):
        raise ConfigError(f"{out}: holds a study already; pass --resume to continue it or --overwrite to replace it")
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if cfg.resume and holds_study:
        header = replay(out).header
        mine = study_fingerprint(cfg)
        theirs = dict(header.get("fingerprint", {}))
        if isinstance(theirs.get("fixed"), dict):  # a field added since (its default) is no change
            theirs["fixed"] = json.loads(json.dumps(TrialConfig.from_dict(theirs["fixed"]).to_dict()))
        changed = [k for k in mine if theirs.get(k) != mine[k]]
        if changed:
            raise ConfigError(f"{out}: --resume needs the same study; these differ from the stored one: {changed}")


def prepare_output_dir(cfg: Any) -> None:
    check_output_dir(cfg)
    out = Path(cfg.output_dir)
    if cfg.overwrite and (out / JOURNAL).is_file():
        discard_study(out, remove_dir=False)


def discard_study(out: Path, remove_dir: bool) -> None:
    """Remove what a study writes (not the lock, which its owner holds); the folder too if we made it
    and nothing else is in it."""
    for name in (*OUR_FILES, *RESULT_FILES):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "trial_results", ignore_errors=True)
    if remove_dir and out.is_dir() and {p.name for p in out.iterdir()} <= {LOCK_FILE}:
        shutil.rmtree(out, ignore_errors=True)


def study_fingerprint(cfg: Any) -> dict[str, Any]:
    """What must not change across --resume (JSON-normalised, so it compares with the journal's)."""
    return json.loads(json.dumps({
        "objectives": list(cfg.objectives.names),
        "space": [(p.name, p.type, p.low, p.high, p.step, [list(v) if isinstance(v, tuple) else v for v in p.values]) for p in cfg.space.params],
        "fixed": cfg.space.fixed.to_dict(),
        "train_file": os.path.abspath(cfg.train_file),
        "validation_file": os.path.abspath(cfg.validation_file),
        "base_model": cfg.base_model,
        "seed": cfg.seed,
    }))


def warm_start_configs(output_dir: str, limit: int = 24) -> list[TrialConfig]:
    """An earlier study's best trials, best first: its Pareto front by weighted score, then the
    other COMPLETE trials by score."""
    from moopt.config import load_trial_config
    from moopt.report.table import load_study

    data = load_study(output_dir)
    t = data.table
    if not len(t) or "score" not in t:
        return []
    done = t[t.state == TrialState.COMPLETE].sort_values(["pareto", "score"], ascending=[False, False])
    out = Path(output_dir) / "trial_results"
    return [load_trial_config(out / f"trial_{n}" / "config.yaml") for n in done.number[:limit]]


def space_to_yaml(space: SearchSpace) -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {}
    for p in space.params:
        section, key = p.name.split(".", 1)
        if p.type == "categorical":
            spec = {"type": p.type, "values": [list(v) if isinstance(v, tuple) else v for v in p.values]}
            if p.ordered is not None:  # as the file said it; else inferred again on reading
                spec["ordered"] = p.ordered
        else:
            spec = {"type": p.type, "min": p.low, "max": p.high} | ({"step": p.step} if p.type == "int" and p.step != 1 else {})
        out.setdefault(section, {})[key] = spec
    return out
