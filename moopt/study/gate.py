"""The memory gate: fit / infeasible for a per-trial budget, from the estimate, its error band and a probe.

The analytic estimate decides when it is clearly on one side of the budget; a probe (a few real
training steps in a subprocess, :mod:`moopt.train.probe`) decides when it is borderline; each
measurement goes into the per-machine calibration (:mod:`moopt.memory.calibration`) so later
estimates for that model/device/kernels improve.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from moopt.config import TrialConfig
from moopt.console import numbered
from moopt.errors import ConfigError
from moopt.memory.calibration import (
    CalibrationCache,
    add_oom,
    add_pair,
    default_cache_path,
    error_band,
    memory_fingerprint,
)
from moopt.train.probe import GIB, ProbeResult, probe_peak

# A GPU probe's caching allocator may reserve at most this times the budget (probe_peak's cap_bytes). A peak that
# reaches the cap is over the budget whatever the spread, so the cap changes no verdict; it only keeps a probe
# placed beside running trials (DevicePlacer.probe_device) from taking the memory they hold.
PROBE_CAP = 1.25


@dataclass(frozen=True)
class GateDecision:
    verdict: str  # "fit" | "infeasible" | "wait" (a probe must decide, and no GPU has the room for it now)
    predicted_gb: float  # analytic estimate (calibrated where the cache has a calibration), GiB
    measured_gb: float | None  # probe measurement (this call's or a cached one), GiB
    probed: bool  # True when this call ran a probe subprocess
    reason: str
    shape: tuple[int, int] | None = None  # (batch, sequence) estimated and, when probed, probed
    band: tuple[float, float] | None = None  # (under, over): the estimate's error band used
    company: tuple[int, ...] = ()  # the study's trials that ran on the probe's GPU while it ran
    shared_oom: bool = False  # the probe ran out of memory beside them: "infeasible" now, not ruled out for good


# -- the data's real batch shape ---------------------------------------------------------------------

_PROFILES: dict[tuple, tuple[list[int], list[int]]] = {}


def _profile_key(model_path: str, data_file: str | os.PathLike) -> tuple:
    path = Path(data_file)
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns, str(model_path)


def _profile(model_path: str, records: list, path, numbers=None) -> tuple[list[int], list[int]]:
    """(token count, first-label index) of each record, tokenised as a trial does (``numbers``: the records' numbers
    in ``path``, for the error of one the tokenizer refuses)."""
    from transformers import AutoTokenizer

    from moopt.train.data import first_label, tokenize_records

    tok = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    examples = list(tokenize_records(records, tok, path, numbers))
    _MERGED[_profile_key(model_path, path), len(examples)] = sum(ex.merged for ex in examples)
    return [len(ex.input_ids) for ex in examples], [first_label(ex) for ex in examples]


_MERGED: dict[tuple, int] = {}  # (profile key, examples profiled) -> how many of them have a merged prompt


def merged_prompts(model_path: str, data_file: str | os.PathLike) -> int:
    """How many prompt/completion examples of ``sampled_profile``'s sample have a prompt whose tokens change when the
    completion is appended (a prompt ending in a space: "Route: " + "Garden" trains on " Garden", while the prompt
    alone, at inference, ends with a lone space token the model never saw there)."""
    lengths, _, _ = sampled_profile(model_path, data_file)
    return _MERGED.get((_profile_key(model_path, data_file), len(lengths)), 0)


def data_profile(model_path: str, data_file: str | os.PathLike) -> tuple[list[int], list[int]]:
    """(token count, index of the first token carrying loss) of every example of ``data_file``, untruncated,
    tokenised as a trial does (moopt.train.data.tokenize_record with the model's tokenizer); cached per (file,
    size, mtime, tokenizer)."""
    key = _profile_key(model_path, data_file)
    if key not in _PROFILES:
        from moopt.train.data import read_records

        _PROFILES[key] = _profile(model_path, read_records(data_file), data_file)
    return _PROFILES[key]


def completion_starts(model_path: str, data_file: str | os.PathLike, sample: int = 5000) -> tuple[list[int], int]:
    """(``data_profile``'s first-label indices of a fixed random ``sample`` of the examples, or of all when there are
    no more, or when the whole profile is known already; how many examples the file has). Tokenising a chat data
    set runs at ~2,000 records/s on one core, so the study's data check reads a sample of a large one."""
    _, starts, n = sampled_profile(model_path, data_file, sample)
    return starts, n


