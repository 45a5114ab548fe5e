"""The estimator's calibration on this machine: measured (estimate, peak) pairs per model/device/
kernels, the fitted correction, the error band around it, and the file that keeps them.

A configuration's measured peak (a probe's, or a trained trial's) is stored under its memory
fingerprint; an out-of-memory is stored as a lower bound of what that configuration needs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from moopt.config import TrialConfig

PROBE_VERSION = 1  # bump when the probe's recipe changes: cached measurements of older versions are ignored

# what a measured peak depends on besides the configuration: the code that trains, probes and estimates
# (an upgrade or a local edit of any of it makes older measurements stale) and the libraries under it
STAMPED_SOURCES = ("moopt/train", "moopt/memory/estimate.py", "moopt/memory/shapes.py", "moopt/memory/rss.py",
                   "moopt/memory/measure.py", "moopt/config.py", "moopt_kernels")
STAMPED_PACKAGES = ("torch", "transformers", "bitsandbytes", "triton")


@functools.lru_cache(maxsize=1)
def code_stamp() -> str:
    """A short hash of STAMPED_SOURCES' text and STAMPED_PACKAGES' versions. The cache keeps it in each
    entry and reads an entry with another stamp as empty: a measurement (and the estimate it was paired
    with) from other code or other libraries does not calibrate this one's, nor answer for its probe."""
    from importlib import metadata
    from importlib.util import find_spec

    h = hashlib.sha256(f"probe {PROBE_VERSION}".encode())
    for rel in STAMPED_SOURCES:
        top, _, rest = rel.partition("/")
        spec = find_spec(top)  # the installed package's folder, wherever pip put it (no import)
        if spec is None or not spec.origin:
            continue
        base = Path(spec.origin).parent / rest
        root = base if base.is_dir() else base.parent
        for f in sorted(base.rglob("*.py")) if base.is_dir() else [base]:
            if f.is_file():
                h.update(f"{top}/{f.relative_to(root)}".encode() + b"\0" + f.read_bytes())
    for name in STAMPED_PACKAGES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{name}=={version}".encode())
    return h.hexdigest()[:16]


