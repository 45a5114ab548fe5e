"""Several LoRA linears that share one input (q, k, v; gate, up), reading X once.

The A matrices are concatenated (R = r₁+…+rₙ rows) so a single pass over X gives S = (D⊙X)A_catᵀ for
every projection, and a single pass in backward gives dA_cat and the LoRA part of dX:

    y_i = XW_iᵀ (+b_i) + s_i·S_i B_iᵀ            S_i = columns of S for projection i
    dS_i = s_i·G_i B_i      dB_i = s_i·G_iᵀ S_i    (one read of each G_i)
    dA_cat = dS_catᵀ(D⊙X)   dX = Σ G_i W_i + (dS_cat·A_cat)⊙D

Saved: X once, S (M×R) and the seed (the torch backend: its bool mask too). PEFT keeps X̂ and a mask per projection: 96.2 MiB for q,k,v at
M=2048, K=4096, bf16, p=0.05, against 16 MiB + S here. All projections share one dropout mask D
(PEFT draws one per projection); that is the price of reading X once.
The kernels and per-backend step functions live in ``lora_linear.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from moopt_kernels._backend import resolve_backend
from moopt_kernels.lora_linear import lora_down, lora_grad_in, lora_grad_out, torch_down, torch_grad_in, torch_keep


class LoRAMultiLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scalings, dropout_p, seed, backend, *params):
        n = len(scalings)
        weights, biases, lora_as, lora_bs = (params[i * n:(i + 1) * n] for i in range(4))
        x2 = x.reshape(-1, x.shape[-1])
        ranks = [a.shape[0] for a in lora_as]
        a_cat = torch.cat([a.to(x.dtype) for a in lora_as])  # R×K, R = Σ r_i
        if backend == "torch":  # the CPU path keeps its mask (bool, M×K) rather than draw it again
            keep, scale = torch_keep(seed, x2.shape, dropout_p, x2.device)
            s_cat, x_saved = torch_down(x2, a_cat, keep, scale)  # X̂ is kept in place of X
        else:
            keep, scale = None, 1.0
            s_cat, x_saved = lora_down(x2, a_cat, seed, dropout_p, backend), x2
        outs = []
        for w, bias, b, s, cols in zip(weights, biases, lora_bs, scalings, s_cat.split(ranks, dim=1)):
            y = F.linear(x2, w, bias)
            y.addmm_(cols.to(x.dtype), b.to(x.dtype).t(), alpha=s)
            outs.append(y.view(*x.shape[:-1], w.shape[0]))
        ctx.save_for_backward(x_saved, s_cat, keep, *weights, *lora_as, *lora_bs)
        ctx.scalings, ctx.dropout_p, ctx.seed, ctx.backend, ctx.keep_scale = scalings, dropout_p, seed, backend, scale
        ctx.x_shape, ctx.ranks = x.shape, ranks
        ctx.set_materialize_grads(False)  # an unused output costs no zero-filled M×N gradient
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        n = len(ctx.scalings)
        x2, s_cat, keep, *rest = ctx.saved_tensors
        weights, lora_as, lora_bs = rest[:n], rest[n:2 * n], rest[2 * n:]
        ds_dtype = torch.float32 if ctx.backend == "triton" else x2.dtype
        ds_cat = torch.zeros((x2.shape[0], sum(ctx.ranks)), device=x2.device, dtype=ds_dtype)
        ds_cols = ds_cat.split(ctx.ranks, dim=1)
        s_cols = s_cat.split(ctx.ranks, dim=1)
        need_dx = ctx.needs_input_grad[0]
        dx = None
        dbs = []
        for i, g in enumerate(grads):
            if g is None:  # this projection's output was not used
                dbs.append(None)
                continue
            g2 = g.reshape(-1, weights[i].shape[0])
            _, db = lora_grad_out(
                g2, lora_bs[i].to(x2.dtype), s_cols[i], ctx.scalings[i], ctx.backend, ds_out=ds_cols[i]
            )
            dbs.append(db.to(lora_bs[i].dtype))
            if need_dx:
                dx = g2 @ weights[i] if dx is None else dx.addmm_(g2, weights[i])
        a_cat = torch.cat([a.to(x2.dtype) for a in lora_as])
        if ctx.backend == "torch":
            da_cat = torch_grad_in(x2, a_cat, ds_cat, dx, keep, ctx.keep_scale)
        else:
            da_cat = lora_grad_in(x2, a_cat, ds_cat, dx, ctx.seed, ctx.dropout_p, ctx.backend)
        das = [da.to(a.dtype) for da, a in zip(da_cat.split(ctx.ranks, dim=0), lora_as)]
        grad_x = dx.view(ctx.x_shape) if dx is not None else None
        return (grad_x, None, None, None, None, *([None] * n), *([None] * n), *das, *dbs)


def lora_multi_linear(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    lora_as: Sequence[torch.Tensor],
    lora_bs: Sequence[torch.Tensor],
    scalings: Sequence[float],
    dropout_p: float = 0.0,
    seed: int = 0,
    backend: str = "auto",
    biases: Sequence[torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, ...]:
    """``tuple(lora_linear(x, weights[i], lora_as[i], lora_bs[i], scalings[i], ...) for i)`` with X read
    once and one dropout mask shared by all projections. Ranks may differ between projections."""
    n = len(weights)
    if not (n == len(lora_as) == len(lora_bs) == len(scalings)) or n == 0:
        raise ValueError(
            f"weights, lora_as, lora_bs, scalings must have the same non-zero length, got "
            f"{n}, {len(lora_as)}, {len(lora_bs)}, {len(scalings)}"
        )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    biases = list(biases) if biases is not None else [None] * n
    which = resolve_backend(backend, x.device)
    return LoRAMultiLinearFunction.apply(
        x, tuple(float(s) for s in scalings), float(dropout_p), int(seed), which,
        *weights, *biases, *lora_as, *lora_bs,
    )
