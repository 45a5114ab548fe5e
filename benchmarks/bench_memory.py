"""Predicted (analytic) vs measured (probe) peak memory of LoRA training on SmolLM2-135M.

    python benchmarks/bench_memory.py                 # GPU if present (NVML), else CPU (peak RSS)
    python benchmarks/bench_memory.py --n 8 --steps 2 # fewer configurations

Grid: batch {1,4,8,16} × seq {64,128,256} × r {8,64} × targets {q,v; all-linear} × checkpointing
{off,on} × quantisation {none, 4bit (NF4 + double quant), 8bit}; ``--n`` unquantised configurations
sampled from it (seeded, every (batch, seq) cell with at most ``--max-tokens`` tokens drawn before
any repeats), then ``--n-quant`` quantised ones (bitsandbytes; its CPU backend on CPU). Each is measured with ``moopt.train.probe.probe_peak``
(a fresh subprocess: peak RSS on CPU, max_reserved + NVML context on CUDA).

Writes ``benchmarks/results/memory_<device>.csv`` (benchmarks/common.py's schema), one row per (config = problem, provider) with provider in
analytic (uncalibrated estimate) | calibrated (leave-one-out: calibration fitted on every other
config's probe with the same quantisation, as the study calibrates per (model, quantisation,
kernels)) | measured, then summary rows; and ``memory_<device>.png`` (predicted vs measured).
Prints median / p90 |error|, the error after calibration, and the fit/no-fit decision accuracy for
budgets at measured × {0.9, 0.95, 1.05, 1.1}: the analytic estimate alone vs the gate
(``moopt.study.gate.MemoryGate``'s rule: the estimate decides outside its error band, otherwise the probe
does), uncalibrated and after calibration on the other configurations.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, device_name, pyplot, read_rows, write_rows  # noqa: E402

MODEL = "smollm2-135m"
BUDGET_FACTORS = (0.9, 0.95, 1.05, 1.1)
TARGETS = {"qv": ("q_proj", "v_proj"), "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}
GIB = 1024**3
MIB = 1024**2


QUANTS = ("4bit", "8bit")


def grid(quant: str = "none") -> list[dict]:
    return [dict(b=b, s=s, r=r, targets=t, ckpt=c, quant=quant) for b, s, r, t, c in itertools.product(
        (1, 4, 8, 16), (64, 128, 256), (8, 64), tuple(TARGETS), (False, True))]


def sample_quantized(n: int, max_tokens: int, seed: int = 0) -> list[dict]:
    """``n`` configurations drawn from the 4bit and 8bit grids, alternating."""
    rng = random.Random(seed + 1)
    pools = {q: [c for c in grid(q) if c["b"] * c["s"] <= max_tokens] for q in QUANTS}
    for pool in pools.values():
        rng.shuffle(pool)
    picked = [pools[QUANTS[i % len(QUANTS)]][i // len(QUANTS)] for i in range(n)]
    return sorted(picked, key=lambda c: (c["quant"], c["b"] * c["s"], c["ckpt"]))


def sample(n: int, max_tokens: int, seed: int = 0) -> list[dict]:
    """``n`` configurations: first one per (batch, seq) cell under ``max_tokens`` (random other
    fields), then random ones from the rest of the allowed grid."""
    rng = random.Random(seed)
    allowed = [c for c in grid() if c["b"] * c["s"] <= max_tokens]
    cells: dict[tuple[int, int], list[dict]] = {}
    for c in allowed:
        cells.setdefault((c["b"], c["s"]), []).append(c)
    picked = [rng.choice(v) for v in cells.values()]
    rest = [c for c in allowed if c not in picked]
    rng.shuffle(rest)
    picked += rest[: max(0, n - len(picked))]
    return sorted(picked[:n], key=lambda c: (c["b"] * c["s"], c["ckpt"]))


def label(c: dict) -> str:
    q = "" if c.get("quant", "none") == "none" else f"_{c['quant']}"
    return f"b{c['b']}_s{c['s']}_r{c['r']}_{c['targets']}_{'ckpt' if c['ckpt'] else 'nockpt'}{q}"


def read_measured(path: Path) -> dict[str, int]:
    """``{config label: measured bytes}`` from an earlier run's CSV (``--reuse``)."""
    if not path.is_file():
        return {}
    return {r["problem"]: int(r["value"] * MIB) for r in read_rows(path)
            if r["what"] == "peak_memory" and r["provider"] == "measured"}


