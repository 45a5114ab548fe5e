"""Fused LoRA linear: y = x·Wᵀ (+bias) + s·(D⊙x)·Aᵀ·Bᵀ with W frozen.

Shapes follow PEFT: W is N×K, A (``lora_A.weight``) is r×K, B (``lora_B.weight``) is N×r, s = alpha/r,
D the dropout mask scaled by 1/(1-p). With X the M×K input (leading dims flattened):

    forward   S = (D⊙X)Aᵀ (M×r)            Y = XWᵀ + s·SBᵀ
    backward  dS = s·GB   dB = s·GᵀS   dA = dSᵀ(D⊙X)   dX = GW + (dS·A)⊙D      (no dW)

Saved for backward: X, S and the dropout seed. On the triton backend the mask is regenerated from the
seed, never stored: at M=2048, K=4096, bf16, p=0.05 PEFT keeps X̂ and the mask (32.3 MiB), this keeps
X + S (16.1 MiB). The torch backend (the CPU path) keeps X̂ in place of X, and its bool mask (1 byte
per element of X): drawing it again in backward cost more than a projection there.
Products always contract through r; B·A (N×K) is never formed.

Two backends compute the same math (one availability flag and override, _backend.py):
- ``torch``: plain PyTorch, the reference and the CPU path. Mask from 16-bit draws of a Generator
  seeded per call (``torch_keep``), so (seed, shape, p) fixes it.
- ``triton``: kernel 1 reads X once for dropout + S (mask from ``tl.rand(seed, m*K + k)``); the base
  GEMM stays on cuBLAS with s·SBᵀ added by addmm; kernel 2 reads G once for both dS and dB; kernel 3
  reads X once more for dA and adds (dS·A)⊙D into dX = GW in place.
The two backends draw different masks for the same seed; ``dropout_mask`` returns the one each uses.

The step functions (``lora_down``, ``lora_grad_out``, ``lora_grad_in``) are shared with
``lora_multi.py``, whose projections share one X and one mask.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from moopt_kernels._backend import TritonKernelError, interpreting, next_pow2, resolve_backend

# The kernels' element offsets are int32 (offs_m * stride + k, and tl.rand's m*K + k): one launch covers at most
# 2**31 elements of X (M×K) and of G (M×N), e.g. M = 149_796 tokens at Llama-8B's 14336-wide MLP.
MAX_OFFSET_ELEMENTS = 2**31 - 1

# Largest r-tile a launch takes: a larger rank (r > 256, or a fused q,k,v rank over 256) is split into
# launches over column blocks of r, each one within _TILES below (fp32 grad_in: blocks of 64).
MAX_BLOCK_R = 256

# Dropout-mask kernel tiles (tests only).
BLOCK_M = 64
BLOCK_K = 64


# (BLOCK_M, BLOCK_K or BLOCK_N, num_warps) per kernel, element size and r-tile. Chosen with
# moopt_kernels.aot, which compiles every launch for sm_90 and sm_80 without a GPU (table in
# benchmarks/results/compile_sm90.csv): each entry fits an H200's (227 KiB) and an A100's (163 KiB)
# shared memory and spills no registers. The fp32 accumulators (S, dS, dA) grow as BLOCK_R x the other
# tile, so the M/K tiles shrink and the warps double as BLOCK_R grows. Before (64 x 64, 4 warps
# everywhere): fp32 grad_in at BLOCK_R 256 needed 240 KiB of shared memory, and bf16 grad_in spilled
# 1968 bytes per thread at BLOCK_R 256. fp32 grad_in with dX (fp32 dots run on FMA units, with large
# register fragments) spilled at every tile tried above BLOCK_R 64 (0.5-7 KiB per thread at 32x16 and
# 16x16, 4 or 8 warps), so it takes r in blocks of 64 at 16x16.
_TILES = {
    # kernel, bytes per element: {BLOCK_R: (BLOCK_M, BLOCK_K|BLOCK_N, num_warps)}
    ("down", 2): {16: (64, 64, 4), 32: (64, 64, 4), 64: (64, 64, 8), 128: (64, 32, 8), 256: (32, 32, 8)},
    ("down", 4): {16: (64, 32, 4), 32: (64, 32, 4), 64: (64, 32, 8), 128: (32, 32, 8), 256: (32, 32, 8)},
    ("grad_out", 2): {16: (64, 64, 4), 32: (64, 64, 4), 64: (64, 64, 8), 128: (64, 32, 8), 256: (32, 32, 8)},
    ("grad_out", 4): {16: (64, 64, 4), 32: (64, 32, 8), 64: (64, 32, 8), 128: (32, 32, 8), 256: (32, 32, 8)},
    ("grad_in", 2): {16: (32, 64, 4), 32: (64, 64, 8), 64: (32, 64, 8), 128: (32, 16, 8), 256: (32, 16, 8)},
    ("grad_in", 4): {16: (32, 32, 4), 32: (32, 32, 8), 64: (16, 16, 8)},
}


def tiles(kernel: str, dtype: torch.dtype, block_r: int) -> dict[str, int]:
    """Launch parameters of ``kernel`` ("down" | "grad_out" | "grad_in") for this dtype and r-tile
    (a power of two from 16 to ``max_block_r(kernel, dtype)``)."""
    block_m, block_other, warps = _TILES[(kernel, 4 if dtype == torch.float32 else 2)][max(block_r, 16)]
    other = "BLOCK_N" if kernel == "grad_out" else "BLOCK_K"
    return {"BLOCK_M": block_m, other: block_other, "num_warps": warps}


@functools.cache
def _kernels() -> SimpleNamespace:
    """Import triton and define the kernels on first use of the triton backend.

    Triton reads TRITON_INTERPRET when it is imported and when ``@triton.jit`` decorates (its own
    ``tl.rand`` included), so deferring both to here lets the tests switch the CPU interpreter on after
    ``moopt_kernels`` was imported, and keeps ``import moopt_kernels`` free of triton (~1 s).
    """
    global triton, tl  # the kernels below resolve ``tl`` as a module global, as Triton requires
    import triton
    import triton.language as tl

    # M (the batch length) and the seed are plain runtime values: one binary for every batch and seed
    @triton.jit(do_not_specialize=["seed", "M"])
    def _lora_down_kernel(
        x_ptr, a_ptr, s_ptr,
        M, K, R,
        stride_xm, stride_xk, stride_ar, stride_ak, stride_sm, stride_sr,
        seed, p, inv_keep,
        HAS_DROPOUT: tl.constexpr, UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    ):
        """S[m-block] = (D⊙X)Aᵀ, fp32, one pass over the X rows of this block."""
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_r = tl.arange(0, BLOCK_R)
        acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            in_x = (offs_m[:, None] < M) & (offs_k[None, :] < K)
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk, mask=in_x, other=0.0)
            if UPCAST:  # the interpreter holds bf16 as uint16: its bf16 tl.dot and arithmetic are wrong
                x = x.to(tl.float32)
            if HAS_DROPOUT:
                keep = tl.rand(seed, offs_m[:, None] * K + offs_k[None, :]) >= p
                x = tl.where(keep, x * inv_keep, 0.0).to(x.dtype)
            a_t = tl.load(  # Aᵀ tile, BLOCK_K × BLOCK_R
                a_ptr + offs_k[:, None] * stride_ak + offs_r[None, :] * stride_ar,
                mask=(offs_k[:, None] < K) & (offs_r[None, :] < R), other=0.0,
            )
            acc += tl.dot(x, a_t.to(x.dtype), input_precision="ieee")
        tl.store(
            s_ptr + offs_m[:, None] * stride_sm + offs_r[None, :] * stride_sr, acc,
            mask=(offs_m[:, None] < M) & (offs_r[None, :] < R),
        )

    @triton.jit(do_not_specialize=["M"])
    def _lora_grad_out_kernel(
        g_ptr, b_ptr, s_ptr, ds_ptr, db_ptr,
        M, N, R, scaling,
        stride_gm, stride_gn, stride_bn, stride_br, stride_sm, stride_sr,
        stride_dsm, stride_dsr, stride_dbn, stride_dbr,
        UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    ):
        """One read of G for both dS = s·GB (this m-block) and dB += s·Gᵀ S (fp32 atomics over m-blocks)."""
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_r = tl.arange(0, BLOCK_R)
        in_s = (offs_m[:, None] < M) & (offs_r[None, :] < R)
        s = tl.load(s_ptr + offs_m[:, None] * stride_sm + offs_r[None, :] * stride_sr, mask=in_s, other=0.0)
        ds = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            g = tl.load(
                g_ptr + offs_m[:, None] * stride_gm + offs_n[None, :] * stride_gn,
                mask=(offs_m[:, None] < M) & (offs_n[None, :] < N), other=0.0,
            )
            in_b = (offs_n[:, None] < N) & (offs_r[None, :] < R)
            b = tl.load(b_ptr + offs_n[:, None] * stride_bn + offs_r[None, :] * stride_br, mask=in_b, other=0.0)
            if UPCAST:
                g = g.to(tl.float32)
            ds += tl.dot(g, b.to(g.dtype), input_precision="ieee")
            db = tl.dot(tl.trans(g), s.to(g.dtype), input_precision="ieee")
            tl.atomic_add(
                db_ptr + offs_n[:, None] * stride_dbn + offs_r[None, :] * stride_dbr, db * scaling, mask=in_b
            )
        tl.store(ds_ptr + offs_m[:, None] * stride_dsm + offs_r[None, :] * stride_dsr, ds * scaling, mask=in_s)

    @triton.jit(do_not_specialize=["seed", "M", "rows_per_prog"])
    def _lora_grad_in_kernel(
        x_ptr, a_ptr, ds_ptr, dx_ptr, da_ptr,
        M, K, R,
        stride_xm, stride_xk, stride_ar, stride_ak, stride_dsm, stride_dsr,
        stride_dxm, stride_dxk, stride_dar, stride_dak,
        seed, p, inv_keep, rows_per_prog,
        HAS_DROPOUT: tl.constexpr, HAS_DX: tl.constexpr, UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    ):
        """For a K-block and a run of rows: dA += dSᵀ(D⊙X) and dX += (dS·A)⊙D, mask regenerated once."""
        offs_k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
        row0 = tl.program_id(1) * rows_per_prog
        offs_r = tl.arange(0, BLOCK_R)
        in_a = (offs_r[:, None] < R) & (offs_k[None, :] < K)
        a = tl.load(a_ptr + offs_r[:, None] * stride_ar + offs_k[None, :] * stride_ak, mask=in_a, other=0.0)
        da = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
        for m0 in range(0, rows_per_prog, BLOCK_M):
            offs_m = row0 + m0 + tl.arange(0, BLOCK_M)
            in_x = (offs_m[:, None] < M) & (offs_k[None, :] < K)
            ds = tl.load(
                ds_ptr + offs_m[:, None] * stride_dsm + offs_r[None, :] * stride_dsr,
                mask=(offs_m[:, None] < M) & (offs_r[None, :] < R), other=0.0,
            )
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk, mask=in_x, other=0.0)
            if UPCAST:
                x = x.to(tl.float32)
            if HAS_DROPOUT:
                keep = tl.rand(seed, offs_m[:, None] * K + offs_k[None, :]) >= p
                x = tl.where(keep, x * inv_keep, 0.0).to(x.dtype)
            da += tl.dot(tl.trans(ds.to(x.dtype)), x, input_precision="ieee")
            if HAS_DX:
                lora_dx = tl.dot(ds.to(x.dtype), a.to(x.dtype), input_precision="ieee")
                if HAS_DROPOUT:
                    lora_dx = tl.where(keep, lora_dx * inv_keep, 0.0)
                dx_ptrs = dx_ptr + offs_m[:, None] * stride_dxm + offs_k[None, :] * stride_dxk
                dx = tl.load(dx_ptrs, mask=in_x, other=0.0).to(tl.float32) + lora_dx
                tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=in_x)
        tl.atomic_add(da_ptr + offs_r[:, None] * stride_dar + offs_k[None, :] * stride_dak, da, mask=in_a)

    @triton.jit(do_not_specialize=["seed"])
    def _dropout_mask_kernel(out_ptr, M, K, seed, p, inv_keep, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        """D itself (tests only): the same keep rule as the kernels above."""
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        keep = tl.rand(seed, offs_m[:, None] * K + offs_k[None, :]) >= p
        tl.store(
            out_ptr + offs_m[:, None] * K + offs_k[None, :], tl.where(keep, inv_keep, 0.0),
            mask=(offs_m[:, None] < M) & (offs_k[None, :] < K),
        )

    return SimpleNamespace(
        down=_lora_down_kernel, grad_out=_lora_grad_out_kernel, grad_in=_lora_grad_in_kernel,
        mask=_dropout_mask_kernel,
    )


# ---------------------------------------------------------------------------------------------------
# Step functions, one per backend. x2 is the 2-D M×K input; a is r×K; b is N×r; g2 is M×N.


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _launch(name: str, grid: tuple[int, ...], *args, **kwargs) -> None:
    """``_kernels().<name>[grid](*args, **kwargs)``; a compile or launch failure (anything but a CUDA
    out-of-memory) becomes a TritonKernelError naming the kernel and its constexprs."""
    try:
        getattr(_kernels(), name)[grid](*args, **kwargs)
    except torch.OutOfMemoryError:
        raise
    except Exception as e:
        consts = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        raise TritonKernelError(f"triton kernel {name} ({consts}) failed: {reason}") from e


def max_block_r(kernel: str, dtype: torch.dtype) -> int:
    return min(MAX_BLOCK_R, max(_TILES[(kernel, 4 if dtype == torch.float32 else 2)]))


def _r_blocks(r: int, kernel: str, dtype: torch.dtype) -> list[slice]:
    """Column blocks of the rank dimension, each within what ``kernel`` takes at ``dtype`` in one launch
    (one block for r <= 256, and for r <= 64 in fp32 grad_in)."""
    width = max_block_r(kernel, dtype)
    return [slice(c, min(c + width, r)) for c in range(0, r, width)]


def _upcast(t: torch.Tensor) -> bool:
    return interpreting() and t.dtype == torch.bfloat16


def _check_offsets(m: int, k: int, kernel: str = "mask") -> None:
    """A TritonKernelError (so --kernels auto moves the trial to the torch path) where int32 offsets would wrap."""
    if m * k > MAX_OFFSET_ELEMENTS:
        raise TritonKernelError(f"triton kernel {kernel}: its offsets are int32, so M x width must be <= "
                                f"{MAX_OFFSET_ELEMENTS}, got {m} x {k} (a micro-batch of {m} tokens)")


def dropout_mask(seed: int, shape: tuple[int, int], p: float, device, backend: str = "torch") -> torch.Tensor:
    """The scaled mask D (fp32, M×K) that ``backend`` applies for this seed: 0 or 1/(1-p)."""
    m, k = shape
    if backend == "torch":
        keep, scale = torch_keep(seed, shape, p, device)
        return keep.float() * scale if keep is not None else torch.ones((m, k), device=device)
    _check_offsets(m, k)
    out = torch.empty((m, k), device=device, dtype=torch.float32)
    grid = (_cdiv(m, BLOCK_M), _cdiv(k, BLOCK_K))
    _launch("mask", grid, out, m, k, seed, p, 1.0 / (1.0 - p), BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K)
    return out


def torch_keep(seed: int, shape: tuple[int, int], p: float, device) -> tuple[torch.Tensor | None, float]:
    """The torch backend's dropout for (seed, shape, p): the bool keep mask (None when nothing is
    dropped) and the scale 1/P(keep) of the kept elements.

    Each element is dropped when a 16-bit uniform draw is below round(p·65536), so P(drop) is p to
    within 2⁻¹⁷, and the scale uses the exact P(keep). On the CPU the draws are the four 16-bit parts
    of numpy's SFC64 64-bit outputs (seeded per call): about 4x faster than torch's CPU generator,
    whose mask, drawn twice per step, cost as much as the projections it masks. Elsewhere, the halves
    of 32-bit draws of a torch Generator seeded per call."""
    m, k = shape
    drop = round(p * 65536)
    if drop == 0:
        return None, 1.0
    if torch.device(device).type == "cpu":
        bits = np.random.SFC64(seed).random_raw((m * k + 3) // 4).view(np.uint16)[: m * k]
        keep = torch.from_numpy((bits >= drop).reshape(m, k))
    else:
        gen = torch.Generator(device=device).manual_seed(seed)
        bits = torch.randint(-(2**31), 2**31 - 1, ((m * k + 1) // 2,), generator=gen, device=device, dtype=torch.int32)
        keep = bits.view(torch.int16)[: m * k].view(m, k) >= drop - 32768
    return keep, 65536.0 / (65536 - drop)


def _masked(x2: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """x2 with the dropped elements zeroed (unscaled); the bool mask is widened to x2's dtype first,
    which is cheaper than multiplying by a bool tensor."""
    return x2 if keep is None else x2 * keep.view(torch.uint8).to(x2.dtype)


def torch_down(x2: torch.Tensor, a: torch.Tensor, keep: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, X̂) on the torch backend: X̂ = X with ``keep``'s dropped elements zeroed, S = X̂Aᵀ·``scale``
    (= (D⊙X)Aᵀ, the scale applied to the M×r S)."""
    x_hat = _masked(x2, keep)
    s = x_hat @ a.t()
    return (s if keep is None else s.mul_(scale)), x_hat


