"""Measure a trial's peak memory with a few real training steps, and gate trials on a memory budget.

``probe_peak`` runs ``python -m moopt.probe`` in a fresh subprocess: the child loads exactly the
trial's setup through ``moopt.trial`` (same loader, dtype, gradient checkpointing, moopt LoRA with the
trial's r/targets/dropout, AdamW, ``causal_lm_loss``), trains ``steps`` full steps on a worst-case
batch (``batch_size × max_seq_length`` tokens, every position labelled) and reports its peak:

- ``cpu``: the child's peak resident set (``ru_maxrss``), the figure ``moopt.trial.peak_memory_gb``
  reports for a CPU trial, so measured and reported agree.
- ``cuda``: ``max_memory_reserved + (NVML per-process used − memory_reserved())`` (caching-allocator
  peak plus CUDA context), and ``num_alloc_retries`` (> 0: the step ran near the limit).

Protocol: one JSON spec on the child's stdin, one JSON result line on its stdout; everything the
libraries print goes to stderr. An out-of-memory in the child ends the child (a caught OOM's
traceback keeps tensors alive); the parent never raises for a failed probe: the result says
``oom=True`` or carries ``error``.

``MemoryGate`` decides fit / infeasible for a memory budget: the analytic estimate when it is clearly
on one side of the budget, a probe when it is borderline; each probe's (estimate, measured) pair goes
into a per-machine calibration cache so later estimates for that model/device/kernels improve.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from moopt.config import ConfigError, TrialConfig
from moopt.rss import peak_rss_bytes

GIB = 1024**3
PROBE_VERSION = 1  # bump when the child's recipe changes: cached probes of older versions are ignored


@dataclass
class ProbeResult:
    peak_bytes: int  # cpu: peak RSS of the child; cuda: max_reserved + context_bytes
    max_allocated: int  # cuda: torch.cuda.max_memory_allocated(); cpu: 0 (no allocator statistics)
    max_reserved: int  # cuda: torch.cuda.max_memory_reserved(); cpu: 0
    num_alloc_retries: int  # cuda: memory_stats()["num_alloc_retries"]; > 0 means near the limit
    context_bytes: int  # cuda: NVML used − memory_reserved() (CUDA context); cpu: RSS after imports
    oom: bool
    error: str | None
    seconds: float  # wall time of the whole probe, child start to result

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / GIB

    @property
    def ok(self) -> bool:
        return not self.oom and self.error is None


def _failed(error: str, oom: bool, seconds: float, peak: int = 0) -> ProbeResult:
    return ProbeResult(peak_bytes=peak, max_allocated=0, max_reserved=0, num_alloc_retries=0,
                       context_bytes=0, oom=oom, error=error, seconds=seconds)


def probe_peak(
    model_path: str,
    trial: TrialConfig,
    device: str = "cpu",
    kernels: str = "auto",
    steps: int = 3,
    timeout_s: float = 600,
    threads: int = 0,
    seed: int = 0,
    shape: tuple[int, int] | None = None,
) -> ProbeResult:
    """Peak memory of ``steps`` training steps of ``trial`` on ``model_path`` in a fresh subprocess.

    Never raises for a failing child: an out-of-memory gives ``oom=True`` (CUDA OOM, the CPU allocator
    refusing, or the child killed by SIGKILL, which on Linux is the OOM killer's signal); any other
    failure or the timeout gives ``error``. ``threads``: torch intra-op threads as the trial's slot
    would set them (0 = torch's default); on CPU they change the RSS a little (per-thread arenas).
    ``shape``: (batch, sequence) of the batch to train on, e.g. the longest the trial's data builds
    (:func:`data_batch_shape`); default ``batch_size × max_seq_length``.
    """
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"probe_peak: device must be 'cpu' or 'cuda', got {device!r}")
    if kernels not in ("auto", "torch", "triton"):
        raise ConfigError(f"probe_peak: kernels must be one of ['auto', 'torch', 'triton'], got {kernels!r}")
    if steps < 2:
        raise ConfigError(f"probe_peak: steps must be >= 2 (AdamW allocates its states in the first step), got {steps}")
    baseline = None
    if device == "cuda":
        from moopt.nvml import device_used_bytes, nvml_index

        try:
            baseline = device_used_bytes(nvml_index())  # for the device-level fallback when NVML lacks per-process data
        except Exception:
            baseline = None
    spec = {"model_path": str(model_path), "trial": trial.to_dict(), "device": device, "kernels": kernels,
            "steps": int(steps), "threads": int(threads), "seed": int(seed), "nvml_baseline": baseline,
            "shape": [int(x) for x in shape] if shape else None}
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONSAFEPATH"] = "1"  # no cwd on sys.path: see LocalExecutor.submit
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # as LocalExecutor does for a CPU slot
    t0 = time.time()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "moopt.probe"], input=json.dumps(spec), capture_output=True, text=True,
            env=env, timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:  # subprocess.run kills the child before raising
        return _failed(f"probe timed out after {timeout_s:.0f} s", oom=False, seconds=time.time() - t0)
    seconds = time.time() - t0
    result = None
    for line in reversed(proc.stdout.splitlines()):
        try:
            result = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    if isinstance(result, dict) and "peak_bytes" in result:
        fields = {f.name for f in dataclasses.fields(ProbeResult)}
        return ProbeResult(**{k: v for k, v in result.items() if k in fields} | {"seconds": seconds})
    tail = " | ".join(proc.stderr.strip().splitlines()[-3:])[-500:]
    if proc.returncode == -9:
        return _failed(f"probe killed by SIGKILL (likely out of memory); {tail}", oom=True, seconds=seconds)
    return _failed(f"probe exited with code {proc.returncode} without a result: {tail}", oom=False, seconds=seconds)


def estimate_vs_probe(model_path: str, trial: TrialConfig, device: str = "cuda", kernels: str = "auto",
                      steps: int = 3, shape: tuple[int, int] | None = None, loss: str = "chunked") -> dict:
    """One estimate-vs-measurement comparison, for scripts (the GPU check): the analytic estimate of
    ``trial`` at ``shape`` (total, and the allocated / reserved views) next to a probe's measurement
    (cuda: max_reserved + NVML context; cpu: peak RSS). ``error_pct`` = (estimate − measured) / measured."""
    from moopt_kernels import resolve_backend

    from moopt.memory import estimate_peak, load_model_config

    est_kernels = resolve_backend(kernels, device) if kernels != "triton" else "triton"
    est = estimate_peak(load_model_config(model_path), trial, device=device, kernels=est_kernels, loss=loss,
                        batch_shape=shape)
    res = probe_peak(model_path, trial, device=device, kernels=kernels, steps=steps, shape=shape)
    out = {"shape": list(est.shape), "quantization": trial.model.quantization, "device": device,
           "estimate_bytes": est.total_bytes, "estimate_allocated_bytes": est.allocated_bytes,
           "estimate_reserved_bytes": est.reserved_bytes, "breakdown": est.breakdown,
           **{k: getattr(res, k) for k in ("peak_bytes", "max_allocated", "max_reserved", "context_bytes",
                                           "num_alloc_retries", "oom", "error", "seconds")}}
    out["error_pct"] = (est.total_bytes - res.peak_bytes) / res.peak_bytes * 100 if res.ok and res.peak_bytes else None
    return out


# -- the child ---------------------------------------------------------------------------------------


def _is_oom(e: BaseException) -> bool:
    import torch

    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def worst_case_batch(b: int, s: int, vocab: int, device, seed: int) -> dict:
    """``b × s`` random tokens, every position labelled. With b > 1 the last token of the last row is
    padding: a real padded batch makes HF build a 4D mask (b·s² bytes) and repeat K/V for SDPA, which
    an all-ones mask would skip, so the probe pays what the trial's worst batch pays."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, s), generator=g)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    if b > 1:
        mask[-1, -1] = 0
        labels[-1, -1] = -100  # moopt.data.IGNORE
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _child_run(spec: dict) -> dict:
    """Load the trial's setup and train ``steps`` steps; the measured figures (no exception handling)."""

    import torch

    from moopt.lora import attach_lora, lora_parameters
    from moopt.trial import causal_lm_loss, load_model_and_tokenizer, pick_device

    cfg = TrialConfig.from_dict(spec["trial"])
    tc = cfg.training
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = pick_device(spec["device"])
    torch.manual_seed(int(spec.get("seed", 0)))
    rss_after_imports = peak_rss_bytes()

    # -- load model, attach LoRA: the trial's own steps (moopt/trial.py run_trial) -----------------
    model, _tok = load_model_and_tokenizer(spec["model_path"], cfg, device)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    info = attach_lora(model, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                       target_modules=cfg.lora.target_modules, backend=spec["kernels"])
    params = lora_parameters(model)
    opt = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.weight_decay,
                            betas=(tc.adam_beta1, tc.adam_beta2), eps=tc.adam_epsilon)
    model.train()

    # -- train on the worst-case batch ------------------------------------------------------------
    b, s = spec.get("shape") or (tc.batch_size, cfg.data.max_seq_length)
    batch = worst_case_batch(int(b), int(s), model.config.vocab_size, device, int(spec.get("seed", 0)))
    n_labels = int((batch["labels"][:, 1:] != -100).sum())
    for _ in range(int(spec["steps"])):
        loss_sum, _, _ = causal_lm_loss(model, batch, info["backend"])
        (loss_sum / n_labels).backward()
        del loss_sum
        if tc.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        opt.step()  # AdamW allocates its two fp32 states here, on the first step
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()

    # -- measure ------------------------------------------------------------------------------------
    out = {"max_allocated": 0, "max_reserved": 0, "num_alloc_retries": 0, "context_bytes": 0}
    if device.type == "cuda":
        from moopt.nvml import nvml_index, process_used_bytes

        reserved_now = torch.cuda.memory_reserved()
        used = None
        try:
            used = process_used_bytes(os.getpid(), nvml_index(), spec.get("nvml_baseline"))
        except Exception:
            used = None
        ctx = max(0, used - reserved_now) if used else 0
        out.update(max_allocated=torch.cuda.max_memory_allocated(), max_reserved=torch.cuda.max_memory_reserved(),
                   num_alloc_retries=int(torch.cuda.memory_stats().get("num_alloc_retries", 0)), context_bytes=ctx)
        out["peak_bytes"] = out["max_reserved"] + ctx
    else:
        out["context_bytes"] = rss_after_imports
        out["peak_bytes"] = peak_rss_bytes()
    out["backend"] = info["backend"]
    return out


def main() -> int:
    """``python -m moopt.probe``: spec on stdin, one result line on stdout, then exit."""
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library prints go to stderr
    spec = json.loads(sys.stdin.read())
    failure = None
    try:
        result = _child_run(spec)
        result.update(oom=False, error=None)
    except BaseException as e:  # noqa: BLE001 - the parent gets a result line for every failure
        oom = _is_oom(e)
        failure = {"oom": oom, "error": f"{type(e).__name__}: {e}".splitlines()[0][:500]}
        import traceback

        traceback.print_exc(file=sys.stderr)
    if failure is not None:
        # Outside the except block the traceback (and the tensors its frames hold) is gone; we exit
        # right away anyway, reporting what the allocator saw up to the failure.

        peak = 0
        if spec.get("device") == "cuda":
            try:
                import torch

                peak = torch.cuda.max_memory_reserved()
            except Exception:
                peak = 0
        else:
            peak = peak_rss_bytes()
        result = {"peak_bytes": peak, "max_allocated": 0, "max_reserved": 0, "num_alloc_retries": 0,
                  "context_bytes": 0, **failure}
    proto.write(json.dumps(result) + "\n")
    proto.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if failure is None else 3)  # no interpreter teardown: nothing to free, nothing to wait for