def trial_config(c: dict, dtype: str = "auto"):
    from moopt.config import TrialConfig

    return TrialConfig.from_dict({
        "training": {"batch_size": c["b"]}, "data": {"max_seq_length": c["s"]},
        "lora": {"r": c["r"], "alpha": 2 * c["r"], "target_modules": list(TARGETS[c["targets"]])},
        "model": {"gradient_checkpointing": c["ckpt"], "quantization": c.get("quant", "none"), "dtype": dtype},
    })


# -- analysis: plain data ---------------------------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def leave_one_out(pred: list[int], meas: list[int], groups: list[str] | None = None) -> list[int]:
    """Calibrated prediction of each config from the (estimate, measured) pairs of all the others in
    its group (the study keeps one calibration per quantisation)."""
    from moopt.memory.estimate import apply_calibration, fit_calibration

    groups = groups or [""] * len(pred)
    out = []
    for i in range(len(pred)):
        others = [(p, m) for j, (p, m) in enumerate(zip(pred, meas)) if j != i and groups[j] == groups[i]]
        out.append(apply_calibration(pred[i], fit_calibration(others)) if others else pred[i])
    return out


def gate_bands(pred: list[int], meas: list[int], quants: list[str], device: str) -> dict[str, list]:
    """Per config, the estimate and (under, over) band MemoryGate would use: ``gate`` uncalibrated (raw
    estimate, memory.under_prior and over_prior: ESTIMATE_UNDER_PRIOR and ESTIMATE_OVER_PRIOR, for CPU plus the
    runtime's spread between machines relative to the estimate; the CPU priors come from these very probes, so this one
    is in-sample), ``gate_calibrated`` after every other config of its quantisation was
    measured (leave-one-out calibrated estimate and moopt.memory.calibration.error_band over those pairs)."""
    from moopt.memory.calibration import error_band
    from moopt.memory.estimate import (
        ESTIMATE_UNDER_PRIOR,
        MIN_ERROR_BAND,
        apply_calibration,
        fit_calibration,
        over_prior,
        under_prior,
    )

    out = {"gate": [], "gate_calibrated": []}
    for i, (p, q) in enumerate(zip(pred, quants)):
        prior = ESTIMATE_UNDER_PRIOR[(device, q)]  # calibrated: the machine's spread is measured
        out["gate"].append((p, under_prior(device, q, p), over_prior(device, q, p)))
        others = [[pred[j], meas[j]] for j in range(len(pred)) if j != i and quants[j] == q]
        if others:
            cal = fit_calibration([tuple(o) for o in others])
            under, over = error_band(others, cal, prior, MIN_ERROR_BAND, estimate_bytes=p)
            out["gate_calibrated"].append((apply_calibration(p, cal), under, over))
        else:
            out["gate_calibrated"].append((p, under_prior(device, q, p), over_prior(device, q, p)))
    return out


def decisions(pred: list[int], meas: list[int], quants: list[str] | None = None,
              device: str = "cpu") -> dict[str, dict[str, float]]:
    """Fit / no-fit accuracy for budgets at measured × BUDGET_FACTORS. Truth: measured ≤ budget.

    analytic: estimate ≤ budget. gate / gate_calibrated (MemoryGate's rule, see gate_bands):
    estimate·(1−over) > budget → no; estimate·(1+under) ≤ budget → fit; else the probe decides (its
    measurement is the truth here: the probe *is* the trial's step on the worst-case batch), counted in
    ``probed``.
    """
    quants = quants or ["none"] * len(pred)
    bands = gate_bands(pred, meas, quants, device)
    out = {}
    for name in ("analytic", "gate", "gate_calibrated"):
        right = wrong_fit = probed = n = 0
        for i, (p, m) in enumerate(zip(pred, meas)):
            for f in BUDGET_FACTORS:
                budget, fits = m * f, m <= m * f
                if name == "analytic":
                    said = p <= budget
                else:
                    e, under, over = bands[name][i]
                    if e * (1 - over) > budget:
                        said = False
                    elif e * (1 + under) <= budget:
                        said = True
                    else:
                        said, probed = fits, probed + 1
                n += 1
                right += said == fits
                wrong_fit += said and not fits
        out[name] = {"right_pct": 100 * right / n, "wrong_fit_pct": 100 * wrong_fit / n,
                     "probed_pct": 100 * probed / n, "n": n}
    return out


