"""The fused LoRA kernels in bf16 against an fp64 reference at Llama shapes (the GPU check's correctness step).

    python -P benchmarks/check_kernels.py --device cuda --out-dir DIR     # triton path, Llama-3 widths
    python -P benchmarks/check_kernels.py --device cpu --out-dir DIR      # torch path, tiny widths (dry run)

For each case (single projection and q,k,v fused; r 8, 16, 64; dropout 0 and 0.05; M = 2048 rows),
y, dX, dA and dB of ``lora_linear`` / ``lora_multi_linear`` are compared with fp64 autograd on the
same inputs and the same dropout mask, under FlashAttention's rule (tests/kernels/conftest.py): max
error <= 2 x plain PyTorch bf16's max error + 1e-5, mean error <= 1.5 x its mean + 1e-5. Writes
kernels_<device>.csv (case, tensor, kernel and torch max/mean errors, ok) and exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch
from moopt_kernels import lora_linear, lora_multi_linear, resolve_backend

COLUMNS = ["case", "backend", "tensor", "max_err", "torch_bf16_max_err", "mean_err", "torch_bf16_mean_err", "ok"]


def reference(x, ws, as_, bs, scaling, mask, gs):
    """Every projection's y and dX, dA, dB by autograd on the unfused formula, in x's dtype."""
    x, as_, bs = x.detach().clone().requires_grad_(), [t.detach().clone().requires_grad_() for t in as_], \
        [t.detach().clone().requires_grad_() for t in bs]
    x_hat = x if mask is None else x * mask.to(x.dtype)
    ys = [x @ w.t() + scaling * (x_hat @ a.t()) @ b.t() for w, a, b in zip(ws, as_, bs)]
    torch.autograd.backward(ys, gs)
    return [y.detach() for y in ys], x.grad, [a.grad for a in as_], [b.grad for b in bs]


def run_case(m, k, ns, r, p, device, backend):
    gen = torch.Generator(device="cpu").manual_seed(r * 7 + len(ns))
    def rand(*s):
        return torch.randn(*s, generator=gen).to(device)
    x64 = rand(m, k).double()
    ws64 = [rand(n, k).double() / k**0.5 for n in ns]
    as64 = [rand(r, k).double() / k**0.5 for _ in ns]
    bs64 = [rand(n, r).double() / r**0.5 for n in ns]  # B != 0: dA would be 0 and hide bugs
    gs64 = [rand(m, n).double() for n in ns]
    scaling, seed = 2.0, 1234
    def low(ts):
        return [t.to(torch.bfloat16) for t in ts]
    x = x64.to(torch.bfloat16).requires_grad_()
    as_, bs = [a.detach().requires_grad_() for a in low(as64)], [b.detach().requires_grad_() for b in low(bs64)]
    if len(ns) == 1:
        ys = [lora_linear(x, low(ws64)[0], as_[0], bs[0], scaling, dropout_p=p, seed=seed, backend=backend)]
    else:
        ys = list(lora_multi_linear(x, low(ws64), as_, bs, [scaling] * len(ns), dropout_p=p, seed=seed, backend=backend))
    torch.autograd.backward(ys, low(gs64))
    mask = None
    if p > 0:
        from moopt_kernels.lora_linear import dropout_mask

        mask = dropout_mask(seed, (m, k), p, device, resolve_backend(backend, device))
    ref64 = reference(x64, ws64, as64, bs64, scaling, None if mask is None else mask.double(), gs64)
    ref_lp = reference(x.detach(), low(ws64), low(as64), low(bs64), scaling, mask, low(gs64))
    out = ([y.detach() for y in ys], x.grad, [a.grad for a in as_], [b.grad for b in bs])
    rows = []
    for name, got, truth, torch_lp in zip(("y", "dX", "dA", "dB"), out, ref64, ref_lp):
        got, truth, torch_lp = (t if isinstance(t, list) else [t] for t in (got, truth, torch_lp))
        for i, (g, t, tl) in enumerate(zip(got, truth, torch_lp)):
            err, base = (g.double() - t).abs(), (tl.double() - t).abs()
            ok = bool(err.max() <= 2 * base.max() + 1e-5 and err.mean() <= 1.5 * base.mean() + 1e-5)
            rows.append({"tensor": f"{name}[{i}]" if len(got) > 1 else name, "max_err": f"{err.max():.3g}",
                         "torch_bf16_max_err": f"{base.max():.3g}", "mean_err": f"{err.mean():.3g}",
                         "torch_bf16_mean_err": f"{base.mean():.3g}", "ok": ok})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out-dir", type=Path, required=True)
    a = ap.parse_args()
    gpu = a.device == "cuda"
    m, k, qkv = (2048, 4096, (4096, 1024, 1024)) if gpu else (64, 64, (64, 16, 16))
    backend = "triton" if gpu else "torch"
    rows = []
    for ns in ((qkv[0],), qkv):
        for r in (8, 16, 64):
            for p in (0.0, 0.05):
                case = f"{k}->{'+'.join(map(str, ns))} M={m} r={r} p={p}"
                for row in run_case(m, k, ns, r, p, a.device, backend):
                    rows.append({"case": case, "backend": backend, **row})
                print(case, "ok" if all(r_["ok"] for r_ in rows if r_["case"] == case) else "FAILED", flush=True)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    path = a.out_dir / f"kernels_{a.device}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    bad = [r for r in rows if not r["ok"]]
    print(f"{len(rows) - len(bad)}/{len(rows)} tensors within the rule -> {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