# -- the gate -----------------------------------------------------------------------------------------


def default_cache_path() -> Path:
    """``$MOOPT_CACHE/calibration.json``, else ``~/.cache/moopt/calibration.json``."""
    root = os.environ.get("MOOPT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "moopt") / "calibration.json"


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


@dataclass(frozen=True)
class GateDecision:
    verdict: str  # "fit" | "infeasible"
    predicted_gb: float  # analytic estimate (calibrated where the cache has a calibration), GiB
    measured_gb: float | None  # probe measurement (this call's or a cached one), GiB
    probed: bool  # True when this call ran a probe subprocess
    reason: str
    shape: tuple[int, int] | None = None  # (batch, sequence) estimated and, when probed, probed
    band: tuple[float, float] | None = None  # (under, over): the estimate's error band used


# -- the data's real batch shape ---------------------------------------------------------------------

_LENGTHS: dict[tuple, list[int]] = {}


def data_lengths(model_path: str, data_file: str | os.PathLike) -> list[int]:
    """Token count of every example of ``data_file`` (untruncated), tokenised as a trial does
    (moopt.data.tokenize_record with the model's tokenizer); cached per (file, size, mtime, tokenizer)."""
    path = Path(data_file)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, str(model_path))
    if key not in _LENGTHS:
        from transformers import AutoTokenizer

        from moopt.data import read_jsonl, tokenize_record

        tok = AutoTokenizer.from_pretrained(str(model_path))
        _LENGTHS[key] = [len(tokenize_record(rec, tok).input_ids) for rec in read_jsonl(path)]
    return _LENGTHS[key]