def summarize(rows: list[dict], device: str = "cpu") -> dict[str, float]:
    pred = [r["analytic"] for r in rows]
    meas = [r["measured"] for r in rows]
    cal = leave_one_out(pred, meas, [r.get("quant", "none") for r in rows])
    err = [abs(p - m) / m * 100 for p, m in zip(pred, meas)]
    signed = [(p - m) / m * 100 for p, m in zip(pred, meas)]
    cal_err = [abs(c - m) / m * 100 for c, m in zip(cal, meas)]
    cal_abs = [abs(c - m) / MIB for c, m in zip(cal, meas)]
    for r, c in zip(rows, cal):
        r["calibrated"] = c
    dec = decisions(pred, meas, [r.get("quant", "none") for r in rows], device)
    return {
        "n": len(rows),
        "analytic_median_abs_err_pct": statistics.median(err), "analytic_p90_abs_err_pct": pct(err, 0.9),
        "analytic_max_abs_err_pct": max(err), "analytic_mean_signed_err_pct": statistics.mean(signed),
        "calibrated_median_abs_err_pct": statistics.median(cal_err), "calibrated_max_abs_err_pct": max(cal_err),
        "calibrated_max_abs_err_mib": max(cal_abs),
        "analytic_right_pct": dec["analytic"]["right_pct"], "analytic_wrong_fit_pct": dec["analytic"]["wrong_fit_pct"],
        "gate_right_pct": dec["gate"]["right_pct"], "gate_wrong_fit_pct": dec["gate"]["wrong_fit_pct"],
        "gate_probed_pct": dec["gate"]["probed_pct"],
        "gate_calibrated_right_pct": dec["gate_calibrated"]["right_pct"],
        "gate_calibrated_wrong_fit_pct": dec["gate_calibrated"]["wrong_fit_pct"],
        "gate_calibrated_probed_pct": dec["gate_calibrated"]["probed_pct"],
    }


# -- measurement ------------------------------------------------------------------------------------


def measure(configs: list[dict], device: str, kernels: str, steps: int, threads: int, csv_path: Path, dev_name: str,
            reuse: dict[str, int] | None = None, dtype: str = "auto"):
    from moopt.memory.estimate import estimate_peak, load_model_config
    from moopt.train.models import resolve_model
    from moopt.train.probe import ProbeResult, probe_peak

    model_path = resolve_model(MODEL)  # main() may point MODEL at a local folder (--model)
    mcfg = load_model_config(model_path)
    est_kernels = "triton" if (device == "cuda" and kernels != "torch") else "torch"
    rows = []
    for i, c in enumerate(configs):
        t = trial_config(c, dtype)
        est = estimate_peak(mcfg, t, device=device, kernels=est_kernels)
        if reuse and label(c) in reuse:  # measured earlier: re-estimate only (after a model change)
            res = ProbeResult(reuse[label(c)], 0, 0, 0, 0, oom=False, error=None, seconds=0.0)
        else:
            res = probe_peak(model_path, t, device=device, kernels=kernels, steps=steps, threads=threads)
        ok = res.ok
        print(f"[{i + 1}/{len(configs)}] {label(c):36s} est {est.total_bytes / MIB:7.0f} MiB  "
              f"measured {res.peak_bytes / MIB:7.0f} MiB  {'' if ok else 'FAILED ' + str(res.error)}  "
              f"({res.seconds:.0f} s)", flush=True)
        if ok:
            rows.append({"config": label(c), "quant": c.get("quant", "none"), "analytic": est.total_bytes, "measured": res.peak_bytes,
                         "retries": res.num_alloc_retries, "seconds": res.seconds})
            write_csv(rows, None, device, dev_name, csv_path)  # partial results survive an interruption
    return rows


def write_csv(rows: list[dict], summary: dict | None, device: str, dev_name: str, path: Path) -> None:
    out = [{"what": "peak_memory", "problem": r["config"], "provider": provider, "device": dev_name,
            "value": round(r[provider] / MIB, 1), "unit": "MiB"}
           for r in rows for provider in ("analytic", "calibrated", "measured") if provider in r]
    for k, v in (summary or {}).items():
        unit = "pct" if k.endswith("_pct") else "MiB" if k.endswith("_mib") else "count"
        out.append({"what": "summary", "problem": k, "provider": "gate" if k.startswith("gate") else k.split("_")[0],
                    "device": dev_name, "value": round(v, 3), "unit": unit})
    write_rows(out, path)


