"""What fixing glibc's malloc thresholds (``moopt.memory.rss.steady_heap``) costs a training step on the CPU.

    python benchmarks/bench_steady_heap.py                         # 8x128 and 4x512, 3 processes per arm
    python benchmarks/bench_steady_heap.py --shapes 16x256 --repeats 5

A CPU trial whose peak RSS is compared with a budget (``--memory_constraint``, or ``peak_memory_gb`` as an
objective) runs with the mmap threshold fixed at 4 MiB, so that its peak does not depend on the order its
tensors were freed in; tensors of 4 MiB and more are then mapped and unmapped every time. This measures
the price: bench_trial's moopt worker (the trial's setup and step, fully-labelled synthetic rows of exactly
``seq`` tokens, bf16, r 16 on all linears, dropout 0.05), each arm a fresh process, arms alternating
(A B, B A, ...). Writes ``benchmarks/results/steady_heap_cpu.csv`` (benchmarks/common.py's schema; provider
``default`` or ``steady``) and prints steady/default of the median tokens/s and peak RSS per shape.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, ROOT, write_rows  # noqa: E402

ARMS = ("default", "steady")


def run_arm(arm: str, a: dict) -> dict:
    """One fresh bench_trial.py moopt worker (run as a script: no benchmark imports another)."""
    from moopt.memory.rss import STEADY_HEAP_ENV

    env = dict(os.environ, OMP_NUM_THREADS=str(a["threads"]), TOKENIZERS_PARALLELISM="false")
    env.pop(STEADY_HEAP_ENV, None)
    if arm == "steady":
        env[STEADY_HEAP_ENV] = "1"  # bench_trial's worker then calls steady_heap, as moopt.train.worker does
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_trial.py"), "--worker", "moopt",
                           "--worker-args", json.dumps(a)], capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{arm} worker failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["8x128", "4x512"], help="batch x seq")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per arm")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per process (after one warm-up)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--out", default=str(RESULTS / "steady_heap_cpu.csv"))
    args = parser.parse_args()
    from moopt.train.models import resolve_model

    model = resolve_model("smollm2-135m")
    rows, summary = [], []
    for shape in args.shapes:
        batch, seq = map(int, shape.split("x"))
        a = dict(model=model, device="cpu", threads=args.threads, batch=batch, seq=seq, r=16, alpha=32.0, dropout=0.05,
                 targets="all-linear", warmup=1, steps=args.steps, data="full", dtype=args.dtype)
        got = {arm: [] for arm in ARMS}
        for rep in range(args.repeats):
            for arm in (ARMS if rep % 2 == 0 else ARMS[::-1]):
                res = run_arm(arm, a)
                got[arm].append(res)
                print(f"{shape} {arm}: {res['tokens_per_s']:.1f} tokens/s, peak {res['peak_mib']:.0f} MiB", flush=True)
                params = dict(shape=shape, dtype=args.dtype, steps=args.steps, repeat=rep)
                rows += [dict(what="tokens_per_s", problem="train_step/all-linear/full", provider=arm, device="cpu",
                              value=round(res["tokens_per_s"], 2), unit="tokens/s", params=params),
                         dict(what="peak_memory", problem="train_step/all-linear/full", provider=arm, device="cpu",
                              value=round(res["peak_mib"], 1), unit="MiB", params=params)]
        tok = {arm: statistics.median(r["tokens_per_s"] for r in got[arm]) for arm in ARMS}
        peak = {arm: statistics.median(r["peak_mib"] for r in got[arm]) for arm in ARMS}
        summary.append(f"{shape}: tokens/s steady/default {tok['steady'] / tok['default']:.3f} "
                       f"({tok['steady']:.0f} / {tok['default']:.0f}); peak RSS {peak['steady']:.0f} / {peak['default']:.0f} MiB")
    path = write_rows(rows, Path(args.out))
    print("\n".join(summary))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