def sampled_profile(model_path: str, data_file: str | os.PathLike, sample: int = 5000) -> tuple[list[int], list[int], int]:
    """``completion_starts``' sample with each example's token count too: (lengths, first-label indices, how many
    examples the file has)."""
    key = _profile_key(model_path, data_file)
    if key not in _PROFILES:
        if (key, sample) in _SAMPLES:
            return _SAMPLES[key, sample]
        import random

        from moopt.train.data import read_records

        records = read_records(data_file)
        if len(records) > sample:
            picked = sorted(random.Random(0).sample(range(len(records)), sample))
            lengths, starts = _profile(model_path, [records[i] for i in picked], data_file, [i + 1 for i in picked])
            _SAMPLES[key, sample] = lengths, starts, len(records)
            return _SAMPLES[key, sample]
        _PROFILES[key] = _profile(model_path, records, data_file)
    lengths, starts = _PROFILES[key]
    return lengths, starts, len(starts)


_SAMPLES: dict[tuple, tuple[list[int], list[int], int]] = {}


def require_completions(model_path: str, data_file: str | os.PathLike, max_seq_length: int) -> tuple[list[int], int]:
    """``completion_starts`` of ``data_file``, after checking that at least one example keeps a completion token
    within ``max_seq_length`` (on every example before refusing: a sample may miss the one that does); else
    ConfigError (moopt.train.data.no_completion_left)."""
    from moopt.errors import ConfigError
    from moopt.train.data import no_completion_left

    starts, n = completion_starts(model_path, data_file)
    if not any(s < max_seq_length for s in starts) and len(starts) < n:
        starts = data_profile(model_path, data_file)[1]
    if not any(s < max_seq_length for s in starts):
        raise ConfigError(no_completion_left(data_file, n, max_seq_length))
    return starts, n


def data_notes(model_path: str, data_file: str | os.PathLike, at: int, longest: int | None = None,
               role: str = "training") -> list[str]:
    """What sequences cut to max_seq_length ``at`` (and, where a space searches it, up to ``longest``) do to the
    examples of ``data_file``: those that keep no completion token (their prompt fills it; trials leave them out)
    and those cut inside their completion (trained or scored without their end and the EOS token). ``role``:
    "training" or the evaluation's ("validation", "test"). One line each, or none; a large file is read on a sample
    (``sampled_profile``), said with its counts. The study's start (Study.check_data) and ``moopt train`` say them."""
    lengths, starts, n = sampled_profile(model_path, data_file)
    hi = at if longest is None else longest

    def count(k: int) -> str:  # of the sample, scaled to the file ("about 10118 of 10118" read oddly: "all")
        return str(k) if len(starts) == n or k == 0 else "all" if k == len(starts) else f"about {round(k * n / len(starts))}"

    def counted(k_at: int, k_hi: int) -> str:  # "3 ... at max_seq_length 24 (1 at the space's longest, 32)"
        return f" at max_seq_length {at}" + (f" ({count(k_hi)} at the space's longest, {hi})" if hi != at else "")

    sampled = f" (estimated from {len(starts)} of them)" if len(starts) < n else ""
    notes = []
    lost = sum(s >= at for s in starts)
    if lost:
        what = ("trials at that length fail" if lost == len(starts) else
                "training leaves them out" if role == "training" else "the evaluation leaves them out")
        notes.append(f"{count(lost)} of {n} examples of {data_file}{sampled} keep no completion token"
                     f"{counted(lost, sum(s >= hi for s in starts))}: the prompt fills it and sequences are cut on the "
                     f"right; {what}")
    cut_at = [k for k, s in zip(lengths, starts) if s < at < k]
    cut_hi = [k for k, s in zip(lengths, starts) if s < hi < k]
    if cut_at or cut_hi:
        longest_cut = max(cut_at + cut_hi)
        notes.append(f"{count(len(cut_at))} of {n} examples of {data_file}{sampled} are cut inside their completion"
                     f"{counted(len(cut_at), len(cut_hi))}; the longest of them has {longest_cut} tokens: "
                     f"{'they are trained' if role == 'training' else 'they are scored'} without their end and the EOS token")
    merged = merged_prompts(model_path, data_file)
    if merged:
        notes.append(f"{count(merged)} of {n} examples of {data_file}{sampled} have a prompt whose last tokens change "
                     "when the completion is appended (a prompt that ends in a space?): trained on the joined tokens, "
                     "the model meets a prompt at inference that ends otherwise; end the prompt before the space and "
                     "start the completion with it")
    context = _context_length(model_path)
    past = [k for k in lengths if min(k, hi) > context] if context else []
    if past:
        notes.append(f"{count(len(past))} of {n} examples of {data_file}{sampled} are longer than the model's context "
                     f"({context} tokens, its max_position_embeddings) and max_seq_length {hi} keeps them whole: "
                     f"positions past {context} are ones the model was never trained on; a max_seq_length of at most "
                     f"{context} keeps to them")
    return notes