def default_cache_path() -> Path:
    """``calibration.json`` in moopt's cache, where the converted models are (moopt.train.models.cache_root):
    ``$MOOPT_CACHE``, else ``$XDG_CACHE_HOME/moopt``, else ``~/.cache/moopt``."""
    root = os.environ.get("MOOPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "moopt")
    return Path(root) / "calibration.json"


def memory_fingerprint(trial: TrialConfig, shape: tuple[int, int] | None = None) -> str:
    """The trial fields that change peak memory, as a stable string (the probe cache's key); ``shape``:
    the (batch, sequence) really estimated/probed when it is not batch_size × max_seq_length."""
    t, lo, d, m = trial.training, trial.lora, trial.data, trial.model
    b, s = shape or (t.batch_size, d.max_seq_length)
    return json.dumps({
        "b": int(b), "s": int(s), "clip": t.max_grad_norm > 0, "r": lo.r,
        "dropout": lo.dropout > 0, "targets": list(lo.target_modules), "quant": m.quantization,
        "ckpt": m.gradient_checkpointing, "dtype": m.dtype, "v": PROBE_VERSION,
    }, sort_keys=True)


class CalibrationCache:
    """JSON file ``{"version": 1, "entries": {calibration_key: {"stamp": code_stamp(), "pairs":
    [[estimate, measured], ...], "calibration": {...}, "probes": {fingerprint: {...}}}}}``. An entry
    written by other code or libraries (another ``stamp``) reads as empty and is replaced at the next
    write of its key.

    Writes are atomic (temp file in the same folder + ``os.replace``) and read-modify-write under an
    ``flock`` on ``<file>.lock``, so concurrent gates (parallel studies on one machine) never lose a
    probe or leave a half-written file. A missing or unreadable file reads as empty.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()

    def read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": 1, "entries": {}}
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            self.unreadable = True  # an update keeps it aside, and says so, before it writes a fresh one
            return {"version": 1, "entries": {}}
        return data

    def entry(self, key: str) -> dict:
        return _current(self.read()["entries"].get(key))

    def update(self, key: str, fn) -> dict:
        """Apply ``fn(entry) -> entry`` to one key under the lock and write the file atomically."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(str(self.path) + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.unreadable = False
            data = self.read()
            if self.unreadable and self.path.exists():  # a corrupt file: kept for a look, not silently replaced
                aside = self.path.with_name(self.path.name + ".unreadable")
                os.replace(self.path, aside)
                print(f"moopt: {self.path} could not be read; kept as {aside.name}, and the memory calibration starts "
                      "afresh", file=sys.stderr)
            data["entries"][key] = {**fn(dict(_current(data["entries"].get(key)))), "stamp": code_stamp()}
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=1, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return data["entries"][key]


def _current(entry) -> dict:
    """``entry`` if this code wrote it, else empty."""
    return entry if isinstance(entry, dict) and entry.get("stamp") == code_stamp() else {}


def error_band(pairs: list, calibration: dict | None, prior_under: float, floor: float,
               estimate_bytes: int | None = None, spread: float = 0.0, prior_over: float = 0.0) -> tuple[float, float]:
    """(under, over) of the calibrated estimate: ``(prior_under + spread, prior_over)`` with no pairs (the
    worst errors measured each way, memory.estimate.under_prior and over_prior); else
    the worst residual each way of the calibrated estimate on the pairs (leave-one-out from 3 pairs
    on, so a pair does not vouch for itself), at least ``floor``, plus ``prior_under / sqrt(1 + n)`` on
    the under side, which fades as measurements accumulate; no wider than ``prior_under`` unless a
    measurement itself lay further above its estimate. The square root, not 1 / (1 + n): in
    benchmarks/bench_memory.py's decision simulation (32 CPU probes, budgets at measured × 0.9-1.1,
    leave-one-out) 1 / (1 + n) let 1.6% of the decisions wrongly fit, 1 / sqrt(1 + n) 0.8% (52% and
    55% probed); the one miss is a 4-bit configuration 13% over its raw estimate.

    With ``estimate_bytes`` (the configuration's raw estimate) the band also covers extrapolation: the
    calibration's factor is only known to lie in CALIBRATION_FACTOR_RANGE, so a configuration estimated
    beyond the measured ones (above the largest or below the smallest) may lie off the fitted line by
    the rest of that range times its distance from them. benchmarks/bench_memory_gate.py, seed 1: one
    small configuration (raw 1.19 GiB, measured 1.10) calibrated the factor to 0.93, the band shrank to
    3%, and a configuration estimated at 1.85 GiB calibrated (2.00 raw) was trained on trust under a
    1.92 GiB budget; it peaked at 1.97. With this term its band is 10.6% (and the raw estimate's own
    bound, 2.00 × 1.03 = 2.06 GiB, 11.2%): it is probed.

    ``spread``: the runtime's spread between machines relative to this estimate (on cpu,
    memory.estimate.CPU_RUNTIME_SPREAD_BYTES / estimate), added in full with no pairs and as
    ``spread / (1 + n)`` after n. Calibration fits this machine's offset, but a pair or two of
    configurations unlike this one also carry the estimate's shape-dependent error into the factor:
    the guide's memory-constrained study calibrated on a batch-8 trial (estimate 1.00 GiB, measured
    1.00) and trusted a batch-1 one, r 32 on all linears, with a 3% band; it peaked 12% above its
    calibrated estimate. With this term the band after that one pair is ~11%."""
    from moopt.memory.estimate import CALIBRATION_FACTOR_RANGE, apply_calibration, fit_calibration

    pairs = [(int(e), int(m)) for e, m, *_ in pairs]
    n = len(pairs)
    uncalibrated = prior_under + spread
    if n == 0:
        return uncalibrated, prior_over
    resid = []
    for i, (e, m) in enumerate(pairs):
        if n >= 3:
            cal = fit_calibration([p for j, p in enumerate(pairs) if j != i])
        else:
            cal = calibration or fit_calibration(pairs)
        pred = apply_calibration(e, cal)
        resid.append((m - pred) / pred)
    under = max(floor, max(resid)) + prior_under / math.sqrt(1 + n) + spread / (1 + n)
    if max(resid) <= uncalibrated:  # measurements within the prior never widen the band beyond it
        under = min(under, uncalibrated)
    over = max(floor, -min(resid))
    if estimate_bytes:
        cal = calibration or fit_calibration(pairs)
        lo_f, hi_f = CALIBRATION_FACTOR_RANGE
        f = min(max(float(cal["factor"]), lo_f), hi_f)
        est = [e for e, _ in pairs]
        up, down = max(0, estimate_bytes - max(est)), max(0, min(est) - estimate_bytes)
        pred = apply_calibration(estimate_bytes, cal)
        if pred > 0:
            under += ((hi_f - f) * up + (f - lo_f) * down) / pred
            over += ((f - lo_f) * up + (hi_f - f) * down) / pred
            # the raw estimate's own bound (raw × (1 + prior)) still holds while no measurement broke
            # it: the calibrated band is never wider than the uncalibrated one
            if all(m <= e * (1 + uncalibrated) for e, m in pairs):
                under = min(under, max(floor, estimate_bytes * (1 + uncalibrated) / pred - 1))
    return under, over


def refit(entry: dict, probes: dict) -> dict:
    """Pairs and calibration from every measurement; OOM lower bounds lift the offset."""
    from moopt.memory.estimate import fit_calibration

    pairs = [[p["estimate_bytes"], p["measured_bytes"]] for p in probes.values()
             if not p.get("oom") and p.get("estimate_bytes")]
    out = {**entry, "probes": probes, "pairs": pairs}
    cal = fit_calibration([tuple(p) for p in pairs]) if pairs else None
    bounds = [(p["estimate_bytes"], p["measured_bytes"]) for p in probes.values()
              if p.get("oom") and p.get("estimate_bytes") and p.get("measured_bytes")]
    if bounds:
        cal = dict(cal or {"factor": 1.0, "offset_bytes": 0.0, "n": 0})
        for e, m in bounds:  # estimate of an OOMed configuration >= its peak at the failure
            cal["offset_bytes"] = max(float(cal["offset_bytes"]), m - cal["factor"] * e)
    if cal is not None:
        out["calibration"] = cal
    else:
        out.pop("calibration", None)
    return out


PROBE_EXCESS_KEPT = 50


def add_pair(entry: dict, fp: str, raw_estimate: int, measured: int, retries: int, seconds: float,
              source: str = "probe", partial: bool = False) -> dict:
    """Store one (uncalibrated estimate, measured) pair and refit the key's calibration. A trained trial's
    peak replaces its probe's pair; how far it went above the probe is kept (``probe_excess``, the last
    PROBE_EXCESS_KEPT), and widens the margin the gate leaves over a measured peak (estimate.measured_spread).
    ``partial``: a trial stopped before its last step (pruned, cut by the time budget, failed), which may not
    have met the longest batch its probe ran: its peak is a lower bound, stored only where it is above what is
    known of the configuration (its probe's peak, else the uncalibrated estimate)."""
    probes = dict(entry.get("probes") or {})
    before = probes.get(fp) or {}
    if partial and measured <= (before.get("measured_bytes") or raw_estimate):
        return entry
    if source == "trial" and before.get("source") == "probe" and before.get("measured_bytes"):
        excess = measured / before["measured_bytes"] - 1
        entry = {**entry, "probe_excess": ([*(entry.get("probe_excess") or []), round(excess, 4)])[-PROBE_EXCESS_KEPT:]}
    probes[fp] = {"estimate_bytes": int(raw_estimate), "measured_bytes": int(measured), "source": source,
                  "num_alloc_retries": retries, "seconds": round(seconds, 2), "when": time.time()}
    return refit(entry, probes)


def add_oom(entry: dict, fp: str, raw_estimate: int | None, peak_at_failure: int, shared: bool = False,
            cap_bytes: int | None = None) -> dict:
    """Store an out-of-memory (a probe's, or a trained trial's with its peak at the failure, a lower bound of what it
    needs, which lifts the calibration). ``shared``: it ran out beside other trials on its GPU, so it proves
    nothing about the configuration alone (the gate probes it alone before it is trained again). ``cap_bytes``: a
    probe held to that cap: it proves the configuration infeasible for budgets up to the cap only."""
    probes = dict(entry.get("probes") or {})
    probes[fp] = {"oom": True, "estimate_bytes": raw_estimate, "measured_bytes": peak_at_failure or None,
                  "when": time.time(), **({"shared": True} if shared else {}),
                  **({"cap_bytes": int(cap_bytes)} if cap_bytes else {})}
    return refit(entry, probes)
