"""Measure a trial's peak memory with a few real training steps, in a subprocess.

``probe_peak`` runs ``python -m moopt.train.probe`` in a fresh subprocess: the child loads exactly the
trial's setup through ``moopt.train.recipe`` (same loader, dtype, gradient checkpointing, moopt LoRA with the
trial's r/targets/dropout, AdamW), trains ``steps`` steps of the trial's own step
(:func:`moopt.train.step.train_step`, gradient clipping included, no scheduler) on a worst-case batch
(``batch_size × max_seq_length`` tokens, every position labelled; with gradient accumulation, two
micro-batches a step, of different lengths where the trial's differ), then as a trial goes on:
``VARIED_STEPS`` steps on shorter batches and one evaluation of the worst-case batch (no grad), and
reports its peak with
:func:`moopt.memory.measure.measure_peak`, the measurement behind a trial's ``peak_memory_gb``, so
measured and reported agree:

- ``cpu``: the child's peak resident set (``VmHWM``).
- ``cuda``: ``max_memory_reserved + (NVML per-process used − memory_reserved())`` (caching-allocator
  peak plus CUDA context), and ``num_alloc_retries`` (> 0: the step ran near the limit).

Protocol: one JSON spec on the child's stdin, one JSON result line on its stdout; everything the
libraries print goes to stderr. An out-of-memory in the child ends the child (a caught OOM's
traceback keeps tensors alive); the parent never raises for a failed probe: the result says
``oom=True`` or carries ``error``.

:class:`moopt.study.gate.MemoryGate` decides with it which configurations are trained.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

from moopt.config import TrialConfig
from moopt.errors import ConfigError
from moopt.memory.measure import is_out_of_memory, measure_peak
from moopt.memory.rss import STEADY_HEAP_ENV, peak_rss_bytes, steady_heap_if_asked, trim_heap_if_steady
from moopt.train.worker import child_env

GIB = 1024**3


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
    attention: str | None = None  # the trial's attention implementation, which the probe ran too
    capped: bool = False  # cuda, an OOM: the probe's cap (``cap_bytes``) refused the allocation, not the GPU

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
    cuda_visible: str | None = None,
    cap_bytes: int | None = None,
    varied: list[tuple[int, int]] | None = None,
) -> ProbeResult:
    """Peak memory of ``steps`` training steps of ``trial`` on ``model_path`` in a fresh subprocess.

    Never raises for a failing child: an out-of-memory gives ``oom=True`` (CUDA OOM, the CPU allocator
    refusing, or the child killed by SIGKILL, which on Linux is the OOM killer's signal); any other
    failure or the timeout gives ``error``. ``threads``: torch intra-op threads as the trial's slot
    would set them (0 = torch's default); on CPU they change the RSS a little (per-thread arenas).
    ``shape``: (batch, sequence) of the batch to train on, e.g. the longest the trial's data builds
    (:func:`moopt.study.gate.batch_shape`); default ``batch_size × max_seq_length``. ``cuda_visible``: the
    GPU a cuda probe runs on (its ``CUDA_VISIBLE_DEVICES``, as a trial's slot sets it); None: this process's.
    ``cap_bytes`` (cuda): the most the probe's caching allocator may reserve
    (``torch.cuda.set_per_process_memory_fraction``), so that a probe beside running trials cannot take the memory
    they hold; an OOM that the cap, not the GPU, refused comes back with ``capped=True``: it needs more than the cap.
    ``varied``: the (batch, sequence) shapes to train on after ``shape``, one step each (the other shapes the trial's
    batches have, moopt.study.gate.MemoryGate.varied_shapes); None: VARIED_STEPS made-up shorter batches.
    """
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"probe_peak: device must be 'cpu' or 'cuda', got {device!r}")
    if kernels not in ("auto", "torch", "triton"):
        raise ConfigError(f"probe_peak: kernels must be one of ['auto', 'torch', 'triton'], got {kernels!r}")
    if steps < 2:
        raise ConfigError(f"probe_peak: steps must be >= 2 (AdamW allocates its states in the first step), got {steps}")
    baseline = None
    if device == "cuda":
        from moopt.memory.nvml import device_used_bytes, nvml_index

        try:
            baseline = device_used_bytes(nvml_index(cuda_visible or None))  # for the device-level fallback when NVML lacks per-process data
        except Exception:
            baseline = None
    spec = {"model_path": str(model_path), "trial": trial.to_dict(), "device": device, "kernels": kernels,
            "steps": int(steps), "threads": int(threads), "seed": int(seed), "nvml_baseline": baseline,
            "shape": [int(x) for x in shape] if shape else None,
            "cap_bytes": int(cap_bytes) if cap_bytes and device == "cuda" else None,
            "varied": [[int(x) for x in v] for v in varied] if varied is not None else None}
    env = child_env(threads, "" if device == "cpu" else cuda_visible)  # a CPU probe hides GPUs, as a CPU slot does
    if device == "cpu":
        env[STEADY_HEAP_ENV] = "1"  # as the trials it stands for (moopt.memory.rss.steady_heap)
    t0 = time.time()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "moopt.train.probe"], input=json.dumps(spec), capture_output=True, text=True,
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
        return _failed(f"probe killed by SIGKILL (out of memory, or killed from outside); {tail}", oom=True, seconds=seconds)
    return _failed(f"probe exited with code {proc.returncode} without a result: {tail}", oom=False, seconds=seconds)


def estimate_vs_probe(model_path: str, trial: TrialConfig, device: str = "cuda", kernels: str = "auto",
                      steps: int = 3, shape: tuple[int, int] | None = None, loss: str = "chunked") -> dict:
    """One estimate-vs-measurement comparison, for scripts (the GPU check): the analytic estimate of
    ``trial`` at ``shape`` (total, and the allocated / reserved views) next to a probe's measurement
    (cuda: max_reserved + NVML context; cpu: peak RSS). ``error_pct`` = (estimate − measured) / measured."""
    from moopt_kernels import resolve_backend

    from moopt.memory.estimate import estimate_peak, load_model_config

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


def worst_case_batch(b: int, s: int, vocab: int, device, seed: int) -> dict:
    """``b × s`` random tokens, every position labelled. With b > 1 the last token of the last row is
    padding: a real padded batch makes HF build a 4D mask (b·s² bytes) and repeat K/V for SDPA, which
    an all-ones mask would skip, so the probe pays what the trial's worst batch pays."""
    import torch

    from moopt.train.data import IGNORE

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, s), generator=g)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    if b > 1:
        mask[-1, -1] = 0
        labels[-1, -1] = IGNORE
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


# A trial's batches vary in length and it ends with an evaluation; a probe that repeated one shape
# measured less than the trial. SmolLM2 bf16 on the CPU, the memory gate study's data (b x 20 tokens),
# 2026-12-05, probe vs the trial's peak (MiB): b4 q,v r 8: 843 vs 903; b4 all linears r 64: 1112 vs 1178;
# with 2 varied steps and the evaluation 887 and 1167 (still under); with 6: 934 and 1240 (above, as a
# probe must be); b16 q,v r 8: 1105 / 1106 against the trial's 1055 (every position labelled). The heap's
# growth comes from the changing shapes: 12 steps of the one shape measured as 3 did.
VARIED_STEPS = 6
# With gradient accumulation a step's micro-batches differ in length, and each accumulates into the grads the
# one before it left: the guide's memory-constrained command's b1 trial (r 32 on all linears, accumulation 2,
# bf16, 2026-12-05) peaked at 997-1001 MiB, 963 with accumulation 1. Probed with one micro-batch a step:
# 968 MiB; two of the same length: 985; two of different lengths (what the probe does now): 998 and 1000.


def _child_run(spec: dict) -> dict:
    """Load the trial's setup and train ``steps`` steps; the measured figures (no exception handling)."""

    import torch

    from moopt.config import resolve_dtype
    from moopt.train.lora import attach_lora, lora_parameters
    from moopt.train.recipe import load_model_and_tokenizer, pick_device, use_attention
    from moopt.train.step import causal_lm_loss, train_step

    cfg = TrialConfig.from_dict(spec["trial"])
    tc = cfg.training
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = pick_device(spec["device"])
    if device.type == "cuda" and spec.get("cap_bytes"):
        hold_to(int(spec["cap_bytes"]), device)
    seed = int(spec.get("seed", 0))
    torch.manual_seed(seed)
    rss_after_imports = peak_rss_bytes()

    # -- load model, attach LoRA: the trial's own steps (moopt.train.recipe.run_trial) ----------------
    model, _tok = load_model_and_tokenizer(spec["model_path"], cfg, device)
    b, s = (int(x) for x in (spec.get("shape") or (tc.batch_size, cfg.data.max_seq_length)))
    attention = use_attention(model, device, resolve_dtype(cfg.model.dtype, device.type), s)  # as the trial
    if cfg.model.gradient_checkpointing:
        from moopt.train.warm import enable_checkpointing

        enable_checkpointing(model)
    info = attach_lora(model, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                       target_modules=cfg.lora.target_modules, backend=spec["kernels"])
    params = lora_parameters(model)
    opt = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.weight_decay,
                            betas=(tc.adam_beta1, tc.adam_beta2), eps=tc.adam_epsilon)
    model.train()

    # -- train on the worst-case batch: the trial's step, no scheduler ------------------------------------
    accumulate = tc.gradient_accumulation_steps > 1
    batch = worst_case_batch(b, s, model.config.vocab_size, device, seed)
    for _ in range(int(spec["steps"])):
        train_step(model, [batch, batch] if accumulate else [batch], params=params, opt=opt, sched=None,
                   max_grad_norm=tc.max_grad_norm, device=device, backend=info["backend"])
    # -- then as the trial goes on: its other batch shapes (made up: each 1/8 of the sequence shorter), an evaluation --
    varied = spec.get("varied")
    if varied is None:
        varied = [(b, max(1, s - k * max(1, s // 8))) for k in range(1, VARIED_STEPS + 1)]
    previous = batch
    for k, (vb, vs) in enumerate(varied, 1):
        shorter = worst_case_batch(int(vb), int(vs), model.config.vocab_size, device, seed + k)
        train_step(model, [previous, shorter] if accumulate else [shorter], params=params, opt=opt, sched=None,
                   max_grad_norm=tc.max_grad_norm, device=device, backend=info["backend"])
        previous = shorter
    trim_heap_if_steady()  # as moopt.train.recipe.evaluate does
    model.eval()
    with torch.no_grad():
        causal_lm_loss(model, batch, info["backend"])
    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize()

    # -- measure: what run_trial reports as peak_memory_gb ---------------------------------------------
    peak = measure_peak(device.type, spec.get("nvml_baseline"))
    out = dataclasses.asdict(peak)
    if device.type != "cuda":
        out["context_bytes"] = rss_after_imports
    out["backend"] = info["backend"]
    out["attention"] = attention
    return out


def hold_to(cap_bytes: int, device) -> None:
    """Let the caching allocator reserve at most ``cap_bytes`` on ``device``: past it an allocation raises CUDA's
    OutOfMemoryError as a full GPU would (after the allocator has freed its cache and retried)."""
    import torch

    # torch.device("cuda") (what pick_device gives) has no index; set_per_process_memory_fraction refuses one without
    index = torch.device(device).index
    if index is None:
        index = torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total), index)


_SIZE = re.compile(r"Tried to allocate ([0-9.]+) (bytes|KiB|MiB|GiB|TiB)")
_UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def refused_by_cap(message: str, reserved: int, cap_bytes: int | None) -> bool:
    """Whether an out-of-memory with this ``message`` (torch's: "CUDA out of memory. Tried to allocate 2.00 GiB. GPU
    0 has ...") was the cap's refusal: what the allocator held (``reserved``, read when it raised) plus what it was
    asked for is over ``cap_bytes``. A message without the request size (another library's) is not taken as one."""
    m = _SIZE.search(message)
    if not cap_bytes or m is None:
        return False
    return reserved + float(m[1]) * _UNITS[m[2]] > cap_bytes


def main() -> int:
    """``python -m moopt.train.probe``: spec on stdin, one result line on stdout, then exit."""
    from moopt.train.worker import die_with_parent

    die_with_parent()  # a study killed (kill -9) mid-probe leaves no orphan holding memory beside its resumed run
    steady_heap_if_asked()
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library prints go to stderr
    spec = json.loads(sys.stdin.read())
    failure = None
    try:
        result = _child_run(spec)
        result.update(oom=False, error=None)
    except BaseException as e:  # noqa: BLE001 - the parent gets a result line for every failure
        oom = is_out_of_memory(e)
        failure = {"oom": oom, "error": f"{type(e).__name__}: {e}".splitlines()[0][:500]}
        if oom and spec.get("device") == "cuda" and spec.get("cap_bytes"):
            import torch

            failure["capped"] = refused_by_cap(str(e), torch.cuda.memory_reserved(), spec["cap_bytes"])
        import traceback

        traceback.print_exc(file=sys.stderr)
    if failure is not None:
        # Outside the except block the traceback (and the tensors its frames hold) is gone; we exit
        # right away anyway, reporting the peak up to the failure (cuda: the allocator's, no context).
        try:
            peak = measure_peak(spec.get("device", "cpu"))
            peak_bytes = peak.max_reserved if spec.get("device") == "cuda" else peak.peak_bytes
        except Exception:
            peak_bytes = 0
        result = {"peak_bytes": peak_bytes, "max_allocated": 0, "max_reserved": 0, "num_alloc_retries": 0,
                  "context_bytes": 0, **failure}
    proto.write(json.dumps(result) + "\n")
    proto.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if failure is None else 3)  # no interpreter teardown: nothing to free, nothing to wait for

if __name__ == "__main__":
    main()