def _context_length(model_path: str) -> int | None:
    """The model's max_position_embeddings (its config.json), or None."""
    import json

    try:
        value = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def data_lengths(model_path: str, data_file: str | os.PathLike) -> list[int]:
    """Token count of every example of ``data_file`` (untruncated): ``data_profile``'s first list."""
    return data_profile(model_path, data_file)[0]


def batch_shape(lengths: list[int], batch_size: int, max_seq_length: int, strategy: str = "random") -> tuple[int, int]:
    """(batch, sequence) of the largest padded batch moopt.train.data.batch_order can build from examples
    of these lengths after truncation to ``max_seq_length`` (collate pads to the batch's longest).

    random and length_grouped: any examples can share a batch, so the worst is a full batch holding the
    longest example. sequential: the file-order batches themselves, the one with the most padded tokens.
    """
    cut = [min(n, max_seq_length) for n in lengths] or [max_seq_length]
    b = min(batch_size, len(cut))
    if strategy != "sequential":
        return b, max(cut)
    batches = [cut[i:i + batch_size] for i in range(0, len(cut), batch_size)]
    worst = max(batches, key=lambda x: len(x) * max(x))
    return len(worst), max(worst)


def gib_pair(a: float, b: float) -> tuple[str, str]:
    """Two sizes in GiB with 2 decimals, or as many more (up to 4) as the budget ``b`` has, or as it takes for them to
    read apart:
    "estimate 1.0001 GiB > budget 1.0000 GiB", not "1.00 > 1.00" (up to 6: a few KiB)."""
    d = 2
    while d < 4 and float(f"{b:.{d}f}") != b:  # the budget as typed (0.505, not 0.51), to 4 decimals
        d += 1
    while d < 6 and f"{a:.{d}f}" == f"{b:.{d}f}" and a != b:
        d += 1
    return f"{a:.{d}f}", f"{b:.{d}f}"


def compared(what: str, value: float, sign: str, rel: float, budget: float, margin: str = "") -> str:
    """``what`` at ``value`` GiB, moved by ``rel`` (its error band or spread, ``sign`` + or -), against the
    budget, with the value the comparison is made on: "probe measured 0.973 GiB + 3% run-to-run spread =
    1.0021 GiB > budget 1.0000 GiB", where "0.97 GiB + 3% > 1.00" would not add up to the reader."""
    moved = value * (1 + rel) if sign == "+" else value * (1 - rel)
    op = "<=" if moved <= budget else ">"
    if not round(rel * 100):
        a, b = gib_pair(value, budget)
        return f"{what} {a} GiB {op} budget {b} GiB"
    a, b = gib_pair(moved, budget)
    decimals = len(a.partition(".")[2])  # as many as gib_pair needed to read the two apart
    shown = float(f"{value:.{decimals}f}")
    for d in (0, 1, 2):  # the percent to as many decimals as it takes for the sum a reader checks to fall the same side
        pct = round(rel * 100, d)
        again = shown * (1 + pct / 100) if sign == "+" else shown * (1 - pct / 100)
        if (round(again, decimals) <= budget) == (moved <= budget):
            break
    return f"{what} {value:.{decimals}f} GiB {sign} {pct:.{d}f}%{margin} = {a} GiB {op} budget {b} GiB"