def batch_shape(lengths: list[int], batch_size: int, max_seq_length: int, strategy: str = "random") -> tuple[int, int]:
    """(batch, sequence) of the largest padded batch moopt.data.batch_order can build from examples
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


class CalibrationCache:
    """JSON file ``{"version": 1, "entries": {calibration_key: {"pairs": [[estimate, measured], ...],
    "calibration": {...}, "probes": {fingerprint: {...}}}}}``.

    Writes are atomic (temp file in the same folder + ``os.replace``) and read-modify-write under an
    ``flock`` on ``<file>.lock``, so concurrent gates (parallel studies on one machine) never lose a
    probe or leave a half-written file. A missing or unreadable file reads as empty.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()

    def read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"version": 1, "entries": {}}
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            return {"version": 1, "entries": {}}
        return data

    def entry(self, key: str) -> dict:
        return self.read()["entries"].get(key) or {}

    def update(self, key: str, fn) -> dict:
        """Apply ``fn(entry) -> entry`` to one key under the lock and write the file atomically."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(str(self.path) + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            data["entries"][key] = fn(dict(data["entries"].get(key) or {}))
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
      this (model, quantization, kernels): that one is probed before any is trained on trust;
    - in between: the probe decides (measured ≤ budget: "fit"); its pair is stored and the calibration
      refitted. A configuration already measured is answered from the cache, never probed twice. A
      probe that OOMs means "infeasible"; one that fails otherwise falls back to the estimate with the
      band (estimate × (1 + under) ≤ budget: "fit") and is not cached.

    Uncalibrated, the band is one-sided: ``under`` = the worst under-estimate seen for this device and
    quantization (memory.ESTIMATE_UNDER_PRIOR), ``over`` = 0. Each measurement (probe, or a trained
    trial through :meth:`observe`) narrows it: ``under`` = max(MIN_ERROR_BAND, the worst residual of
    the calibrated estimate on the measured pairs) + prior / sqrt(1 + n) (at most the prior unless a
    measurement was further off), ``over`` likewise from the
    residuals the other way. A trial that runs out of memory anyway (:meth:`observe` with ``oom``)
    is cached as infeasible, and its peak at the failure, a lower bound of what it needs, lifts the
    calibration so that the estimate of that configuration is at least that peak.
    """

    def __init__(self, model_path: str | os.PathLike, device: str, kernels: str, constraint_gb: float,
                 cache_path: str | os.PathLike | None = None, margin: float | None = None, steps: int = 3,
                 threads: int = 0, timeout_s: float = 600, train_file: str | os.PathLike | None = None):
        from moopt.memory import load_model_config

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
        self.train_file = str(train_file) if train_file else None
        self.model_config = load_model_config(model_path)
        self.cache = CalibrationCache(cache_path or default_cache_path())
        # moopt's torch and Triton LoRA save the same tensors; "auto" is whichever runs on the device
        from moopt_kernels import resolve_backend

        self.estimate_kernels = resolve_backend(kernels, device) if kernels != "triton" else "triton"

    def key(self, trial: TrialConfig) -> str:
        from moopt.memory import calibration_key

        return calibration_key(self.model_config, trial, self.device, self.estimate_kernels)

    def shape(self, trial: TrialConfig) -> tuple[int, int]:
        """(batch, sequence) of the largest batch the trial builds: from ``train_file`` when the gate
        has one, else ``batch_size × max_seq_length``."""
        b, s = trial.training.batch_size, trial.data.max_seq_length
        if not self.train_file:
            return b, s
        lengths = data_lengths(self.model_path, self.train_file)
        return batch_shape(lengths, b, s, trial.data.sampling_strategy)

    def estimate_bytes(self, trial: TrialConfig, calibrated: bool = True) -> int:
        from moopt.memory import estimate_peak

        cal = self.cache.entry(self.key(trial)).get("calibration") if calibrated else None
        return estimate_peak(self.model_config, trial, device=self.device, kernels=self.estimate_kernels,
                             calibration=cal or None, batch_shape=self.shape(trial)).total_bytes

    def band(self, trial: TrialConfig) -> tuple[float, float]:
        """(under, over): relative error band of the calibrated estimate for this trial's key."""
        from moopt.memory import ESTIMATE_UNDER_PRIOR, MIN_ERROR_BAND

        if self.margin is not None:  # a fixed band, as asked
            return self.margin, self.margin
        prior = ESTIMATE_UNDER_PRIOR.get((self.device, trial.model.quantization), max(ESTIMATE_UNDER_PRIOR.values()))
        entry = self.cache.entry(self.key(trial))
        return error_band(entry.get("pairs") or [], entry.get("calibration"), prior, MIN_ERROR_BAND)

    def decide(self, trial: TrialConfig) -> GateDecision:
        key = self.key(trial)
        shape = self.shape(trial)
        fp = memory_fingerprint(trial, shape)
        entry = self.cache.entry(key)
        budget = self.constraint_gb
        predicted = self.estimate_bytes(trial) / GIB
        under, over = self.band(trial)
        shown = f"{shape[0]} x {shape[1]} tokens"
        if shape != (trial.training.batch_size, trial.data.max_seq_length):
            shown += f" (longest batch of the data; max_seq_length {trial.data.max_seq_length})"

        def decision(verdict, measured, probed, reason):
            return GateDecision(verdict, predicted, measured, probed, f"{reason}; shape {shown}", shape, (under, over))

        cached = (entry.get("probes") or {}).get(fp)
        if cached is not None:
            if cached.get("oom"):
                at = cached.get("measured_bytes")
                return decision("infeasible", at / GIB if at else None, False,
                                "ran out of memory earlier" + (f" at {at / GIB:.2f} GiB" if at else ""))
            return self._on_measurement(decision, cached["measured_bytes"] / GIB, False, "earlier measurement")
        if predicted * (1 - over) > budget:
            return decision("infeasible", None, False,
                            f"estimate {predicted:.2f} GiB - {over:.0%} > budget {budget:.2f} GiB")
        calibrated = bool(entry.get("pairs"))
        if predicted * (1 + under) <= budget and (self.device != "cuda" or calibrated):
            return decision("fit", None, False, f"estimate {predicted:.2f} GiB + {under:.0%} <= budget {budget:.2f} GiB")

        # -- within the error band, or the first of its kind on CUDA: measure ------------------------
        res = probe_peak(self.model_path, trial, device=self.device, kernels=self.kernels, steps=self.steps,
                         timeout_s=self.timeout_s, threads=self.threads, shape=shape)
        if res.oom:
            self.cache.update(key, lambda e: _add_oom(e, fp, None, 0))
            return decision("infeasible", None, True, f"probe ran out of memory: {res.error}")
        if res.error is not None:
            verdict = "fit" if predicted * (1 + under) <= budget else "infeasible"
            return decision(verdict, None, True, f"probe failed ({res.error}); decided on the estimate ± its error band")
        raw = self.estimate_bytes(trial, calibrated=False)
        self.cache.update(key, lambda e: _add_pair(e, fp, raw, res.peak_bytes, res.num_alloc_retries, res.seconds))
        return self._on_measurement(decision, res.peak_bytes / GIB, True, "probe")

    def observe(self, trial: TrialConfig, peak_bytes: int, oom: bool = False) -> None:
        """A trained trial's measured peak (``peak_memory_gb``): a pair for the calibration; with
        ``oom`` the configuration is cached as infeasible and the calibration lifted so that its
        estimate is at least ``peak_bytes`` (the peak at the failure, a lower bound of its need)."""
        if not peak_bytes or peak_bytes <= 0:
            return
        try:
            key, shape = self.key(trial), self.shape(trial)
            fp = memory_fingerprint(trial, shape)
            raw = self.estimate_bytes(trial, calibrated=False)
            if oom:
                self.cache.update(key, lambda e: _add_oom(e, fp, raw, int(peak_bytes)))
            else:
                self.cache.update(key, lambda e: _add_pair(e, fp, raw, int(peak_bytes), 0, 0.0, source="trial"))
        except (OSError, ValueError, ConfigError) as e:  # a study goes on without this calibration point
            print(f"memory gate: could not record trial peak ({e})", file=sys.stderr)

    def _on_measurement(self, decision, measured: float, probed: bool, source: str) -> GateDecision:
        fits = measured <= self.constraint_gb
        rel = "<=" if fits else ">"
        return decision("fit" if fits else "infeasible", measured, probed,
                        f"{source} measured {measured:.2f} GiB {rel} budget {self.constraint_gb:.2f} GiB")