def torch_grad_in(x_hat: torch.Tensor, a: torch.Tensor, ds: torch.Tensor, dx: torch.Tensor | None,
                  keep: torch.Tensor | None, scale: float) -> torch.Tensor:
    """dA = dSᵀ(D⊙X) (from X̂ of :func:`torch_down`), and (dS·A)⊙D added to ``dx`` in place when
    given, on the torch backend."""
    ds = ds.to(x_hat.dtype)
    if keep is None:
        da = ds.t() @ x_hat
        if dx is not None:
            dx.addmm_(ds, a)
        return da
    da = (ds.t() @ x_hat).mul_(scale)
    if dx is not None:
        dx.addcmul_(ds @ (a * scale), keep.view(torch.uint8).to(dx.dtype))
    return da


def lora_down(x2: torch.Tensor, a: torch.Tensor, seed: int, p: float, backend: str) -> torch.Tensor:
    """S = (D⊙X)Aᵀ, M×r. fp32 on the triton path (r columns: 64 KiB per 1k tokens at r=16)."""
    if backend == "torch":
        return torch_down(x2, a, *torch_keep(seed, x2.shape, p, x2.device))[0]
    m, k = x2.shape
    _check_offsets(m, k, "down")
    s = torch.empty((m, a.shape[0]), device=x2.device, dtype=torch.float32)
    for cols in _r_blocks(a.shape[0], "down", x2.dtype):
        a_c, s_c = a[cols], s[:, cols]
        r = a_c.shape[0]
        block_r = next_pow2(r)
        t = tiles("down", x2.dtype, block_r)
        _launch(
            "down", (_cdiv(m, t["BLOCK_M"]),),
            x2, a_c, s_c, m, k, r,
            x2.stride(0), x2.stride(1), a_c.stride(0), a_c.stride(1), s_c.stride(0), s_c.stride(1),
            seed, p, 1.0 / (1.0 - p),
            HAS_DROPOUT=p > 0.0, UPCAST=_upcast(x2), BLOCK_R=block_r, **t,
        )
    return s


