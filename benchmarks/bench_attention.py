"""Eager vs SDPA attention in moopt's training step on a CPU: what moopt.config.attention_implementation rests on.

PyTorch's SDPA runs bf16 attention on a CPU through its flash kernel; on short rows transformers' eager
path (two matmuls and a softmax) is faster. This measures both in one process, alternating (SDPA, eager,
eager, SDPA per shape, so drift cancels), on SmolLM2-135M with moopt's LoRA (r 16, attention targets) and
``moopt.train.step.train_step``, rows of exactly ``seq`` tokens (half of them labelled):

    python -P benchmarks/bench_attention.py                          # bf16 and fp32, ~9 min on 2 cores
    python -P benchmarks/bench_attention.py --dtypes bfloat16 --shapes 4x64 16x64

Writes benchmarks/results/attention_cpu.csv (benchmarks/common.py's schema: what = step_time (s) per
provider sdpa/eager and eager_speedup, problem = train_step/<dtype>/<batch>x<seq>) and prints the speed-ups.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, device_name, row, write_rows  # noqa: E402

SHAPES = ["4x16", "16x16", "4x64", "16x64", "4x128", "8x256", "4x512"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float32"])
    ap.add_argument("--shapes", nargs="+", default=SHAPES, help="batch x seq")
    ap.add_argument("--tokens", type=int, default=2000, help="tokens timed per measurement (at least 2 steps)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "attention_cpu.csv")
    a = ap.parse_args(argv)
    import torch

    from moopt.config import TrialConfig
    from moopt.train.lora import attach_lora, lora_parameters
    from moopt.train.models import resolve_model
    from moopt.train.recipe import load_model_and_tokenizer
    from moopt.train.step import train_step

    torch.set_num_threads(a.threads)
    path = resolve_model("smollm2-135m")
    path = path[0] if isinstance(path, tuple) else path
    dev = torch.device("cpu")
    rows = []
    for dtype in a.dtypes:
        cfg = TrialConfig.from_dict({"model": {"dtype": dtype}, "lora": {"r": 16, "alpha": 32, "dropout": 0.05}})
        model, _ = load_model_and_tokenizer(str(path), cfg, dev)
        attach_lora(model, r=16, alpha=32, dropout=0.05, target_modules=cfg.lora.target_modules, backend="torch")
        params = lora_parameters(model)
        opt = torch.optim.AdamW(params, lr=1e-5)
        model.train()
        g = torch.Generator().manual_seed(0)

        def timed(impl: str, batch: dict, n: int, model=model, params=params, opt=opt) -> float:
            model.set_attn_implementation(impl)
            for i in range(n + 1):  # the first step is a warm-up
                if i == 1:
                    t = time.perf_counter()
                train_step(model, [batch], params=params, opt=opt, sched=None, max_grad_norm=1.0, device=dev,
                           backend="torch")
            return (time.perf_counter() - t) / n

        for shape in a.shapes:
            b, s = map(int, shape.split("x"))
            ids = torch.randint(100, 40000, (b, s), generator=g)
            labels = ids.clone()
            labels[:, : s // 2] = -100
            batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
            n = max(2, a.tokens // (b * s))
            t = {impl: timed(impl, batch, n) for impl in ("sdpa", "eager")}
            t["eager"] = (t["eager"] + timed("eager", batch, n)) / 2  # sdpa, eager, eager, sdpa
            t["sdpa"] = (t["sdpa"] + timed("sdpa", batch, n)) / 2
            p = {"dtype": dtype, "batch": b, "seq": s, "steps": n, "threads": a.threads, "cpu": device_name("cpu")}
            problem = f"train_step/{dtype}/{shape}"
            rows += [row("step_time", problem, impl, "cpu", round(t[impl], 5), "s", params=p) for impl in ("sdpa", "eager")]
            rows.append(row("eager_speedup", problem, "eager/sdpa", "cpu", round(t["sdpa"] / t["eager"], 3), "ratio", params=p))
            print(f"{dtype} {shape}: SDPA {t['sdpa'] * 1000:.0f} ms, eager {t['eager'] * 1000:.0f} ms a step: "
                  f"eager {t['sdpa'] / t['eager']:.2f}x", flush=True)
    write_rows(rows, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
