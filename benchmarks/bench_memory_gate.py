"""A memory-constrained study end to end: how many trainings exceed the budget, and how close the
calibrated estimate comes to what the trials measured.

    python benchmarks/bench_memory_gate.py                       # SmolLM2-135M, CPU (peak RSS), seeds 0-2, ~2 min a seed
    python benchmarks/bench_memory_gate.py --seeds 0 1 2 3 4 --trials 10 --rows 48
    python benchmarks/bench_memory_gate.py --device cuda --model DIR --seeds 0    # the GPU check's step

The space (batch size × LoRA rank × targets, on the bundled data; checkpointing off, since it flattens
the peaks of a short-row space so far that a midpoint budget would rule out almost nothing) is estimated
over its whole grid first (the estimator on the data's real batch shape); the budget is set halfway
through the range of those peaks (the issue's rule): 5 of its 12 configurations are estimated over it,
the next 3 at 10-17% under it. Then ``moopt optimize --memory_constraint`` runs with a fresh calibration
cache, once per seed. Counted: trials trained (a worker ran), trainings whose measured
peak exceeded the budget (the figure to keep at 0), configurations ruled out without training,
probes run; and the calibrated estimate's error on every measured peak (leave-one-out over the
cache's pairs, as the gate fits them).

Writes ``benchmarks/results/memory_gate_<device>.csv`` (benchmarks/common.py's schema: per trial its peak
memory, provider measured or gate; then the summary rows).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, ROOT, write_rows  # noqa: E402

DATA = ROOT / "data"
GIB = 1024**3
BATCHES = (4, 16, 32)
RANKS = (8, 64)
TARGETS = {"qv": ["q_proj", "v_proj"], "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
CKPT = (False,)

SPACE = """training:
  learning_rate: 1e-3
  num_train_epochs: 1
  batch_size: {{type: categorical, values: {batches}}}
lora:
  r: {{type: categorical, values: {ranks}}}
  target_modules: {{type: categorical, values: {targets}}}
data:
  max_seq_length: 256
model:
  gradient_checkpointing: false
