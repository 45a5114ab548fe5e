"""Forward+backward time and memory of moopt's LoRA op vs PEFT's LoRA Linear vs the frozen base alone.

    python benchmarks/bench_lora.py            # GPU if present, else CPU (small shapes, torch path)

Writes benchmarks/results/lora_<device>.csv (benchmarks/common.py's schema: problem = the op, params
shape, M, r, p, dtype; what = step_time (ms, median), peak_memory and saved_memory (MiB)) and a PNG of
the time ratios. saved_memory = bytes autograd keeps for backward (non-parameter tensors, each storage counted
once), measured with saved_tensors_hooks on both devices. peak_memory = torch.cuda max_memory_allocated
above the inputs on GPU; on CPU, where torch has no allocator statistics, it is saved_memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from moopt_kernels import lora_linear, lora_multi_linear
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, long, pyplot, write_rows  # noqa: E402

# the CSV's figures: record key -> (what, unit)
WHATS = {"ms": ("step_time", "ms"), "peak_mib": ("peak_memory", "MiB"), "saved_mib": ("saved_memory", "MiB")}
# Llama-3-8B: hidden 4096, 8 KV heads of 128 (k, v: 1024 wide), intermediate 14336.
GPU_OPS = {
    "q_proj": (4096, (4096,)),
    "gate_proj": (4096, (14336,)),
    "down_proj": (14336, (4096,)),
    "fused_qkv": (4096, (4096, 1024, 1024)),  # 4096 -> 6144
}
# The same proportions at a quarter of the width, so a 2-core CPU finishes in about a minute.
CPU_OPS = {
    "q_proj": (1024, (1024,)),
    "gate_proj": (1024, (3584,)),
    "down_proj": (3584, (1024,)),
    "fused_qkv": (1024, (1024, 256, 256)),
}


def build(provider: str, k: int, ns: tuple[int, ...], r: int, p: float, dtype, device):
    """A callable computing every projection's output from x, for one provider, and its tensors that are
    not activations (frozen weights and trainables: saved_mib leaves them out)."""
    bases = [nn.Linear(k, n, bias=False, device=device, dtype=dtype).requires_grad_(False) for n in ns]
    if provider == "base":
        return (lambda x: [b(x) for b in bases]), [b.weight for b in bases]
    if provider == "peft":
        from peft import LoraConfig
        from peft.tuners.lora import Linear as PeftLinear

        config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=p)
        layers = [PeftLinear(b, "default", config, r=r, lora_alpha=2 * r, lora_dropout=p).to(device, dtype) for b in bases]
        for layer in layers:
            layer.train()
        return (lambda x: [layer(x) for layer in layers]), [q for l in layers for q in l.parameters()]
    lora_as = [torch.randn(r, k, device=device, dtype=dtype, requires_grad=True) for _ in ns]
    lora_bs = [torch.randn(n, r, device=device, dtype=dtype, requires_grad=True) for n in ns]
    weights = [b.weight for b in bases]
    seed = iter(range(1 << 30))
    tensors = weights + lora_as + lora_bs
    if len(ns) == 1:
        return (lambda x: [lora_linear(x, weights[0], lora_as[0], lora_bs[0], 2.0, p, next(seed))]), tensors
    return (lambda x: lora_multi_linear(x, weights, lora_as, lora_bs, [2.0] * len(ns), p, next(seed))), tensors


def saved_bytes(fn, x, exclude: set[int]) -> int:
    storages = {}

    def pack(t):
        if t.data_ptr() not in exclude:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(storages.values())


def measure(provider, k, ns, m, r, p, dtype, device, repeats) -> tuple[float, float, float]:
    fn, params = build(provider, k, ns, r, p, dtype, device)
    x = torch.randn(m, k, device=device, dtype=dtype, requires_grad=True)
    grads = [torch.randn(m, n, device=device, dtype=dtype) for n in ns]

    def step():
        x.grad = None
        for q in params:
            q.grad = None  # frozen weights never get one; trainables are reset each step
        torch.autograd.backward(fn(x), grads)

    exclude = {q.data_ptr() for q in params}
    saved = saved_bytes(fn, x, exclude) / 2**20
    if device == "cuda":
        import triton.testing

        ms = triton.testing.do_bench(step, quantiles=(0.5, 0.2, 0.8))[0]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - start) / 2**20
        return ms, peak, saved
    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), saved, saved


# --quick (benchmarks/gpu_check.py): the targets' case on a GPU (M = 8192, r 16 and 64); on a CPU a
# 64-wide dry run of the same code.
QUICK_CPU_OPS = {"q_proj": (64, (64,)), "fused_qkv": (64, (64, 16, 16))}


def run(device: str, repeats: int, quick: bool = False) -> list[dict]:
    on_gpu = device == "cuda"
    ops, ms_, ranks = (GPU_OPS, (2048, 8192), (8, 16, 64)) if on_gpu else (CPU_OPS, (512,), (8, 16))
    if quick:
        ops, ms_, ranks = (GPU_OPS, (8192,), (16, 64)) if on_gpu else (QUICK_CPU_OPS, (64,), (8,))
    dtype = torch.bfloat16 if on_gpu else torch.float32
    name = torch.cuda.get_device_name() if on_gpu else "cpu"
    rows = []
    for op, (k, ns) in ops.items():
        shape = f"{k}->{'+'.join(map(str, ns))}"
        for m in ms_:
            for r in ranks:
                for p in (0.0, 0.05):
                    for provider in ("base", "peft", "moopt"):
                        if provider == "base" and (r, p) != (ranks[0], 0.0):
                            continue  # the base does not depend on r or p: measured once per shape
                        ms, peak, saved = measure(provider, k, ns, m, r, p, dtype, device, repeats)
                        rows.append(dict(op=op, shape=shape, M=m, r=r, p=p, dtype=str(dtype).removeprefix("torch."),
                                         device=name, provider=provider, ms=round(ms, 4), peak_mib=round(peak, 3),
                                         saved_mib=round(saved, 3)))
                        print(rows[-1], flush=True)
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """moopt/peft and moopt/base, peft/base for time and saved memory, per (op, M, r, p)."""
    base = {(r_["op"], r_["M"]): r_ for r_ in rows if r_["provider"] == "base"}
    by = {(r_["op"], r_["M"], r_["r"], r_["p"], r_["provider"]): r_ for r_ in rows}
    out = []
    for (op, m, r, p, prov), row in by.items():
        if prov != "moopt":
            continue
        peft, b = by[(op, m, r, p, "peft")], base[(op, m)]
        out.append(dict(op=op, M=m, r=r, p=p, moopt_over_peft_ms=row["ms"] / peft["ms"],
                        moopt_over_base_ms=row["ms"] / b["ms"], peft_over_base_ms=peft["ms"] / b["ms"],
                        moopt_saved_mib=row["saved_mib"], peft_saved_mib=peft["saved_mib"], base_saved_mib=b["saved_mib"]))
    return out


def plot(summary: list[dict], path: Path) -> None:
    plt = pyplot()
    labels = [f"{s['op']}\nM={s['M']} r={s['r']} p={s['p']}" for s in summary]
    xs = range(len(summary))
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(summary)), 4))
    ax.bar([x - 0.2 for x in xs], [s["peft_over_base_ms"] for s in summary], 0.4, label="PEFT / base")
    ax.bar([x + 0.2 for x in xs], [s["moopt_over_base_ms"] for s in summary], 0.4, label="moopt / base")
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set_xticks(list(xs), labels, rotation=90, fontsize=6)
    ax.set_ylabel("fwd+bwd time / frozen base")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats on CPU (median reported)")
    parser.add_argument("--quick", action="store_true", help="GPU: M = 8192 and r 16, 64 only; CPU: a dry run at M = 64, r 8 (the GPU check's smoke test)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = run(args.device, args.repeats, args.quick)
    csv_path = write_rows(long(rows, WHATS, {"problem": "op", "provider": "provider", "device": "device"},
                               params=("shape", "M", "r", "p", "dtype")), args.out_dir / f"lora_{args.device}.csv")
    summary = ratios(rows)
    plot(summary, args.out_dir / f"lora_{args.device}.png")
    for s in summary:
        print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()))
    print(f"wrote {csv_path}")


if __name__ == "__main__":
    main()
