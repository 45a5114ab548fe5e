"""The CUDA memory terms, measured: the estimate's breakdown next to the probe's reserved, allocated and
context bytes per configuration, and the CUDA context's growth as kernels load (init, cuBLAS, backward,
SDPA, moopt's Triton module). Run on the GPU machine after gpu_check's env and models steps:

    python3 -P benchmarks/gpu_check.py --steps env,models
    PYTHONPATH=/tmp/moopt-gpu-check/site MOOPT_CACHE=/tmp/moopt-gpu-check/cache \
        python3 -P benchmarks/gpu_memory_probe.py

Writes $OUT/mem_probe.json (results/gpu/h200_2026-12-04/memory_probe_cuda.json came from it).

On any machine, the current estimator against such a file (no GPU; the stand-in's config from
benchmarks/standin_models.py), as bench_memory reports it (analytic and leave-one-out calibrated error,
gate decisions), into benchmarks/results/memory_cuda.csv / .png:

    python -P benchmarks/gpu_memory_probe.py --reestimate benchmarks/results/gpu/h200_2026-12-04/memory_probe_cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_memory as bm  # noqa: E402

from moopt.memory.estimate import estimate_peak, load_model_config  # noqa: E402
from moopt.train.probe import probe_peak  # noqa: E402

MIB = 2**20
MODEL = "/tmp/moopt-gpu-check/models/smollm2-135m"
CONTEXT = r'''
import os, json, torch
from moopt.memory.nvml import nvml_index, process_used_bytes
def used(): return (process_used_bytes(os.getpid(), nvml_index(), None) or 0) / 2**20
def res(): return torch.cuda.memory_reserved() / 2**20
r = {}
torch.zeros(1, device="cuda"); torch.cuda.synchronize(); r["init"] = used(); r["init_reserved"] = res()
a = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16); (a @ a).sum().item(); torch.cuda.synchronize()
r["matmul"] = used(); r["matmul_reserved"] = res()
a.requires_grad_(); (a @ a).float().sum().backward(); torch.cuda.synchronize()
r["backward"] = used(); r["backward_reserved"] = res()
q = torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.bfloat16)
torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True); torch.cuda.synchronize(); r["sdpa"] = used()
from moopt_kernels import lora_linear  # triton is imported, and its kernels compiled, at the first launch
x, w = torch.randn(64, 128, device="cuda", dtype=torch.bfloat16), torch.randn(128, 128, device="cuda", dtype=torch.bfloat16)
la, lb = torch.randn(16, 128, device="cuda", dtype=torch.bfloat16), torch.randn(128, 16, device="cuda", dtype=torch.bfloat16)
lora_linear(x, w, la.requires_grad_(), lb.requires_grad_(), 1.0, backend="triton").float().sum().backward()
torch.cuda.synchronize(); r["triton_lora_launch"] = used()
print("CTXJSON" + json.dumps(r))
'''


def context_growth() -> dict | str:
    try:
        p = subprocess.run([sys.executable, "-P", "-c", CONTEXT], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        return repr(e)
    line = [x for x in p.stdout.splitlines() if x.startswith("CTXJSON")]
    return json.loads(line[0][7:]) if line else p.stderr[-2000:]


# measured before the chunked loss head freed each chunk before the next (2 chunks alive at its
# peak): the step it measured is not the one the estimate now models
SUPERSEDED = {"b8_s256_r8_qv_ckpt": "its loss phase (2 chunks of 1024 rows) ran the loop that kept two chunks alive"}


def standin_config():
    """The config the GPU check's SmolLM2-shaped stand-in was built from (benchmarks/standin_models.py)."""
    from standin_models import SHAPES
    from transformers import LlamaConfig

    return LlamaConfig(**SHAPES["smollm2-135m"])


