"""Every Triton kernel variant the search space can launch, compiled for sm_90 (H200) and sm_80 (A100)
on the CPU: shared memory, registers and spills per variant (moopt_kernels.aot; no GPU needed).

    python -P benchmarks/bench_compile.py            # both targets, ~2-4 min on 2 cores

Writes benchmarks/results/compile_sm90.csv and compile_sm80.csv, one row per compiled variant:
kernel, dtype, num_warps, the constexprs (HAS_DROPOUT, HAS_DX, UPCAST, BLOCK_M, BLOCK_K, BLOCK_N,
BLOCK_R), shared_kib, max_shared_kib (the target's per-block limit), registers, spill_bytes, fits,
compile_s, n_specs (how many of the launch specs below use it), error. The specs: bf16/fp16/fp32 x
r in {8, 16, 32, 64} x {single, q,k,v fused, gate,up fused} x dropout on/off x dX on/off.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CONSTEXPRS = ["HAS_DROPOUT", "HAS_DX", "UPCAST", "BLOCK_M", "BLOCK_K", "BLOCK_N", "BLOCK_R"]
COLUMNS = ["kernel", "dtype", "num_warps", *CONSTEXPRS, "shared_kib", "max_shared_kib", "registers", "spill_bytes",
           "fits", "compile_s", "n_specs", "error"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        out = a.out_dir / f"compile_sm{arch}.csv"
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for v in variants:
                w.writerow({"kernel": v["kernel"], "dtype": v["dtype"], "num_warps": v["num_warps"],
                            **{c: v["constexprs"].get(c, "") for c in CONSTEXPRS},
                            "shared_kib": round(v["shared_kib"], 1), "max_shared_kib": TARGETS[arch]["max_shared"] / 1024,
                            "registers": v["registers"], "spill_bytes": v["spill_bytes"], "fits": v["fits"],
                            "compile_s": round(v["compile_s"], 2), "n_specs": len(v["specs"]), "error": v["error"] or ""})
        n_bad = sum(1 for v in variants if v["error"] or not v["fits"])
        n_spill = sum(1 for v in variants if v["spill_bytes"])
        print(f"sm_{arch}: {len(variants)} variants, {n_bad} not launchable, {n_spill} spilling, "
              f"max shared {max(v['shared_kib'] for v in variants):.0f} KiB, max registers "
              f"{max(v['registers'] for v in variants)}, compile {sum(v['compile_s'] for v in variants):.0f} s -> {out}")
        bad += n_bad
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
