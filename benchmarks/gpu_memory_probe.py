"""The CUDA memory terms, measured: the estimate's breakdown next to the probe's reserved, allocated and
context bytes per configuration, and the CUDA context's growth as kernels load (init, cuBLAS, backward,
SDPA, moopt's Triton module). Run on the GPU machine after gpu_check's env and models steps:

    python3 -P benchmarks/gpu_check.py --steps env,models
    PYTHONPATH=/tmp/moopt-gpu-check/site MOOPT_CACHE_DIR=/tmp/moopt-gpu-check/cache \
        python3 -P benchmarks/gpu_memory_probe.py

Writes $OUT/mem_probe.json (results/gpu/h200_2026-12-04/memory_probe_cuda.json came from it).
"""

from __future__ import annotations

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
import moopt_kernels.lora_linear  # noqa: F401
r["kernels_import"] = used()
print("CTXJSON" + json.dumps(r))
'''


def context_growth() -> dict | str:
    try:
        p = subprocess.run([sys.executable, "-P", "-c", CONTEXT], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        return repr(e)
    line = [x for x in p.stdout.splitlines() if x.startswith("CTXJSON")]
    return json.loads(line[0][7:]) if line else p.stderr[-2000:]


def main() -> None:
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
