"""What every benchmark in benchmarks/ shares: where results go, the device's name, the one CSV schema,
hypervolume and bootstrap helpers, the matplotlib set-up.

The CSV schema (long, one measured value a row), the same for every benchmark's file:

    what      the quantity (hypervolume, step_time, peak_memory, compute_tokens, ...)
    problem   what it was measured on: a test problem, an op, a configuration, a kernel, a study
    provider  whose code or which arm measured it (moopt, optuna-tpe, peft, no_pruning, eta_2, fill, ...)
    device    where (cpu, a GPU's name, sm_90, sim)
    value     the number (empty when there is none, e.g. a compile that failed)
    unit      its unit (s, ms, MiB, GiB, pct, count, tokens, ...)
    seed      the seed of a seeded run (empty otherwise)
    n_trials  trials of the study or run the value belongs to (empty otherwise)
    params    the row's other keys as ``key=value`` pairs joined by ``;`` (shape, r, repeat, eta, ...)

``write_rows`` writes rows (dicts with any of those keys, ``params`` a dict) and ``read_rows`` reads
them back (numbers as numbers, ``params`` as a dict); ``wide`` pivots long rows into one record per
(problem, provider, seed, n_trials, params) with one key per ``what``, which is how the summaries read them.

Scripts import this module by name: ``python benchmarks/bench_x.py`` puts benchmarks/ first on
sys.path; under ``python -P`` (which leaves it off, so that moopt is imported as installed, never
from the checkout) each script adds its own folder first.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import platform
from pathlib import Path
from typing import Any, Iterable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COLUMNS = ["what", "problem", "provider", "device", "value", "unit", "seed", "n_trials", "params"]
# the words of bench_trial's synthetic rows (~1 token each); standin_models' tokenizers know them all
WORDS = ("the model data train loss token batch layer weight value answer question list number "
         "small large first second because which where when after before every other system").split()
KEYS = ("problem", "provider", "device", "seed", "n_trials", "params")  # what identifies a run in ``wide``


# -- the CSV ----------------------------------------------------------------------------------------
def format_params(params: dict | str | None) -> str:
    if not params:
        return ""
    if isinstance(params, str):
        return params
    for k, v in params.items():
        if any(c in f"{k}{v}" for c in ";="):
            raise ValueError(f"params {k}={v!r}: ';' and '=' separate the pairs")
    return ";".join(f"{k}={v}" for k, v in params.items())


TEXT_PARAMS = {"commit", "cpu", "gpu"}  # kept as written: a commit such as 2e90454 or 3267671 is not a number


def parse_params(text: str) -> dict[str, Any]:
    if not text:
        return {}
    pairs = (p.partition("=") for p in text.split(";") if p)
    return {k: (v if k in TEXT_PARAMS else _number(v)) for k, _, v in pairs}


def _number(v: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, '' -> None, anything else as it is."""
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def row(what: str, problem: str, provider: str, device: str, value, unit: str, seed=None, n_trials=None,
        params: dict | None = None) -> dict:
    return {"what": what, "problem": problem, "provider": provider, "device": device, "value": value, "unit": unit,
            "seed": seed, "n_trials": n_trials, "params": params or {}}


def write_rows(rows: Iterable[dict], path: Path) -> Path:
    """Write rows in the schema (missing keys empty; ``params`` a dict or its text)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            unknown = set(r) - set(COLUMNS)
            if unknown:
                raise ValueError(f"{path}: columns {sorted(unknown)} are not in the schema (put them in params)")
            out = {k: ("" if r.get(k) is None else r[k]) for k in COLUMNS}
            out["params"] = format_params(r.get("params"))
            w.writerow(out)
    return path


def read_rows(path: Path) -> list[dict]:
    """The rows of a file in the schema: value, seed and n_trials as numbers (None when empty), params a dict."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise ValueError(f"{path}: columns {reader.fieldnames}, expected {COLUMNS}")
        rows = list(reader)
    for r in rows:
        for k in ("value", "seed", "n_trials"):
            r[k] = _number(r[k])
        if isinstance(r["value"], int):
            r["value"] = float(r["value"])
        r["params"] = parse_params(r["params"])
    return rows


def wide(rows: Iterable[dict]) -> list[dict]:
    """One record per run (problem, provider, device, seed, n_trials, params), its ``what``s as keys,
    params' keys merged in; in the order the runs first appear."""
    out: dict[tuple, dict] = {}
    for r in rows:
        params = r["params"] if isinstance(r["params"], dict) else parse_params(r["params"])
        key = tuple(r[k] if k != "params" else format_params(params) for k in KEYS)
        rec = out.setdefault(key, {**{k: r[k] for k in KEYS if k != "params"}, **params})
        rec[r["what"]] = r["value"]
    return list(out.values())


def long(records: Iterable[dict], whats: dict[str, str | tuple[str, str]], keys: dict[str, str],
         params: tuple[str, ...] = ()) -> list[dict]:
    """The inverse of ``wide``: for each record, a row per key of ``whats`` that the record has, its value
    in ``value``; ``whats`` maps the key to its unit, or to (the row's ``what``, unit) to name it otherwise;
    ``keys`` maps schema columns to the record's keys, ``params`` names the keys kept as params. Booleans
    are written as 1.0 / 0.0."""
    rows = []
    for rec in records:
        base = {col: rec.get(k) for col, k in keys.items()}
        p = {k: rec[k] for k in params if k in rec}
        for key, spec in whats.items():
            if key in rec:
                what, unit = spec if isinstance(spec, tuple) else (key, spec)
                v = rec[key]
                rows.append({**base, "what": what, "value": float(v) if isinstance(v, (bool, np.bool_)) else v,
                             "unit": unit, "params": p})
    return rows


# -- the device -------------------------------------------------------------------------------------
def device_name(device: str) -> str:
    """The GPU's name on cuda; on cpu, the processor's model name and core count."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    name = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({os.cpu_count()} cores)"


# -- statistics ------------------------------------------------------------------------------------
def hv(F: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of the points of F (minimisation form) that beat ``ref`` in every objective; 0 when none do."""
    from pymoo.indicators.hv import HV

    F = F[(F < ref).all(axis=1)] if len(F) else F
    if not len(F):
        return 0.0
    return float(HV(ref_point=ref)(F))


def bootstrap_ci(x: np.ndarray, stat, n: int = 20000, seed: int = 0) -> list[float]:
    """Percentile bootstrap 95% interval of ``stat(draws, axis=1)`` over the seeds."""
    if len(x) < 2:
        return [float("nan"), float("nan")]
    draws = np.random.default_rng(seed).choice(x, size=(n, len(x)))
    return [float(v) for v in np.percentile(stat(draws, axis=1), [2.5, 97.5])]


def per_seed_text(values: list[float], fmt: str, most: int = 30) -> str:
    """Each seed's value (in %), or past ``most`` seeds their 5/25/50/75/95th percentiles."""
    v = 100 * np.asarray(values, dtype=float)
    if len(v) <= most:
        return ", ".join(fmt.format(x) for x in v)
    q = np.percentile(v, [5, 25, 50, 75, 95])
    return "percentiles 5/25/50/75/95: " + " / ".join(fmt.format(x) for x in q)


def finite(d: dict) -> dict:
    """NaN and infinities as None (strict JSON)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


# -- plots and patches -----------------------------------------------------------------------------
def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