def reestimate_rows(probe_json: Path, verbose: bool = False) -> list[dict]:
    """Per measured configuration of ``probe_json``: the current estimate and the measured peak (bytes)."""
    data = json.loads(probe_json.read_text())
    mcfg = standin_config()
    rows = []
    for r in data["configs"]:
        if r.get("error"):
            continue
        if r["config"] in SUPERSEDED:
            if verbose:
                print(f"left out {r['config']}: {SUPERSEDED[r['config']]}")
            continue
        p = r["config"].split("_")
        c = dict(b=int(p[0][1:]), s=int(p[1][1:]), r=int(p[2][1:]), targets=p[3], ckpt=p[4] == "ckpt",
                 quant=p[5] if len(p) > 5 else "none")
        est = estimate_peak(mcfg, bm.trial_config(c), device="cuda", kernels="triton")
        rows.append({"config": r["config"], "quant": c["quant"], "analytic": est.total_bytes,
                     "measured": int(r["peak"] * MIB)})
        if verbose:
            print(f"{r['config']:36s} estimate {est.total_bytes / MIB:6.0f} MiB (then {r['est_total']:6.0f})  "
                  f"measured {r['peak']:6.0f}  {100 * (est.total_bytes / MIB - r['peak']) / r['peak']:+5.1f}%")
    return rows


def reestimate(probe_json: Path) -> None:
    dev_name = "NVIDIA H200" if "h200" in str(probe_json).lower() else "cuda"
    rows = reestimate_rows(probe_json, verbose=True)
    s = bm.summarize(rows, "cuda")
    path = bm.RESULTS / "memory_cuda.csv"
    bm.write_csv(rows, s, "cuda", dev_name, path)
    bm.MODEL = "smollm2-135m"
    bm.plot(rows, dev_name, path.with_suffix(".png"))
    print(f"{s['n']} configurations: analytic |error| median {s['analytic_median_abs_err_pct']:.1f}%, max "
          f"{s['analytic_max_abs_err_pct']:.1f}% (mean signed {s['analytic_mean_signed_err_pct']:+.1f}%); calibrated "
          f"(leave-one-out) median {s['calibrated_median_abs_err_pct']:.1f}%, max {s['calibrated_max_abs_err_pct']:.1f}%; "
          f"gate at budgets = measured x {bm.BUDGET_FACTORS}: {s['gate_wrong_fit_pct']:.1f}% wrongly fit "
          f"({s['gate_probed_pct']:.0f}% probed), calibrated {s['gate_calibrated_wrong_fit_pct']:.1f}% "
          f"({s['gate_calibrated_probed_pct']:.0f}% probed)")
    print(f"wrote {path} and {path.with_suffix('.png')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reestimate", type=Path, help="a mem_probe.json: compare the current estimator with it (CPU)")
    a = ap.parse_args()
    if a.reestimate:
        reestimate(a.reestimate)
        return
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    res = {"context": context_growth(), "configs": []}
    print(res["context"], flush=True)
    mcfg = load_model_config(MODEL)
    configs = bm.sample(4, 16 * 256, 0) + bm.sample_quantized(3, 16 * 256, 0)
    configs += [dict(b=16, s=256, r=64, targets="all-linear", ckpt=False, quant="none"),
                dict(b=8, s=256, r=8, targets="qv", ckpt=True, quant="none")]
    for c in configs:
        t = bm.trial_config(c)
        est = estimate_peak(mcfg, t, device="cuda", kernels="triton")
        t0 = time.time()
        r = probe_peak(MODEL, t, device="cuda", kernels="auto", steps=2)
        row = {"config": bm.label(c), "est_total": est.total_bytes / MIB,
               "est_breakdown": {k: v / MIB for k, v in est.breakdown.items()}, "peak": r.peak_bytes / MIB,
               "max_reserved": r.max_reserved / MIB, "max_allocated": r.max_allocated / MIB,
               "context": r.context_bytes / MIB, "error": r.error, "s": time.time() - t0}
        print(json.dumps(row), flush=True)
        res["configs"].append(row)
        (out / "mem_probe.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
