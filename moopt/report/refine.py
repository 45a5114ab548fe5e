"""The guide's "coarse search -> refined search": a search space for the next study, narrowed around this
study's best trials and widened past a range end they lean against (range_edges), written as
``refined_space.yaml`` next to ``best_config.yaml``::

    moopt optimize ... --search_space runs/hpo/refined_space.yaml --warm_start runs/hpo --output_dir runs/hpo_refined

Per searched parameter, over the COMPLETE trials (at least REFINE_MIN_TRIALS) and their best third by the weighted
score (at least 3, as range_edges takes them):

- a numeric range (log_uniform, uniform, int) becomes the span of the best trials' values plus MARGIN of the old
  range each side, at least MIN_WIDTH of it wide, on the parameter's scale (log for log_uniform), ends rounded
  outward to 2 significant digits (an int's to its step); past an end range_edges flags it reaches BEYOND of the
  old range further, where the parameter can go (LIMITS);
- a categorical drops a value only with evidence against it: tried in at least 2 COMPLETE trials, the best of them
  below the median score (an ordered one only from its ends, so no gap opens in its scale); an ordered numeric one
  flagged by range_edges gets the next value of its sequence (x2 after 8, 16; +2 after 4, 6);
- a parameter that hardly matters (below FIX_SHARE of the score's variance by fANOVA, on at least FIX_MIN_TRIALS
  trials) is fixed at the best trial's value: the guide's "too many parameters";
- max_seq_length and the fixed values are kept as they were.

A value no COMPLETE trial took is never dropped: no evidence. The file says, per changed parameter, what it was and
why; it parses as a search space (it is checked before it is written).
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from moopt.config import SECTIONS, TrialConfig, target_alias
from moopt.errors import ConfigError
from moopt.records import TrialState
from moopt.report.analysis import EDGE_MIN_TRIALS, EDGE_SKIPPED, LIMITS, SCORE, Importance, RangeEdge, _choice_key, _fmt_value
from moopt.report.table import StudyData

REFINED = "refined_space.yaml"
REFINE_MIN_TRIALS = EDGE_MIN_TRIALS  # with fewer COMPLETE trials the best third is one or two lucky draws
MARGIN = 0.15  # of the old range, on its scale, each side of the best trials' span
MIN_WIDTH = 0.4  # a refined range keeps at least this share of the old one: a third of the trials is not a point
BEYOND = 0.5  # past an end range_edges flags: this share of the old range further out
DROP_MIN_TRIED = 2  # a categorical value is dropped only after this many COMPLETE trials with it
# the guide's second pitfall, "too many parameters": one whose share of the score's variance (fANOVA) is below
# FIX_SHARE, computed on at least FIX_MIN_TRIALS COMPLETE trials, is fixed at the best trial's value (on fewer
# trials the shares move from one seed to the next: a parameter that matters can read 0%)
FIX_SHARE = 0.02
FIX_MIN_TRIALS = 20


@dataclass
class Change:
    name: str  # "training.learning_rate"
    before: str
    after: str
    why: str


@dataclass
class Refinement:
    space: dict[str, dict[str, Any]]  # section -> parameter -> spec (searched) or value (fixed), as the file says
    changes: list[Change]
    top: list[int]  # the best trials it is narrowed around, best first
    n_complete: int
    comments: dict[str, str] = field(default_factory=dict)  # section.key -> what it was and why
    by: str = "the weighted score"  # what "best" means: the weighted score, or the single objective

    def yaml_text(self, study: str) -> str:
        import yaml

        widened = any("lean against" in c.why for c in self.changes)
        lines = [f"# Refined search space from the study in {study}: each searched range narrowed around its",
                 f"# {len(self.top)} best trials by {self.by} (trials {', '.join(map(str, self.top))}) of "
                 f"{self.n_complete} COMPLETE" + (", widened past an end they lean against." if widened else "."),
                 f"# Next: moopt optimize ... --search_space {shlex.quote(str(Path(study) / REFINED))} "
                 f"--warm_start {shlex.quote(study)}"]
        for section, body in self.space.items():
            lines.append(f"{section}:")
            for key, spec in body.items():
                text = yaml.safe_dump(spec, default_flow_style=True, sort_keys=False, width=10**6).strip()
                text = text.removesuffix("\n...").strip()
                note = self.comments.get(f"{section}.{key}")
                lines.append(f"  {key}: {text}" + (f"  # {note}" if note else ""))
        return "\n".join(lines) + "\n"


def _plain(v: Any) -> Any:
    """A value as a search space file writes it: 64 (not 64.0), target modules by alias where one fits."""
    if isinstance(v, (list, tuple)):
        return target_alias(v) or list(v)
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1:
        return int(v)
    return v.item() if hasattr(v, "item") else v


def _round_out(x: float, up: bool) -> float:
    """x rounded outward (down for a range's min, up for its max) to 2 significant digits."""
    if x == 0 or not math.isfinite(x):
        return x
    q = 10 ** (math.floor(math.log10(abs(x))) - 1)
    return float(f"{(math.ceil(x / q) if up else math.floor(x / q)) * q:.12g}")


def _valid(name: str, value: Any, base: TrialConfig) -> bool:
    try:
        TrialConfig.from_flat({name: value}, base=base)
        return True
    except ConfigError:
        return False


def _numeric(name: str, spec: dict, top: list[float], sides: set[str], base: TrialConfig) -> tuple[dict, str] | None:
    """The refined spec of a log_uniform / uniform / int range and why, or None when it stays."""
    typ, lo0, hi0 = spec["type"], float(spec["min"]), float(spec["max"])
    section, key = name.split(".", 1)
    integer = typ == "int" or {f.name: f.type for f in dataclasses.fields(SECTIONS[section])}[key] in ("int", int)
    log = typ == "log_uniform"
    f = math.log if log else float
    inv = (lambda u: math.exp(f(lo0) + u * (f(hi0) - f(lo0)))) if log else (lambda u: lo0 + u * (hi0 - lo0))
    pos = sorted((f(min(max(v, lo0), hi0)) - f(lo0)) / (f(hi0) - f(lo0)) for v in top)
    a, b = pos[0] - MARGIN, pos[-1] + MARGIN
    if b - a < MIN_WIDTH:
        mid = (a + b) / 2
        a, b = mid - MIN_WIDTH / 2, mid + MIN_WIDTH / 2
    a, b = (a - (b - 1), 1.0) if b > 1 else (a, b)  # slid back inside the old range
    a, b = (0.0, b - a) if a < 0 else (a, b)
    a, b = (-BEYOND if "low" in sides else a), (1 + BEYOND if "high" in sides else b)
    floor, ceiling = LIMITS.get(key, (None, None))
    lo, hi = inv(a), inv(b)
    lo = lo if floor is None else max(lo, floor)
    hi = hi if ceiling is None else min(hi, ceiling)
    if integer:
        step = int(spec.get("step", 1))
        lo = int(lo0 + step * math.floor((lo - lo0) / step + 1e-9))
        hi = int(lo0 + step * math.ceil((hi - lo0) / step - 1e-9))
    elif log:
        lo, hi = _round_out(lo, up=False), _round_out(hi, up=True)
    else:  # to 2 significant digits of the old range's width: 0 .. 0.029 of 0 .. 0.05, not 0.00027 .. 0.029
        q = 10 ** (math.floor(math.log10(hi0 - lo0)) - 1)
        lo, hi = float(f"{math.floor(lo / q + 1e-9) * q:.12g}"), float(f"{math.ceil(hi / q - 1e-9) * q:.12g}")
    lo = lo if "low" in sides else max(lo, spec["min"])  # rounding outward stays inside the old range
    hi = hi if "high" in sides else min(hi, spec["max"])
    lo = lo if _valid(name, lo, base) and (not log or lo > 0) else spec["min"]
    hi = hi if _valid(name, hi, base) else spec["max"]
    if not float(lo) < float(hi) or (float(lo), float(hi)) == (lo0, hi0):
        return None
    span = _fmt_value(min(top)) if min(top) == max(top) else f"{_fmt_value(min(top))} to {_fmt_value(max(top))}"
    why = (f"the {len(top)} best trials took {span}"
           + ("; past the min: the best trials lean against it" if float(lo) < lo0 else "")
           + ("; past the max: the best trials lean against it" if float(hi) > hi0 else ""))
    return {**spec, "min": _plain(lo), "max": _plain(hi)}, why


def _next_value(values: list, side: str, pattern: list | None = None) -> Any:
    """The next value of an ordered numeric sequence past one end of ``values``: + step for an arithmetic one, x the
    end's own ratio for a geometric one (also a roughly geometric one such as 1e-4, 3e-4, 1e-3: ratios within 1.5x of
    each other), rounded to the significant digits the values are written with (1e-3 x 10 is 0.01, not
    0.009999999999999998; after 1e-4, 3e-4, 1e-3 comes 3e-3); None for neither. ``pattern``: the space's whole list,
    which tells the kind of sequence when an end was dropped from ``values``."""
    seq = [float(v) for v in values]
    pat = [float(v) for v in (pattern or values)]
    if len(seq) < 2 or len(pat) < 2:
        return None
    end, inner = (seq[0], seq[1]) if side == "low" else (seq[-1], seq[-2])
    ratios = [b / a for a, b in zip(pat, pat[1:]) if a]
    diffs = {round(b - a, 9) for a, b in zip(pat, pat[1:])}
    ints = all(isinstance(v, int) for v in values)
    geometric = len(ratios) == len(pat) - 1 and all(v > 0 for v in pat) and all(r > 1 for r in ratios)
    if len(diffs) == 1 and not (geometric and len({round(r, 6) for r in ratios}) == 1):
        out = float(f"{end + (end - inner):.12g}")
    elif geometric and max(ratios) <= 1.5 * min(ratios):
        out = end * end / inner
        if not ints:
            digits = max(len(f"{v:.6e}".split("e")[0].replace(".", "").rstrip("0")) for v in pat)
            out = float(f"{out:.{max(1, digits)}g}")
    else:
        return None
    return int(round(out)) if ints else out


def _matches(col: pd.Series, value: Any) -> pd.Series:
    """Which trials took ``value``: numbers by value (32 is 32.0), lists as the params_ columns join them."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return pd.to_numeric(col, errors="coerce") == float(value)
    return col.map(str) == str(_choice_key(value))


def _categorical(name: str, spec: dict, done: pd.DataFrame, col: str, sides: set[str], ordered: bool,
                 base: TrialConfig) -> tuple[Any, str] | None:
    """The refined spec (or fixed value, when one value is left) of a categorical and why, or None."""
    values = list(spec["values"])
    median = done[SCORE].median()
    against = set()
    for i, v in enumerate(values):
        s = done.loc[_matches(done[col], v), SCORE]
        if len(s) >= DROP_MIN_TRIED and s.max() < median:
            against.add(i)
    keep = list(range(len(values)))
    if ordered:
        while len(keep) > 1 and keep[0] in against:
            keep.pop(0)
        while len(keep) > 1 and keep[-1] in against:
            keep.pop()
    else:
        keep = [i for i in keep if i not in against] or keep
    dropped = [_plain(values[i]) for i in range(len(values)) if i not in keep]
    kept = [_plain(values[i]) for i in keep]
    added = []
    floor, ceiling = LIMITS.get(name.split(".", 1)[1], (None, None))
    for side in sorted(sides):
        nxt = _next_value(kept, side, [_plain(v) for v in values])
        if (nxt is None or (floor is not None and nxt < floor) or (ceiling is not None and nxt > ceiling)
                or not _valid(name, nxt, base)):
            continue
        kept = [nxt, *kept] if side == "low" else [*kept, nxt]
        added.append(nxt)
    if not dropped and not added:
        return None
    show = lambda vs: ", ".join(_option_text(v) for v in vs)  # noqa: E731
    why = "; ".join(([f"dropped {show(dropped)}: every trial with it scored below the median"] if dropped else [])
                    + ([f"added {show(added)}: the best trials lean against that end"] if added else []))
    if len(kept) == 1:
        return kept[0], why
    return {**spec, "values": kept}, why


def refine(data: StudyData, spec_file: dict[str, dict[str, Any]], edges: list[RangeEdge],
           importance: Importance | None = None) -> Refinement | None:
    """The refined search space of a study (see the module's doc), or None with fewer than REFINE_MIN_TRIALS
    COMPLETE trials or when no range changes. ``spec_file``: the study's search_space.yaml as read;
    ``importance``: the score's (fANOVA), for fixing the parameters that do not matter."""
    t = data.table
    if data.best is None or SCORE not in t.columns:
        return None
    done = t[(t.state == TrialState.COMPLETE) & t[SCORE].notna()]
    if len(done) < REFINE_MIN_TRIALS:
        return None
    top = done.nlargest(max(3, len(done) // 3), SCORE)
    best = done[done.number == data.best]
    shares = dict(importance) if importance and importance.rung is None and importance.n_trials >= FIX_MIN_TRIALS else {}
    fixed = (data.header.get("fingerprint") or {}).get("fixed") or {}
    try:
        base = TrialConfig.from_dict(fixed) if fixed else TrialConfig()
    except ConfigError:
        base = TrialConfig()
    defaults = TrialConfig().to_dict()
    flagged: dict[str, set[str]] = {}
    for e in edges:
        flagged.setdefault(e.param, set()).add(e.side)
    space: dict[str, dict[str, Any]] = {}
    changes: list[Change] = []
    comments: dict[str, str] = {}
    for section in SECTIONS:
        body = dict(spec_file.get(section) or {})
        for key, value in fixed.get(section, {}).items():  # the file's fixed values (those not the defaults)
            if key not in body and value != defaults[section].get(key):
                body[key] = value
        for key, spec in body.items():
            name = f"{section}.{key}"
            col = f"params_{key}"
            if not isinstance(spec, dict) or "type" not in spec:
                space.setdefault(section, {})[key] = _plain(spec)
                continue
            new = None
            share = shares.get(key, shares.get(f"lora_{key}"))
            if (key not in EDGE_SKIPPED and share is not None and share < FIX_SHARE and len(best)
                    and key not in flagged and pd.notna(best[col].iloc[0])):
                new = _fixed(name, spec, best[col].iloc[0], share, len(done), base)
            if new is None and key not in EDGE_SKIPPED and col in done.columns and top[col].notna().any():
                if spec["type"] == "categorical":
                    nums = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec["values"])
                    ordered = spec.get("ordered", nums and spec["values"] in (sorted(spec["values"]),
                                                                              sorted(spec["values"], reverse=True)))
                    new = _categorical(name, spec, done, col, flagged.get(key, set()) if nums and ordered else set(),
                                       bool(ordered), base)
                else:
                    new = _numeric(name, spec, [float(v) for v in top[col].dropna()], flagged.get(key, set()), base)
            if new is None:
                space.setdefault(section, {})[key] = _plain_spec(spec)
                continue
            after, why = new
            space.setdefault(section, {})[key] = after
            changes.append(Change(name, _describe(spec), _describe(after), why))
            comments[name] = f"was {_describe(spec)}; {why}"
    if not changes:
        return None
    from moopt.search.space import parse_space

    parse_space(space, source=REFINED)  # a bug here, not the user's input (write_refined warns)
    by = "the weighted score" if data.objectives.multi else data.objectives.names[0]
    return Refinement(space, changes, [int(n) for n in top.number], len(done), comments, by)


def _fixed(name: str, spec: dict, value: Any, share: float, n: int, base: TrialConfig) -> tuple[Any, str] | None:
    """The best trial's value, as the file fixes a parameter, and why; None when it is not a valid one."""
    if spec["type"] == "categorical":
        value = next((v for v in spec["values"] if _matches(pd.Series([value]), v).iloc[0]), None)
        if value is None:
            return None
    value = _plain(value.item() if hasattr(value, "item") else value)
    if spec["type"] == "int" or isinstance(spec.get("min"), int) and float(value).is_integer():
        value = int(value)
    if not _valid(name, value, base):
        return None
    return value, (f"fixed at the best trial's value: {share:.1%} of the score's variance over {n} trials "
                   f"(the guide's pitfall \"too many parameters\")")


def _plain_spec(spec: dict) -> dict:
    return {k: [_plain(x) for x in v] if k == "values" else _plain(v) if k in ("min", "max") else v
            for k, v in spec.items()}


def _option_text(v: Any) -> str:
    """A categorical option in a change line: a number as written, a module list by its alias or joined with +
    (q_proj+v_proj): commas separate the options."""
    if isinstance(v, (list, tuple)):
        return target_alias(v) or "+".join(map(str, v))
    return str(_fmt_value(v))


def _describe(spec: Any) -> str:
    """A spec in a few characters: ``1e-05 .. 0.003 (log)``, ``[4, 8, 16]``, ``cosine (fixed)``."""
    if not isinstance(spec, dict):
        return f"{_plain(spec)} (fixed)"
    if spec["type"] == "categorical":
        return "[" + ", ".join(_option_text(v) for v in spec["values"]) + "]"
    scale = " (log)" if spec["type"] == "log_uniform" else ""
    return f"{_fmt_value(spec['min'])} .. {_fmt_value(spec['max'])}{scale}"


def write_refined(output_dir: str | Path, data: StudyData, edges: list[RangeEdge],
                  importance: Importance | None = None) -> Refinement | None:
    """Write (or, when there is nothing to refine, remove a stale) refined_space.yaml; the refinement."""
    import yaml

    from moopt.yamlio import atomic_write_text

    out = Path(output_dir)
    path = out / "search_space.yaml"
    spec_file = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    try:
        r = refine(data, spec_file, edges, importance)
    except ConfigError as e:  # a refined space that does not parse is moopt's bug: say it, keep the study's results
        import warnings

        warnings.warn(f"{REFINED} not written: {e}", RuntimeWarning, stacklevel=2)
        r = None
    if r is None:
        (out / REFINED).unlink(missing_ok=True)
        return None
    atomic_write_text(out / REFINED, r.yaml_text(str(out)))
    return r


# moopt optimize's defaults (tests/test_refine.py checks them against the command's own): an option at its default is
# left out of the refined study's command; the others are carried, as a user who ran the first study gave them
OPTIMIZE_DEFAULTS = {"optimization_objective": "eval_loss", "parallel_trials": 1, "kernels": "auto", "executor": "local",
                     "seed": 42, "keep_adapters": "all", "baseline": True, "warm_workers": True}
# given by the refined command itself, or this run's own (a time budget)
NOT_REPEATED = ("base_model", "train_file", "validation_file", "output_dir", "num_trials", "search_space", "warm_start",
                "resume", "overwrite", "time_budget_hours", "seed")
FLAGS = {"baseline": "--no-baseline", "warm_workers": "--no_warm_workers"}  # a flag's form when off


def refined_command(header: dict[str, Any], out: Path) -> str:
    """The command line of the refined study: this study's options (every one not at its default: kept adapters,
    no baseline, Ray, ...), its refined space, warm-started from it."""
    import os
    import shlex

    def path(p: str | Path) -> str:
        rel = os.path.relpath(p)
        return shlex.quote(rel if not rel.startswith("..") else str(p))

    o = header.get("options") or {}
    args = ["moopt optimize", f"--base_model {shlex.quote(str(header.get('base_model') or o.get('base_model')))}"]
    args += [f"--{k} {path(o[k])}" for k in ("train_file", "validation_file") if o.get(k)]
    args += [f"--output_dir {path(str(out).rstrip('/') + '_refined')}", f"--num_trials {o.get('num_trials') or 10}",
             f"--search_space {path(out / 'refined_space.yaml')}", f"--warm_start {path(out)}"]
    first = ("optimization_objective", "optimization_weights", "memory_constraint", "pruning_factor")
    args += [f"--{k} {shlex.quote(str(o[k]))}" for k in first if o.get(k) is not None]
    args += [f"--parallel_trials {o['parallel_trials']}"] if (o.get("parallel_trials") or 1) > 1 else []
    # --warm_start takes trials over only on the same seed and kernel path: keep them
    seed = (header.get("fingerprint") or {}).get("seed", o.get("seed"))
    args += [f"--seed {seed}"] if seed is not None and seed != 42 else []
    args += [f"--kernels {o['kernels']}"] if o.get("kernels") not in (None, "auto") else []
    done = {*first, "parallel_trials", "kernels"}  # given above
    for k, v in o.items():  # the rest, as given: a Ray study's refined one runs on Ray, kept adapters stay few, ...
        if k in done or k in NOT_REPEATED or v is None or (k in OPTIMIZE_DEFAULTS and v == OPTIMIZE_DEFAULTS[k]):
            continue
        if isinstance(v, bool):
            args += [f"--{k}" if v else FLAGS.get(k, f"--no_{k}")]
        else:
            args += [f"--{k} {shlex.quote(str(v))}"]
    return " ".join(args)