class MemoryGate:
    """Fit / infeasible for a memory budget of ``constraint_gb`` GiB per trial.

    On ``cuda`` the budget is the GPU memory the trial process holds at its peak (context included);
    on ``cpu`` it is the trial process's peak resident set (``ru_maxrss``), what the trial reports as
    ``peak_memory_gb``. With ``train_file`` the estimate and the probe take the largest padded batch
    the trial really builds from that file (:func:`batch_shape`), not ``batch_size × max_seq_length``.

    The gate knows the estimator's error (:meth:`band`): ``under`` is how far the true peak may lie
    above the (calibrated) estimate, ``over`` how far below. Contract of :meth:`decide`:

    - estimate × (1 − over) > budget: "infeasible", no probe;
    - estimate × (1 + under) ≤ budget: "fit", no probe, except on ``cuda`` before the first probe of
      this (model, quantization, kernels): that one is probed before any is trained on trust (unless
      ``probe_first`` is False: the study's implicit limit, the GPU's own memory, where an OOM costs
      only that trial and a probe per key would cost every study a model load);
    - in between: the probe decides (measured × (1 + spread) ≤ budget: "fit", the spread being a measured
      peak's run-to-run spread and a trial's excess over its probe, memory.measured_spread: 5% on cpu, 3% on
      cuda, wider for a key where a trial went further above its probe); its pair is stored and the calibration
      refitted. A configuration already measured is answered from the cache, never probed twice. A
      probe that OOMs means "infeasible"; one that fails otherwise falls back to the estimate with the
      band (estimate × (1 + under) ≤ budget: "fit") and is not cached. On this machine's GPUs
      (``probe_device``) a probe runs on a GPU that has the budget's room beside the study's running
      trials; while none has, "wait" (nothing probed, nothing cached: ask again when a trial ends). A probe
      that ran out of memory beside trials (``probe_company``) is cached as shared: "infeasible" now, probed
      again on a GPU no trial is on when proposed again.

    Uncalibrated, the band is the worst error measured each way for this device and quantization:
    ``under`` (memory.under_prior: ESTIMATE_UNDER_PRIOR, on cpu plus the runtime's spread between machines
    relative to the estimate) and ``over`` (memory.over_prior: ESTIMATE_OVER_PRIOR, likewise), so a
    configuration estimated just over the budget is probed, not ruled out untrained. Each measurement (probe, or a trained
    trial through :meth:`observe`) narrows it: ``under`` = max(MIN_ERROR_BAND, the worst residual of
    the calibrated estimate on the measured pairs) + prior / sqrt(1 + n) + spread / (1 + n) (at most
    the uncalibrated band unless a measurement was further off), ``over`` likewise from the
    residuals the other way. A trial that runs out of memory anyway (:meth:`observe` with ``oom``)
    is cached as infeasible, and its peak at the failure, a lower bound of what it needs, lifts the
    calibration so that the estimate of that configuration is at least that peak.
    """

    def __init__(self, model_path: str | os.PathLike, device: str, kernels: str, constraint_gb: float,
                 cache_path: str | os.PathLike | None = None, margin: float | None = None, steps: int = 3,
                 threads: int = 0, timeout_s: float = 600, train_file: str | os.PathLike | None = None,
                 probe_first: bool = True, budget_note: str | None = None, runner: Callable | None = None,
                 probe_device: Callable[..., str | None] | None = None,
                 probe_company: Callable[[str], list[int]] | None = None, seed: int = 42, runtime: str = ""):
        from moopt.memory.estimate import load_model_config

        problems = []
        if device not in ("cpu", "cuda"):
            problems.append(f"device: must be 'cpu' or 'cuda', got {device!r}")
        if kernels not in ("auto", "torch", "triton"):
            problems.append(f"kernels: must be one of ['auto', 'torch', 'triton'], got {kernels!r}")
        if not constraint_gb > 0:
            problems.append(f"constraint_gb: must be > 0, got {constraint_gb!r}")
        if margin is not None and not 0 <= margin < 1:
            problems.append(f"margin: must be in [0, 1), got {margin!r}")
        if problems:
            raise ConfigError("MemoryGate: " + "; ".join(problems))
        self.model_path, self.device, self.kernels = str(model_path), device, kernels
        self.constraint_gb = float(constraint_gb)
        self.margin = margin  # None: the band comes from the estimator's measured error (band())
        self.steps, self.threads, self.timeout_s = steps, threads, timeout_s
        self.seed = seed  # the study's: the trials' data order, so the shapes of their batches (varied_shapes)
        self.train_file = str(train_file) if train_file else None
        self.probe_first = probe_first  # on cuda, probe the first configuration of each key before trusting any
        self.budget_note = budget_note  # where the budget comes from, said in each reason ("95% of the largest GPU's ...")
        # where a probe runs: here, or (Ray) ``runner(fn, *args, num_gpus=, num_cpus=, **kwargs)`` on a node of the
        # cluster where trials run, which this machine (a head node without GPUs) may not be
        self.runner = runner
        # on GPUs: ``probe_device(budget)``, the GPU a probe runs on now (its CUDA_VISIBLE_DEVICES; "" with Ray, which
        # picks it), or None while the study's trials leave none the room (DevicePlacer.probe_device, RayExecutor.probe_room)
        self.probe_device = probe_device
        # ``probe_company(gpu)``: the study's trials on that GPU (DevicePlacer.on). A probe that ran out of memory
        # beside them may have lacked what they held: not ruled out, but probed alone (``probe_device(budget,
        # alone=True)``: a GPU no trial is on) when proposed again; and they learn they ran beside a probe
        self.probe_company = probe_company
        # what the trials run in beside the model, where it weighs in the peak: on a CPU a Ray worker process holds
        # ~75 MiB (15% of a tiny model's peak) more RSS than moopt's own; its measures are kept apart ("ray")
        self.runtime = runtime
        self.model_config = load_model_config(model_path)
        self.cache = CalibrationCache(cache_path or default_cache_path())
        # the estimate follows the path that runs ("auto": whichever runs on the device): with dropout the torch
        # path keeps X̂ and a bool mask where Triton keeps X and a seed (moopt.memory.estimate counts each)
        from moopt_kernels import resolve_backend

        self.estimate_kernels = resolve_backend(kernels, device) if kernels != "triton" else "triton"

    def key(self, trial: TrialConfig) -> str:
        from moopt.memory.estimate import calibration_key

        key = calibration_key(self.model_config, trial, self.device, self.estimate_kernels)
        return f"{key}|{self.runtime}" if self.runtime and self.device == "cpu" else key

    def shape(self, trial: TrialConfig) -> tuple[int, int]:
        """(batch, sequence) of the largest batch the trial builds: from ``train_file`` when the gate
        has one, else ``batch_size × max_seq_length``."""
        b, s = trial.training.batch_size, trial.data.max_seq_length
        if not self.train_file:
            return b, s
        return batch_shape(self._trial_lengths(trial), b, s, trial.data.sampling_strategy)

    def _trial_lengths(self, trial: TrialConfig) -> list[int]:
        """Token count of each example the trial trains on, in file order: cut to max_seq_length, and without
        those whose prompt fills it, which the trial leaves out (moopt.train.data.tokenize_file)."""
        s = trial.data.max_seq_length
        lengths, starts = data_profile(self.model_path, self.train_file)
        return [min(n, s) for n, first in zip(lengths, starts) if first < s]

    def varied_shapes(self, trial: TrialConfig, main: tuple[int, int]) -> list[tuple[int, int]] | None:
        """The other (rows, tokens) shapes of the micro-batches the trial will build (moopt.train.data.batch_plan
        with the study's seed, packing included), the largest first, at most VARIED_STEPS: what its probe trains on
        after ``main``. On a CPU each new shape grows the peak RSS (per-shape kernels, the heap), so the probe's
        made-up shorter batches measured 4-8% above trials that met only two or three shapes. None without a
        train file (the probe makes up shorter batches)."""
        if not self.train_file:
            return None
        from moopt.train.data import batch_plan, plan_shape
        from moopt.train.probe import VARIED_STEPS

        lengths = self._trial_lengths(trial)
        if not lengths:
            return None
        tc, data = trial.training, trial.data
        plan = batch_plan(lengths, tc.batch_size, tc.num_train_epochs, data.sampling_strategy, self.seed,
                          data.max_seq_length if data.packing else None)
        shapes = {plan_shape(lengths, idx, rows) for _, idx, rows in plan} - {tuple(main)}
        return sorted(shapes, key=lambda x: (-x[0] * x[1], -x[1]))[:VARIED_STEPS]

    def estimate(self, trial: TrialConfig, calibrated: bool = True):
        """The trial's MemoryEstimate at its data's largest batch (:meth:`shape`); calibrated with this
        key's fitted calibration unless ``calibrated`` is False."""
        from moopt.memory.estimate import estimate_peak

        cal = self.cache.entry(self.key(trial)).get("calibration") if calibrated else None
        return estimate_peak(self.model_config, trial, device=self.device, kernels=self.estimate_kernels,
                             calibration=cal or None, batch_shape=self.shape(trial))

    def peak_shape(self, trial: TrialConfig) -> tuple[int, int]:
        """The (batch, sequence) step the estimate peaks at, what a probe measures: :meth:`shape`, except
        on a CPU in bf16 when the trial's batches of up to EAGER_MAX_TOKENS tokens run eager attention
        and that shorter step holds more (moopt.memory.estimate.estimate_peak)."""
        return self.estimate(trial, calibrated=False).shape

    def estimate_bytes(self, trial: TrialConfig, calibrated: bool = True) -> int:
        return self.estimate(trial, calibrated).total_bytes

    def band(self, trial: TrialConfig) -> tuple[float, float]:
        """(under, over): relative error band of the calibrated estimate for this trial's key."""
        from moopt.memory.estimate import MIN_ERROR_BAND, over_prior, under_prior

        if self.margin is not None:  # a fixed band, as asked
            return self.margin, self.margin
        raw = self.estimate_bytes(trial, calibrated=False)
        entry = self.cache.entry(self.key(trial))
        pairs = entry.get("pairs") or []
        # the runtime's spread between machines (cpu) counts in full until this machine has measured the
        # key, then fades as measurements accumulate (error_band)
        prior = under_prior(self.device, trial.model.quantization)
        spread = under_prior(self.device, trial.model.quantization, raw) - prior
        return error_band(pairs, entry.get("calibration"), prior, MIN_ERROR_BAND, estimate_bytes=raw, spread=spread,
                          prior_over=over_prior(self.device, trial.model.quantization, raw))

    def decide(self, trial: TrialConfig, announce=None) -> GateDecision:
        """Fit or infeasible, and why. ``announce(shape)`` is called before a probe runs (it takes
        seconds: the caller can say so)."""
        key = self.key(trial)
        shape = self.shape(trial)
        fp = memory_fingerprint(trial, shape)
        entry = self.cache.entry(key)
        budget = self.constraint_gb
        est = self.estimate(trial)
        predicted = est.total_bytes / GIB
        under, over = self.band(trial)
        shown = f"{shape[0]} x {shape[1]} tokens"
        if shape != (trial.training.batch_size, trial.data.max_seq_length):
            shown += f" (longest batch of the data; max_seq_length {trial.data.max_seq_length})"

        company: tuple[int, ...] = ()

        def decision(verdict, measured, probed, reason, shared_oom=False):
            note = f"; budget: {self.budget_note}" if self.budget_note else ""
            return GateDecision(verdict, predicted, measured, probed, f"{reason}; shape {shown}{note}", shape, (under, over),
                                company, shared_oom)

        cached = (entry.get("probes") or {}).get(fp)
        alone = bool(cached and cached.get("shared"))  # it ran out of memory beside other trials: probe it alone
        # a probe held to a cap below this budget ran out of memory at the cap: that says nothing about this budget
        stale = bool(cached and cached.get("oom") and (cached.get("cap_bytes") or budget * GIB) < budget * GIB)
        reprobe = alone or stale  # what the cache holds does not decide: measure again
        if cached is not None and not reprobe:
            if cached.get("oom"):
                at = cached.get("measured_bytes")
                held = " (its probe's cap)" if cached.get("cap_bytes") else ""
                return decision("infeasible", at / GIB if at else None, False,
                                "ran out of memory earlier" + (f" at {at / GIB:.2f} GiB{held}" if at else ""))
            return self._on_measurement(decision, entry, cached["measured_bytes"] / GIB, False, "measured earlier")
        if predicted * (1 - over) > budget:
            return decision("infeasible", None, False, compared("estimate", predicted, "-", over, budget))
        calibrated = bool(entry.get("pairs"))
        if predicted * (1 + under) <= budget and not reprobe and (self.device != "cuda" or calibrated or not self.probe_first):
            return decision("fit", None, False, compared("estimate", predicted, "+", under, budget))

        # -- within the error band, or the first of its kind on CUDA: measure ------------------------
        where = None
        if self.device == "cuda" and self.probe_device is not None:
            # a probe beside the study's running trials could run out of memory that they hold, and an OOM rules the
            # configuration out for good: it waits for a GPU with the budget's room
            where = self.probe_device(budget, alone=True) if alone else self.probe_device(budget)
            if where is None:
                return decision("wait", None, False, "its probe waits for a GPU no trial is on (it ran out of memory "
                                "beside others)" if alone else f"its probe waits for a GPU with {budget:.2f} GiB free of trials")
            if where and self.probe_company is not None:
                company = tuple(self.probe_company(where))  # the probe blocks the study: none start or end meanwhile
        probe_shape = est.shape  # the step the estimate peaks at (calibration scales, it does not move it)
        if probe_shape != shape:
            shown += f"; probed at {probe_shape[0]} x {probe_shape[1]}, its peak (eager attention)"
        if announce is not None:
            announce(probe_shape)
        # on a GPU the probe's allocator is held to PROBE_CAP x the budget: beside running trials it cannot take what
        # they hold, and whatever it would reserve past that is infeasible anyway
        cap = int(budget * PROBE_CAP * GIB) if self.device == "cuda" else None
        probe = dict(device=self.device, kernels=self.kernels, steps=self.steps, timeout_s=self.timeout_s,
                     threads=self.threads, shape=probe_shape, cap_bytes=cap,
                     varied=self.varied_shapes(trial, probe_shape))
        if self.runner is None:
            res = probe_peak(self.model_path, trial, cuda_visible=where or None, **probe)
        else:
            try:
                res = self.runner(probe_peak, self.model_path, trial, num_gpus=int(self.device == "cuda"),
                                  num_cpus=max(1, self.threads), **probe)
            except Exception as e:  # the task itself failed (its node lost, the cluster shut down)
                first = (str(e).splitlines() or [""])[0][:300]
                res = ProbeResult(0, 0, 0, 0, 0, False, f"probe task failed: {type(e).__name__}: {first}", 0.0)
        raw = self.estimate_bytes(trial, calibrated=False)
        if cap and (res.capped or (res.ok and res.num_alloc_retries and res.max_reserved >= budget * GIB)):
            # it needs more than the cap (an OOM the cap refused), or the allocator squeezed it under the cap (freed its
            # cache and retried) above the budget: either way at least what it reached, kept as a lower bound that
            # lifts the calibration (not as a pair: a squeezed peak is below what it would hold unheld)
            at = cap if res.capped else res.peak_bytes
            self.cache.update(key, lambda e: add_oom(e, fp, raw, at, cap_bytes=cap))
            why = (f"probe ran out of memory at its cap of {cap / GIB:.2f} GiB ({PROBE_CAP:g} x the budget)" if res.capped
                   else f"probe measured at least {at / GIB:.2f} GiB, held under its cap of {cap / GIB:.2f} GiB")
            return decision("infeasible", at / GIB, True, f"{why}: needs more than the budget of {budget:.2f} GiB")
        if res.oom and company:
            self.cache.update(key, lambda e: add_oom(e, fp, None, 0, shared=True))
            return decision("infeasible", None, True, f"probe ran out of memory beside "
                            f"{numbered('trial', company)} on its GPU, whose memory it may have lacked ({res.error}): "
                            "not ruled out, proposed again it is probed alone first", shared_oom=True)
        if res.oom:
            self.cache.update(key, lambda e: add_oom(e, fp, None, 0))
            return decision("infeasible", None, True, f"probe ran out of memory: {res.error}")
        if res.error is not None:
            verdict = "fit" if predicted * (1 + under) <= budget else "infeasible"
            return decision(verdict, None, True, f"probe failed ({res.error}); decided on the estimate ± its error band")
        self.cache.update(key, lambda e: add_pair(e, fp, raw, res.peak_bytes, res.num_alloc_retries, res.seconds))
        return self._on_measurement(decision, entry, res.peak_bytes / GIB, True, "probe measured")

    def observe(self, trial: TrialConfig, peak_bytes: int, oom: bool = False, shared: bool = False,
                partial: bool = False) -> None:
        """A trained trial's measured peak (``peak_memory_gb``): a pair for the calibration; with
        ``oom`` the configuration is cached as infeasible and the calibration lifted so that its
        estimate is at least ``peak_bytes`` (the peak at the failure, a lower bound of its need).
        ``shared``: it ran out beside other trials on its GPU, whose memory may be what it lacked: the
        calibration is lifted as well, but the configuration is not ruled out; it is probed alone first. A
        shared OOM with no peak (the worker killed, as the kernel's OOM killer does) is kept too, so that it is
        probed alone; an unshared one is not cached: a SIGKILL alone does not prove the configuration too large.
        ``partial``: the trial stopped before its last step; its peak is a lower bound (calibration.add_pair)."""
        if not peak_bytes or peak_bytes <= 0:
            if not (oom and shared):
                return
            peak_bytes = 0
        try:
            key, shape = self.key(trial), self.shape(trial)
            fp = memory_fingerprint(trial, shape)
            raw = self.estimate_bytes(trial, calibrated=False)
            if oom:
                self.cache.update(key, lambda e: add_oom(e, fp, raw, int(peak_bytes), shared))
            else:
                self.cache.update(key, lambda e: add_pair(e, fp, raw, int(peak_bytes), 0, 0.0, source="trial",
                                                          partial=partial))
        except (OSError, ValueError, ConfigError) as e:  # a study goes on without this calibration point
            print(f"memory gate: could not record trial peak ({e})", file=sys.stderr)

    def _on_measurement(self, decision, entry: dict, measured: float, probed: bool, source: str) -> GateDecision:
        # A measured peak is one run's: the next run of the same configuration (the trial, or the
        # probe again) spreads around it, and on a CPU a trial goes a little above its probe, so a
        # measurement just under the budget is not proof that the trial stays under it.
        from moopt.memory.estimate import measured_spread

        spread = measured_spread(self.device, entry.get("probe_excess") or [])  # a probe does not change it
        fits = measured * (1 + spread) <= self.constraint_gb
        return decision("fit" if fits else "infeasible", measured, probed,
                        compared(source, measured, "+", spread, self.constraint_gb,
                                 " run-to-run spread"))


