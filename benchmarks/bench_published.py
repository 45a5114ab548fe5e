"""moopt's analytic memory estimate vs published measured GPU peaks of other stacks (no GPU needed).

    python benchmarks/bench_published.py [--out PATH]

For each row of benchmarks/published_peaks.py: the estimate of the same setting, in the same measure
(allocated / reserved / the whole process against the GPU's capacity), the signed error, and the
estimate with each CUDA-side term of moopt.memory.estimate switched off, to show what each term changed.
Writes ``benchmarks/results/memory_published.csv`` (benchmarks/common.py's schema): per row ``published`` and ``estimate`` (GiB), ``error`` (pct) and one ``without_<term>`` error
per term; then summary rows (median |error|, how many rows the estimate is under).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, write_rows  # noqa: E402
from published_peaks import PUBLISHED  # noqa: E402

GIB = 1024**3


def trial_for(row: dict):
    from moopt.config import TrialConfig

    return TrialConfig.from_dict({
        "training": {"batch_size": row["b"]}, "data": {"max_seq_length": row["s"]},
        "lora": {"r": row["r"], "alpha": 2 * row["r"], "dropout": row["dropout"], "target_modules": list(row["targets"])},
        "model": {"quantization": row["quant"], "gradient_checkpointing": row["ckpt"]},
    })


def measured_view(est, measure: str) -> int:
    return {"allocated": est.allocated_bytes, "reserved": est.reserved_bytes, "capacity": est.total_bytes}[measure]


def published_bytes(row: dict) -> float:
    return row["value"] * (1e9 if row["unit"] == "GB" else GIB)


# term -> the estimate_peak keywords that switch it off
ABLATIONS = {
    "cuda_workspaces": {"cuda_workspace_bytes": 0},
    "bnb_kept_inputs": {"bnb_keeps_inputs": False},
    "allocator_slack": {"cuda_slack": 0.0},
    # both terms at once: workspaces and bitsandbytes' kept inputs
    "issue25_terms": {"cuda_workspace_bytes": 0, "bnb_keeps_inputs": False},
}


def estimate(row: dict, kwargs: dict | None = None) -> int:
    from moopt.memory.estimate import estimate_peak, load_model_config

    est = estimate_peak(load_model_config(row["model"]), trial_for(row), device="cuda", kernels=row["kernels"],
                        loss=row["loss"], **(kwargs or {}))
    return measured_view(est, row["measure"])


def run() -> list[dict]:
    out = []
    for row in PUBLISHED:
        pub = published_bytes(row)
        est = estimate(row)
        r = {"id": row["id"], "published": pub, "estimate": est, "error": (est - pub) / pub * 100}
        for term, kwargs in ABLATIONS.items():
            r[f"without_{term}"] = (estimate(row, kwargs) - pub) / pub * 100
        out.append(r)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "memory_published.csv", help="the CSV to write")
    args = parser.parse_args(argv)
    rows = run()
    print(f"{'published peak':34s} {'published':>9s} {'estimate':>9s} {'error':>7s}   " +
          "  ".join(f"w/o {t}" for t in ABLATIONS))
    for r in rows:
        print(f"{r['id']:34s} {r['published'] / GIB:8.2f}G {r['estimate'] / GIB:8.2f}G {r['error']:+6.1f}%   " +
              "  ".join(f"{r[f'without_{t}']:+{len('w/o ' + t)}.1f}" for t in ABLATIONS))
    errs = [r["error"] for r in rows]
    summary = {"median_abs_error": statistics.median(abs(e) for e in errs), "max_abs_error": max(abs(e) for e in errs),
               "rows_under": sum(e < 0 for e in errs), "rows": len(errs)}
    for t in ABLATIONS:
        e = [r[f"without_{t}"] for r in rows]
        summary[f"without_{t}_median_abs_error"] = statistics.median(abs(x) for x in e)
        summary[f"without_{t}_rows_under"] = sum(x < 0 for x in e)
    print(f"\n{len(rows)} published peaks: median |error| {summary['median_abs_error']:.1f}%, max "
          f"{summary['max_abs_error']:.1f}%, estimate under the published figure on {summary['rows_under']} of {len(rows)}")
    for t in ABLATIONS:
        print(f"  without {t}: median |error| {summary[f'without_{t}_median_abs_error']:.1f}%, under on "
              f"{summary[f'without_{t}_rows_under']}")
    path = args.out
    out = []
    for r in rows:
        out.append({"what": "peak_memory", "problem": r["id"], "provider": "published", "device": "cuda",
                    "value": round(r["published"] / GIB, 3), "unit": "GiB"})
        out.append({"what": "peak_memory", "problem": r["id"], "provider": "estimate", "device": "cuda",
                    "value": round(r["estimate"] / GIB, 3), "unit": "GiB"})
        for k in ["error"] + [f"without_{t}" for t in ABLATIONS]:
            out.append({"what": "error" if k == "error" else f"error_{k}", "problem": r["id"], "provider": "estimate",
                        "device": "cuda", "value": round(r[k], 2), "unit": "pct"})
    for k, v in summary.items():
        out.append({"what": "summary", "problem": k, "provider": "estimate", "device": "cuda",
                    "value": round(v, 2), "unit": "pct" if "error" in k else "count"})
    write_rows(out, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