def error_band(pairs: list, calibration: dict | None, prior_under: float, floor: float) -> tuple[float, float]:
    """(under, over) of the calibrated estimate: one-sided ``(prior_under, 0)`` with no pairs; else
    the worst residual each way of the calibrated estimate on the pairs (leave-one-out from 3 pairs
    on, so a pair does not vouch for itself), at least ``floor``, plus ``prior_under / sqrt(1 + n)`` on
    the under side, which fades as measurements accumulate; no wider than ``prior_under`` unless a
    measurement itself lay further above its estimate. The square root, not 1 / (1 + n): in
    benchmarks/bench_memory.py's decision simulation (32 CPU probes, budgets at measured × 0.9-1.1,
    leave-one-out) 1 / (1 + n) let 1.6% of the decisions wrongly fit, 1 / sqrt(1 + n) 0.8% (52% and
    55% probed); the one miss is a 4-bit configuration 13% over its raw estimate."""
    from moopt.memory import apply_calibration, fit_calibration

    pairs = [(int(e), int(m)) for e, m, *_ in pairs]
    n = len(pairs)
    if n == 0:
        return prior_under, 0.0
    resid = []
    for i, (e, m) in enumerate(pairs):
        if n >= 3:
            cal = fit_calibration([p for j, p in enumerate(pairs) if j != i])
        else:
            cal = calibration or fit_calibration(pairs)
        pred = apply_calibration(e, cal)
        resid.append((m - pred) / pred)
    under = max(floor, max(resid)) + prior_under / math.sqrt(1 + n)
    if max(resid) <= prior_under:  # measurements within the prior never widen the band beyond it
        under = min(under, prior_under)
    over = max(floor, -min(resid))
    return under, over


def _refit(entry: dict, probes: dict) -> dict:
    """Pairs and calibration from every measurement; OOM lower bounds lift the offset."""
    from moopt.memory import fit_calibration

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


def _add_pair(entry: dict, fp: str, raw_estimate: int, measured: int, retries: int, seconds: float,
              source: str = "probe") -> dict:
    """Store one (uncalibrated estimate, measured) pair and refit the key's calibration."""
    probes = dict(entry.get("probes") or {})
    probes[fp] = {"estimate_bytes": int(raw_estimate), "measured_bytes": int(measured), "source": source,
                  "num_alloc_retries": retries, "seconds": round(seconds, 2), "when": time.time()}
    return _refit(entry, probes)


def _add_oom(entry: dict, fp: str, raw_estimate: int | None, peak_at_failure: int) -> dict:
    probes = dict(entry.get("probes") or {})
    probes[fp] = {"oom": True, "estimate_bytes": raw_estimate, "measured_bytes": peak_at_failure or None,
                  "when": time.time()}
    return _refit(entry, probes)


if __name__ == "__main__":
    main()