# -- before the weights: can any configuration of the space fit? --------------------------------------

MEMORY_PARAMS = ("training.batch_size", "model.quantization", "model.gradient_checkpointing", "lora.r",
                 "lora.target_modules", "model.dtype")


def smallest_peak(model_config, space, device: str, kernels: str) -> tuple[float, TrialConfig]:
    """``(GiB, configuration)``: the smallest analytic peak over the space's memory choices (each combination of
    its quantisation, checkpointing, rank, targets and dtype values, at its smallest batch) at a sequence of one
    token, so before any activation: a lower bound of what any of its configurations holds."""
    import itertools

    from moopt.memory.estimate import estimate_peak

    base = space.default_in_space()
    choices = []
    for p in space.params:
        if p.name in MEMORY_PARAMS:
            values = list(p.values) if p.type == "categorical" else [p.decode(p.encode(p.low))]
            if p.name == "training.batch_size":  # memory grows with the batch: its smallest only
                values = [min(values)]
            choices.append([(p.name, v) for v in values])
    best = None
    for combo in itertools.product(*choices):
        trial = TrialConfig.from_flat(dict(combo), base=base)
        gib = estimate_peak(model_config, trial, device=device, kernels=kernels,
                            batch_shape=(int(trial.training.batch_size), 1)).total_bytes / GIB
        if best is None or gib < best[0]:
            best = (gib, trial)
    return best