def lora_grad_out(
    g2: torch.Tensor, b: torch.Tensor, s: torch.Tensor, scaling: float, backend: str,
    ds_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """dS = s·GB (written into ``ds_out`` when given: a column slice of the multi-projection dS) and
    dB = s·GᵀS. Returns (dS, dB); dB is fp32 on the triton path."""
    if backend == "torch":
        ds = (g2 @ b) * scaling
        if ds_out is not None:
            ds_out.copy_(ds)
            ds = ds_out
        return ds, (g2.t() @ s.to(g2.dtype)) * scaling
    m, n = g2.shape
    _check_offsets(m, n, "grad_out")
    ds = ds_out if ds_out is not None else torch.empty((m, b.shape[1]), device=g2.device, dtype=torch.float32)
    db = torch.zeros((n, b.shape[1]), device=g2.device, dtype=torch.float32)
    for cols in _r_blocks(b.shape[1], "grad_out", g2.dtype):
        b_c, s_c, ds_c, db_c = b[:, cols], s[:, cols], ds[:, cols], db[:, cols]
        r = b_c.shape[1]
        block_r = next_pow2(r)
        t = tiles("grad_out", g2.dtype, block_r)
        _launch(
            "grad_out", (_cdiv(m, t["BLOCK_M"]),),
            g2, b_c, s_c, ds_c, db_c, m, n, r, scaling,
            g2.stride(0), g2.stride(1), b_c.stride(0), b_c.stride(1), s_c.stride(0), s_c.stride(1),
            ds_c.stride(0), ds_c.stride(1), db_c.stride(0), db_c.stride(1),
            UPCAST=_upcast(g2), BLOCK_R=block_r, **t,
        )
    return ds, db


def lora_grad_in(
    x2: torch.Tensor, a: torch.Tensor, ds: torch.Tensor, dx: torch.Tensor | None, seed: int, p: float,
    backend: str,
) -> torch.Tensor:
    """dA = dSᵀ(D⊙X), returned; when ``dx`` (= GW, M×K) is given, (dS·A)⊙D is added to it in place."""
    if backend == "torch":
        keep, scale = torch_keep(seed, x2.shape, p, x2.device)
        return torch_grad_in(_masked(x2, keep), a, ds, dx, keep, scale)
    m, k = x2.shape
    _check_offsets(m, k, "grad_in")
    da = torch.zeros((a.shape[0], k), device=x2.device, dtype=torch.float32)
    dx_arg = dx if dx is not None else x2  # never written when HAS_DX is False
    for cols in _r_blocks(a.shape[0], "grad_in", x2.dtype):  # each block adds its share of dX in place
        a_c, ds_c, da_c = a[cols], ds[:, cols], da[cols]
        r = a_c.shape[0]
        block_r = next_pow2(r)
        t = tiles("grad_in", x2.dtype, block_r)
        block_m, k_blocks = t["BLOCK_M"], _cdiv(k, t["BLOCK_K"])
        # Enough programs to fill the GPU (~4 per SM on a 132-SM H200) while each keeps a long run of
        # rows, so the fp32 dA atomics stay a small fraction of the X traffic. One per K-block on CPU.
        splits = max(1, min(_cdiv(m, block_m), 4 * 132 // k_blocks)) if x2.is_cuda else 1
        rows = _cdiv(_cdiv(m, splits), block_m) * block_m  # a runtime argument: no recompile per batch length
        _launch(
            "grad_in", (k_blocks, _cdiv(m, rows)),
            x2, a_c, ds_c, dx_arg, da_c, m, k, r,
            x2.stride(0), x2.stride(1), a_c.stride(0), a_c.stride(1), ds_c.stride(0), ds_c.stride(1),
            dx_arg.stride(0), dx_arg.stride(1), da_c.stride(0), da_c.stride(1),
            seed, p, 1.0 / (1.0 - p), rows,
            HAS_DROPOUT=p > 0.0, HAS_DX=dx is not None, UPCAST=_upcast(x2), BLOCK_R=block_r, **t,
        )
    return da


# ---------------------------------------------------------------------------------------------------


class LoRALinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling, dropout_p, seed, backend):
        k = x.shape[-1]
        x2 = x.reshape(-1, k)  # a view when possible; a non-contiguous x is copied once here
        a = lora_a.to(x.dtype)
        b = lora_b.to(x.dtype)
        if backend == "torch":  # keeps X̂ in place of X, and the bool mask (X is needed only as X̂)
            keep, scale = torch_keep(seed, x2.shape, dropout_p, x2.device)
            s, x_saved = torch_down(x2, a, keep, scale)
        else:
            keep, scale = None, 1.0
            s, x_saved = lora_down(x2, a, seed, dropout_p, backend), x2
        if weight is None:  # the update alone: a quantized base computes its own x·Wᵀ
            y = torch.mm(s.to(x.dtype), b.t()).mul_(scaling)
        else:
            y = F.linear(x2, weight, bias)  # base GEMM on cuBLAS/MKL
            y.addmm_(s.to(x.dtype), b.t(), alpha=scaling)
        ctx.save_for_backward(x_saved, s, weight, lora_a, lora_b, keep)  # weight, A, B are parameters: no copy
        ctx.scaling, ctx.dropout_p, ctx.seed, ctx.backend, ctx.keep_scale = scaling, dropout_p, seed, backend, scale
        ctx.x_shape = x.shape
        return y.view(*x.shape[:-1], lora_b.shape[0])

    @staticmethod
    def backward(ctx, grad_y):
        x2, s, weight, lora_a, lora_b, keep = ctx.saved_tensors
        g2 = grad_y.reshape(-1, lora_b.shape[0])
        a = lora_a.to(x2.dtype)
        b = lora_b.to(x2.dtype)
        ds, db = lora_grad_out(g2, b, s, ctx.scaling, ctx.backend)
        dx = None
        if ctx.needs_input_grad[0]:  # M×K: the frozen base's share (zero when the base is not ours)
            dx = g2 @ weight if weight is not None else torch.zeros_like(x2)
        if ctx.backend == "torch":
            da = torch_grad_in(x2, a, ds, dx, keep, ctx.keep_scale)
        else:
            da = lora_grad_in(x2, a, ds, dx, ctx.seed, ctx.dropout_p, ctx.backend)
        grad_x = dx.view(ctx.x_shape) if dx is not None else None
        return grad_x, None, None, da.to(lora_a.dtype), db.to(lora_b.dtype), None, None, None, None


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    seed: int = 0,
    backend: str = "auto",
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x·Wᵀ (+bias) + scaling·(D⊙x)·Aᵀ·Bᵀ; gradients for x, A, B only (W and bias are frozen).

    ``seed`` fixes the dropout mask (triton regenerates it in backward, torch keeps it); pass a fresh seed per
    call in training. A and B may be fp32 master weights: they are cast to x's dtype for the products
    and their gradients come back in their own dtype.

    ``weight=None`` computes the update alone, y = scaling·(D⊙x)·Aᵀ·Bᵀ (``bias`` must be None): the base
    of a quantized model (bitsandbytes 4/8-bit) adds its own x·Wᵀ and its own share of dX.
    """
    if weight is None and bias is not None:
        raise ValueError("lora_linear: bias needs weight (weight=None computes the LoRA update alone)")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    which = resolve_backend(backend, x.device)
    return LoRALinearFunction.apply(x, weight, bias, lora_a, lora_b, float(scaling), float(dropout_p), int(seed), which)
