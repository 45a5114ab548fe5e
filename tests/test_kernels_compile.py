"""The Triton kernels compile for an H200 (sm_90) and an A100 (sm_80) on this CPU machine, fit their
shared memory, spill no registers and compile once for every batch length (moopt_kernels.aot).

A representative subset (moopt_kernels.aot.spec_set("ci"): bf16/fp16/fp32, r 8-64, single, q,k,v and
gate,up fused, dropout and dX on and off, up to the largest r-tile of 256) compiles in about 30 s per
target on 2 cores; benchmarks/bench_compile.py writes the table of every variant the search space allows.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from moopt_kernels import HAS_TRITON

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
ROOT = Path(__file__).resolve().parents[1]


def test_ci_set_compiles_for_sm90_and_sm80_within_limits(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # a fresh cache: every variant really compiles
    procs = {}
    for arch in (90, 80):
        cmd = [sys.executable, "-P", "-m", "moopt_kernels.aot", "--arch", str(arch), "--set", "ci",
               "--batch-lengths", "64,200,1000", "--json", str(tmp_path / f"sm{arch}.json")]
        procs[arch] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for arch, proc in procs.items():
        log = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, f"sm_{arch}:\n{log[-3000:]}"
        result = json.loads((tmp_path / f"sm{arch}.json").read_text())
        variants = result["variants"]
        assert {v["dtype"] for v in variants} == {"bfloat16", "float16", "float32"}
        assert max(v["constexprs"]["BLOCK_R"] for v in variants) == 256  # q,k,v fused at r = 64
        grad_in = [v["constexprs"] for v in variants if v["kernel"] == "_lora_grad_in_kernel"]
        assert {(c["HAS_DROPOUT"], c["HAS_DX"]) for c in grad_in} >= {(True, True), (False, True), (False, False)}
        for v in variants:
            where = f"sm_{arch} {v['kernel']} {v['dtype']} {v['constexprs']}"
            assert v["error"] is None, where
            assert v["fits"] and v["shared_kib"] * 1024 <= {90: 232448, 80: 166912}[arch], where
            assert v["registers"] > 0 and v["spill_bytes"] == 0, f"{where}: {v['registers']} regs, {v['spill_bytes']} B spilled"
        # three batch lengths (64, 200, 1000 rows) compiled no binary beyond one per variant
        per_kernel = {k: sum(v["kernel"] == k for v in variants) for k in result["binaries"]}
        assert result["binaries"] == per_kernel