def plot(rows: list[dict], dev_name: str, path: Path) -> None:
    plt = pyplot()
    meas = [r["measured"] / GIB for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for q, colour in (("none", "C0"), ("4bit", "C2"), ("8bit", "C3")):
        sel = [r for r in rows if r.get("quant", "none") == q]
        if sel:
            ax.scatter([r["measured"] / GIB for r in sel], [r["analytic"] / GIB for r in sel], color=colour,
                       marker="o", label="analytic" + ("" if q == "none" else f" ({q})"))
    ax.scatter(meas, [r["calibrated"] / GIB for r in rows], label="calibrated (leave-one-out)", marker="x")
    lo, hi = min(meas) * 0.9, max(meas) * 1.1
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="grey", alpha=0.15, label="±10%")
    ax.set_xlabel("measured peak (GiB)")
    ax.set_ylabel("predicted peak (GiB)")
    ax.set_title(f"{Path(MODEL).name} LoRA step, {dev_name}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    global MODEL
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--kernels", default="auto", choices=["auto", "torch", "triton"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="the base model's dtype (auto: moopt's rule; CPU bf16 writes memory_cpu_bf16.csv)")
    parser.add_argument("--n", type=int, default=16, help="configurations sampled from the grid")
    parser.add_argument("--n-quant", type=int, default=16, help="quantised (4bit/8bit) configurations added")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="largest batch×seq sampled (default: 1024 on CPU, where steps are slow; all on CUDA)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per probe (>= 2: Adam allocates in step 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each probe (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true",
                        help="take measured peaks from the existing CSV, probe only the configs it lacks")
    parser.add_argument("--offline", action="store_true",
                        help="with --reuse: summarise only the configs the CSV holds, probe nothing")
    parser.add_argument("--model", default=MODEL, help="alias or local folder (default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    MODEL = args.model
    max_tokens = args.max_tokens or (1024 if args.device == "cpu" else 16 * 256)
    configs = sample(args.n, max_tokens, args.seed) + sample_quantized(args.n_quant, max_tokens, args.seed)
    dev_name = device_name(args.device)
    from moopt.config import resolve_dtype

    dtype = resolve_dtype(args.dtype, args.device)  # probed and estimated explicitly: the CSV says which
    suffix = "_bf16" if args.device == "cpu" and dtype == "bfloat16" else "_fp32" if args.device == "cuda" and dtype == "float32" else ""
    csv_path = args.out_dir / f"memory_{args.device}{suffix}.csv"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    reuse = read_measured(csv_path) if args.reuse else None
    if args.reuse and args.offline:
        configs = [c for c in configs if label(c) in reuse]
        # nothing is measured here: the figures stay labelled with the machine that measured them
        dev_name = next((r["device"] for r in read_rows(csv_path) if r["what"] == "peak_memory"), dev_name)
    t0 = time.time()
    rows = measure(configs, args.device, args.kernels, args.steps, args.threads, csv_path, dev_name, reuse, dtype)
    if len(rows) < 2:
        print("fewer than 2 successful probes: nothing to summarise", file=sys.stderr)
        return 1
    s = summarize(rows, args.device)
    write_csv(rows, s, args.device, dev_name, csv_path)
    plot(rows, dev_name, args.out_dir / f"memory_{args.device}{suffix}.png")
    print(f"\n{s['n']} configs on {dev_name}, {time.time() - t0:.0f} s, {args.steps} steps per probe")
    print(f"analytic  |error|: median {s['analytic_median_abs_err_pct']:.1f}%, p90 {s['analytic_p90_abs_err_pct']:.1f}%, "
          f"max {s['analytic_max_abs_err_pct']:.1f}% (mean signed {s['analytic_mean_signed_err_pct']:+.1f}%)")
    print(f"calibrated (leave-one-out) |error|: median {s['calibrated_median_abs_err_pct']:.1f}%, "
          f"max {s['calibrated_max_abs_err_pct']:.1f}% / {s['calibrated_max_abs_err_mib']:.0f} MiB")
    print(f"decisions at budget = measured × {BUDGET_FACTORS}: analytic {s['analytic_right_pct']:.1f}% right, "
          f"{s['analytic_wrong_fit_pct']:.1f}% wrongly fit; gate {s['gate_right_pct']:.1f}% right, "
          f"{s['gate_wrong_fit_pct']:.1f}% wrongly fit, {s['gate_probed_pct']:.0f}% probed; calibrated gate "
          f"{s['gate_calibrated_right_pct']:.1f}% right, {s['gate_calibrated_wrong_fit_pct']:.1f}% wrongly fit, "
          f"{s['gate_calibrated_probed_pct']:.0f}% probed")
    print(f"wrote {csv_path} and {csv_path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