"""


def grid_estimates(model_path: str, train_file: Path, device: str) -> list[float]:
    from moopt.config import TrialConfig
    from moopt.memory.estimate import estimate_peak, load_model_config
    from moopt.study.gate import batch_shape, data_lengths

    cfg = load_model_config(model_path)
    lengths = data_lengths(model_path, train_file)
    out = []
    for b, r, t, ck in itertools.product(BATCHES, RANKS, TARGETS.values(), CKPT):
        trial = TrialConfig.from_dict({"training": {"batch_size": b}, "data": {"max_seq_length": 256},
                                       "lora": {"r": r, "target_modules": t}, "model": {"gradient_checkpointing": ck}})
        shape = batch_shape(lengths, b, 256, "random")
        out.append(estimate_peak(cfg, trial, device=device, kernels="torch", batch_shape=shape).total_bytes / GIB)
    return out


def loo_errors(pairs: list[list[int]]) -> list[float]:
    from moopt.memory.estimate import apply_calibration, fit_calibration

    errs = []
    for i, (e, m) in enumerate(pairs):
        others = [tuple(p) for j, p in enumerate(pairs) if j != i]
        pred = apply_calibration(e, fit_calibration(others)) if others else e
        errs.append((pred - m) / m * 100)
    return errs


def run_seed(seed: int, args, model_path: str, train: Path, val: Path, space: Path, budget: float,
             est: list[float], work: Path, device: str) -> tuple[list[dict], dict]:
    """One study with a fresh calibration cache: its per-trial rows and its summary."""
    import subprocess

    import pandas as pd

    env = {**os.environ, "MOOPT_CACHE": str(work / f"cache_{seed}")}
    out = work / f"study_{seed}"
    t0 = time.time()
    cmd = [sys.executable, "-P", "-m", "moopt.cli", "optimize", "--base_model", model_path, "--train_file", str(train),
           "--validation_file", str(val), "--output_dir", str(out), "--search_space", str(space), "--num_trials",
           str(args.trials), "--no-baseline", "--memory_constraint", f"{budget:.4f}", "--seed", str(seed),
           "--optimization_objective", args.objective]
    sys.stdout.flush()  # the study's console goes to this script's output as it runs: a step killed by a time limit
    proc = subprocess.run(cmd, env=env, check=False)  # (the GPU check's) still leaves each trial's line in its log
    # exit 1 with every trial INFEASIBLE is the study's answer that nothing fits (no best_config.yaml), not a failure
    nothing_fits = proc.returncode == 1 and (out / "trials_summary.csv").is_file() and not (out / "best_config.yaml").exists()
    if proc.returncode != 0 and not nothing_fits:
        print(f"the study of seed {seed} failed (exit {proc.returncode}): its output is above", file=sys.stderr)
        raise SystemExit(1)
    seconds = time.time() - t0
    df = pd.read_csv(out / "trials_summary.csv")
    not_trained = df.error.astype("string").fillna("").str.startswith("not trained")
    trained = df[~not_trained]
    exceeded = trained[trained.peak_memory_gb > budget]
    events = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    gates = [e for e in events if e["type"] == "memory_gate"]
    cache = json.loads((work / f"cache_{seed}" / "calibration.json").read_text())
    pairs = [p for e in cache["entries"].values() for p in e.get("pairs", [])]
    errs = loo_errors(pairs) if len(pairs) >= 2 else []
    raw = [(e - m) / m * 100 for e, m in pairs]
    excess = [x * 100 for e in cache["entries"].values() for x in e.get("probe_excess", [])]  # trial over its probe
    summary = {
        "budget_gib": budget, "space_min_gib": min(est), "space_max_gib": max(est), "space_size": len(est),
        "space_estimated_over_budget": sum(e > budget for e in est), "trials": len(df),
        "trained": len(trained), "trained_over_budget": len(exceeded), "ruled_out_untrained": int(not_trained.sum()),
        "probes": sum(1 for g in gates if g.get("probed")), "measured_pairs": len(pairs),
        "uncalibrated_median_abs_error": statistics.median(abs(x) for x in raw) if raw else float("nan"),
        "calibrated_median_abs_error": statistics.median(abs(x) for x in errs) if errs else float("nan"),
        "calibrated_max_abs_error": max(abs(x) for x in errs) if errs else float("nan"),
        "probed_then_trained": len(excess),
        "trial_above_probe_max_pct": max(excess) if excess else float("nan"),
        "seconds": seconds,
    }
    cols = [c for c in ("number", "state", "params_batch_size", "params_r", "params_target_modules", "peak_memory_gb",
                        "error") if c in df]
    print(f"-- seed {seed}\n" + df[cols].to_string())
    for k, v in summary.items():
        print(f"{k:32s} {v:.3f}" if isinstance(v, float) else f"{k:32s} {v}")
    rows = [{"what": "peak_memory", "problem": f"trial_{row.number}_{row.state}", "provider": "measured"
             if not str(row.error).startswith("not trained") else "gate", "device": device, "seed": seed,
             "value": round(float(row.peak_memory_gb), 4), "unit": "GiB"} for _, row in df.iterrows()]
    for k, v in summary.items():
        unit = "GiB" if k.endswith("_gib") else "pct" if "error" in k or k.endswith("_pct") else "s" if k == "seconds" else "count"
        rows.append({"what": "summary", "problem": k, "provider": "moopt", "device": device, "seed": seed,
                     "value": round(float(v), 4), "unit": unit})
    return rows, summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--rows", type=int, default=48, help="training examples (the first N of data/train.jsonl)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one study per seed, each with a fresh calibration cache")
    p.add_argument("--objective", default="multi:eval_loss,peak_memory_gb")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="what the estimates and the budget are for (the studies pick the GPU when there is one)")
    p.add_argument("--model", default="smollm2-135m", help="alias or local folder (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/memory_gate_<device>.csv")
    args = p.parse_args()

    from moopt.train.models import resolve_model

    device = args.device
    model_path = str(resolve_model(args.model))
    work = Path(tempfile.mkdtemp(prefix="bench_memory_gate_"))
    try:  # each seed's own cache holds a dtype copy of the model (~0.6 GB a run): never left in /tmp
        train, val = work / "train.jsonl", work / "val.jsonl"
        train.write_text("".join((DATA / "train.jsonl").read_text().splitlines(keepends=True)[: args.rows]))
        val.write_text("".join((DATA / "val.jsonl").read_text().splitlines(keepends=True)[:16]))
        est = grid_estimates(model_path, train, device)
        lo, hi = min(est), max(est)
        budget = lo + 0.5 * (hi - lo)
        print(f"space of {len(est)} configurations: estimated peaks {lo:.3f}-{hi:.3f} GiB; budget {budget:.3f} GiB; "
              f"{sum(e > budget for e in est)} estimated over it", flush=True)
        space = work / "space.yaml"
        space.write_text(SPACE.format(batches=list(BATCHES), ranks=list(RANKS), targets=json.dumps(list(TARGETS.values()))))
        rows, summaries = [], []
        path = args.out or RESULTS / f"memory_gate_{device}.csv"
        for seed in args.seeds:
            r, s = run_seed(seed, args, model_path, train, val, space, budget, est, work, device)
            rows += r
            summaries.append(s)
            write_rows(rows, path)  # after every seed: a run stopped later keeps the seeds that finished
        total = {k: sum(s[k] for s in summaries) for k in ("trials", "trained", "trained_over_budget", "ruled_out_untrained", "probes",
                                                           "probed_then_trained")}
        print(f"over {len(summaries)} studies: " + ", ".join(f"{k} {v}" for k, v in total.items())
              + "; calibrated median |error| per study: " + ", ".join(f"{s['calibrated_median_abs_error']:.1f}%" for s in summaries)
              + "; a trial's peak above its probe, worst per study: "
              + ", ".join(f"{s['trial_above_probe_max_pct']:+.1f}%" for s in summaries))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
