"""Every Triton kernel variant the search space can launch, compiled for sm_90 (H200) and sm_80 (A100)
on the CPU: shared memory, registers and spills per variant (moopt_kernels.aot; no GPU needed).

    python -P benchmarks/bench_compile.py            # both targets, ~2-4 min on 2 cores

Writes benchmarks/results/compile_sm90.csv and compile_sm80.csv (benchmarks/common.py's schema; device
sm_90 / sm_80, problem = the kernel, params dtype, num_warps and the constexprs HAS_DROPOUT, HAS_DX,
UPCAST, BLOCK_M, BLOCK_K, BLOCK_N, BLOCK_R that are set), per compiled variant: shared_memory and
max_shared_memory (the target's per-block limit, KiB), registers, spill (bytes), fits (1/0), compile_time
(s), n_specs (how many of the launch specs below use it), and ``error`` (value empty; the message in
params) for a variant that did not compile. The specs: bf16/fp16/fp32 x r in {8, 16, 32, 64} x {single,
q,k,v fused, gate,up fused} x dropout on/off x dX on/off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, format_params, long, write_rows  # noqa: E402

CONSTEXPRS = ["HAS_DROPOUT", "HAS_DX", "UPCAST", "BLOCK_M", "BLOCK_K", "BLOCK_N", "BLOCK_R"]
# the CSV's figures: record key -> (what, unit)
WHATS = {"shared_kib": ("shared_memory", "KiB"), "max_shared_kib": ("max_shared_memory", "KiB"),
         "registers": ("registers", "count"), "spill_bytes": ("spill", "bytes"), "fits": ("fits", "bool"),
         "compile_s": ("compile_time", "s"), "n_specs": ("n_specs", "count")}


def variant_rows(variants: list[dict], arch: int, max_shared: int) -> list[dict]:
    """The schema's rows of one target's compiled variants (moopt_kernels.aot's JSON)."""
    rows = []
    for v in variants:
        rec = {"kernel": v["kernel"], "device": f"sm_{arch}", "dtype": v["dtype"], "num_warps": v["num_warps"],
               **{c: v["constexprs"][c] for c in CONSTEXPRS if v["constexprs"].get(c, "") != ""}}
        params = ("dtype", "num_warps", *CONSTEXPRS)
        if v["error"]:
            rows.append({"what": "error", "problem": v["kernel"], "provider": "triton", "device": rec["device"],
                         "unit": "", "params": format_params({k: rec[k] for k in params if k in rec})
                         + ";error=" + str(v["error"]).replace(";", ",").replace("=", ":").replace("\n", " ")})
            continue
        rec.update(shared_kib=round(v["shared_kib"], 1), max_shared_kib=max_shared / 1024, registers=v["registers"],
                   spill_bytes=v["spill_bytes"], fits=v["fits"], compile_s=round(v["compile_s"], 2), n_specs=len(v["specs"]))
        rows += long([{**rec, "provider": "triton"}], WHATS, {"problem": "kernel", "provider": "provider", "device": "device"},
                     params=params)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    ap.add_argument("--set", default="full", choices=("full", "ci"))
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    a = ap.parse_args()
    from moopt_kernels.aot import TARGETS

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    tmp = Path(tempfile.mkdtemp(prefix="moopt-compile-"))
    env["TRITON_CACHE_DIR"] = str(tmp / "cache")  # compile afresh: compile_s is a real compile
    procs = {arch: subprocess.Popen(
        [sys.executable, "-P", "-m", "moopt_kernels.aot", "--arch", str(arch), "--set", a.set, "--json",
         str(tmp / f"sm{arch}.json")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for arch in a.arch}  # one process per target (the JIT caches one target per device)
    bad = 0
    a.out_dir.mkdir(parents=True, exist_ok=True)
    for arch, proc in procs.items():
        log = proc.communicate()[0]
        path = tmp / f"sm{arch}.json"
        if not path.is_file():
            print(f"sm_{arch}: no result\n{log[-3000:]}", file=sys.stderr)
            bad += 1
            continue
        variants = json.loads(path.read_text())["variants"]
        out = write_rows(variant_rows(variants, arch, TARGETS[arch]["max_shared"]), a.out_dir / f"compile_sm{arch}.csv")
        n_bad = sum(1 for v in variants if v["error"] or not v["fits"])
        n_spill = sum(1 for v in variants if v["spill_bytes"])
        print(f"sm_{arch}: {len(variants)} variants, {n_bad} not launchable, {n_spill} spilling, "
              f"max shared {max(v['shared_kib'] for v in variants):.0f} KiB, max registers "
              f"{max(v['registers'] for v in variants)}, compile {sum(v['compile_s'] for v in variants):.0f} s -> {out}")
        bad += n_bad
    shutil.rmtree(tmp, ignore_errors=True)  # a fresh Triton cache per run: not kept
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
