"""lora_linear against an fp64 autograd reference, per backend (Triton interpreted on CPU)."""

import pytest
import torch
from moopt_kernels import lora_linear
from moopt_kernels.lora_linear import dropout_mask


def make_case(m, k, n, r, dtype=torch.float32, seed=0):
    """Inputs of order 1 with B != 0 (B = 0 would make dA identically zero and hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen) / k**0.5
    a = torch.randn(r, k, generator=gen) / k**0.5
    b = torch.randn(n, r, generator=gen) / r**0.5
    g = torch.randn(m, n, generator=gen)
    return [t.to(dtype) for t in (x, w, a, b, g)]


def reference(x, w, a, b, scaling, mask, g, bias=None):
    """y, dX, dA, dB by autograd in x's dtype on the unfused formula (pass fp64 inputs for the truth)."""
    x, a, b = (t.detach().clone().requires_grad_() for t in (x, a, b))
    # in fp16/bf16, D⊙X in fp32 then x's dtype, as the kernels do: 1/(1-p) rounded to bf16 (1.0547 at p = 0.05) would
    # bias every kept element of "plain PyTorch at the same dtype" by 0.2%, and widen the tolerance it sets by as much
    low = x.dtype in (torch.float16, torch.bfloat16)
    x_hat = x if mask is None else (x.float() * mask.float()).to(x.dtype) if low else x * mask.to(x.dtype)
    y = x @ w.t() + scaling * (x_hat @ a.t()) @ b.t()
    if bias is not None:
        y = y + bias
    y.backward(g)
    return y.detach(), x.grad, a.grad, b.grad


def run(x, w, a, b, scaling, p, seed, backend, g, bias=None):
    x, a, b = (t.detach().clone().requires_grad_() for t in (x, a, b))
    y = lora_linear(x, w, a, b, scaling, dropout_p=p, seed=seed, backend=backend, bias=bias)
    y.backward(g)
    return y.detach(), x.grad, a.grad, b.grad


NAMES = ("y", "dX", "dA", "dB")


@pytest.mark.parametrize(
    "m, k, n, r, scaling, p",
    [
        (70, 33, 65, 4, 2.0, 0.0),  # odd sizes: M, K, N not multiples of the 64-blocks
        (128, 64, 96, 8, 0.5, 0.0),
        (37, 256, 48, 16, 1.5, 0.1),
        (64, 40, 72, 64, 0.25, 0.2),  # r = 64, the largest rank in the grid
    ],
)
def test_matches_fp64_reference_fp32(backend, matches_reference, m, k, n, r, scaling, p):
    x, w, a, b, g = make_case(m, k, n, r)
    mask = dropout_mask(7, (m, k), p, "cpu", backend) if p > 0 else None
    outs = run(x, w, a, b, scaling, p, 7, backend, g)
    refs = reference(*(t.double() for t in (x, w, a, b)), scaling, None if mask is None else mask.double(), g.double())
    for out, ref, name in zip(outs, refs, NAMES):
        matches_reference(out, ref, None, name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_within_twice_torch_error(backend, matches_reference, dtype):
    if backend == "torch" and dtype == torch.bfloat16:
        pytest.skip("bf16 on the torch path is plain PyTorch: the rule compares it with itself")
    m, k, n, r, scaling, p = 96, 72, 80, 16, 2.0, 0.1
    x, w, a, b, g = make_case(m, k, n, r, dtype=dtype, seed=1)
    mask = dropout_mask(3, (m, k), p, "cpu", backend)
    outs = run(x, w, a, b, scaling, p, 3, backend, g)
    refs64 = reference(*(t.double() for t in (x, w, a, b)), scaling, mask.double(), g.double())
    refs_lp = reference(x, w, a, b, scaling, mask, g)
    for out, ref64, ref_lp, name in zip(outs, refs64, refs_lp, NAMES):
        assert out.dtype == dtype
        matches_reference(out, ref64, ref_lp, name)


def test_3d_noncontiguous_input_and_bias(backend, matches_reference):
    m_b, m_t, k, n, r = 3, 11, 48, 40, 8
    x, w, a, b, _ = make_case(m_b * m_t, k, n, r, seed=2)
    x3 = x.view(m_t, m_b, k).transpose(0, 1)  # 3×11×48, not contiguous
    assert not x3.is_contiguous()
    bias = torch.randn(n)
    g = torch.randn(m_b, m_t, n)
    outs = run(x3, w, a, b, 1.25, 0.0, 0, backend, g, bias=bias)
    refs = reference(x3.double(), w.double(), a.double(), b.double(), 1.25, None, g.double(), bias.double())
    assert outs[0].shape == (m_b, m_t, n) and outs[1].shape == x3.shape
    for out, ref, name in zip(outs, refs, NAMES):
        matches_reference(out, ref, None, name)


def test_dropout_mask_is_regenerated_not_redrawn(backend):
    """dropout_mask, the mask a seed gives: the same seed, the same mask (what lets backward regenerate forward's:
    that lora_linear does is checked by the fp64 tests with p > 0, whose reference takes this mask); different seeds
    differ; the keep rate is 1-p (6 sigma bound at 32k elements)."""
    m, k, p = 128, 256, 0.25
    d1 = dropout_mask(11, (m, k), p, "cpu", backend)
    assert torch.equal(d1, dropout_mask(11, (m, k), p, "cpu", backend))
    assert not torch.equal(d1, dropout_mask(12, (m, k), p, "cpu", backend))
    assert set(d1.unique().tolist()) <= {0.0, torch.tensor(1.0 / (1.0 - p)).item()}  # fp32 value
    keep = (d1 > 0).float().mean().item()
    assert abs(keep - (1 - p)) < 6 * (p * (1 - p) / (m * k)) ** 0.5


def test_saves_only_x_and_s_for_backward(backend):
    """No X̂ is kept: the non-parameter saved tensors are exactly X (M×K) and S (M×r), plus on the torch
    backend its bool mask (M×K, one byte an element); the triton backend regenerates its mask."""
    m, k, n, r = 64, 48, 32, 8
    x, w, a, b, _ = make_case(m, k, n, r)
    a.requires_grad_()
    b.requires_grad_()
    x.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lora_linear(x, w, a, b, 2.0, dropout_p=0.3, seed=1, backend=backend)
    mine = [t for t in saved if t.data_ptr() not in {w.data_ptr(), a.data_ptr(), b.data_ptr()}]
    assert sorted(tuple(t.shape) for t in mine if t.dtype != torch.bool) == sorted([(m, k), (m, r)])
    masks = [tuple(t.shape) for t in mine if t.dtype == torch.bool]
    assert masks == ([(m, k)] if backend == "torch" else [])


def test_frozen_weight_gets_no_gradient_and_x_without_grad_is_fine(backend):
    x, w, a, b, g = make_case(40, 32, 24, 4)
    w.requires_grad_()
    a.requires_grad_()
    b.requires_grad_()
    lora_linear(x, w, a, b, 2.0, backend=backend).backward(g)
    assert w.grad is None
    _, _, da_ref, db_ref = reference(x.double(), w.double(), a.double(), b.double(), 2.0, None, g.double())
    torch.testing.assert_close(a.grad.double(), da_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad.double(), db_ref, rtol=1e-5, atol=1e-5)


def test_rejects_dropout_of_one():
    x, w, a, b, _ = make_case(4, 16, 16, 4)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        lora_linear(x, w, a, b, 1.0, dropout_p=1.0)


@pytest.mark.parametrize("kernel", ["down", "grad_out", "grad_in"])
def test_a_batch_past_int32_offsets_is_a_kernel_error_before_any_launch(kernel):
    """150k tokens at Llama-8B's 14336-wide MLP: G (M×N) has more elements than the kernels' int32 offsets reach.
    Only M×K was checked (and as a ValueError, which --kernels auto does not fall back on): grad_out's G would
    wrap. Expanded tensors (no memory); the check raises before anything is allocated or launched."""
    from moopt_kernels import TritonKernelError
    from moopt_kernels.lora_linear import lora_down, lora_grad_in, lora_grad_out

    m, wide, r = 150_000, 14336, 16
    x = torch.zeros(1, 1).expand(m, wide)
    a, b, s = torch.zeros(r, wide), torch.zeros(wide, r), torch.zeros(1, r).expand(m, r)
    call = {"down": lambda: lora_down(x, a, 0, 0.0, "triton"),
            "grad_out": lambda: lora_grad_out(x, b, s, 1.0, "triton"),
            "grad_in": lambda: lora_grad_in(x, a, s, None, 0, 0.0, "triton")}[kernel]
    with pytest.raises(TritonKernelError, match=f"triton kernel {kernel}: its offsets are int32"):
        call()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_triton_on_gpu_matches_rule_at_llama_width(matches_reference):
    m, k, n, r, p = 512, 4096, 1024, 16, 0.05
    x, w, a, b, g = (t.cuda() for t in make_case(m, k, n, r, dtype=torch.bfloat16))
    mask = dropout_mask(5, (m, k), p, "cuda", "triton")
    outs = run(x, w, a, b, 2.0, p, 5, "triton", g)
    refs64 = reference(*(t.double() for t in (x, w, a, b)), 2.0, mask.double(), g.double())
    refs_lp = reference(x, w, a, b, 2.0, mask, g)
    for out, ref64, ref_lp, name in zip(outs, refs64, refs_lp, NAMES):
        matches_reference(out, ref64, ref_lp, name)


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_update_alone_for_a_quantized_base(backend, matches_reference, p):
    """weight=None: y = s·(D⊙x)·Aᵀ·Bᵀ and dX is the update's share only (the bitsandbytes base adds its own)."""
    m, k, n, r, scaling = 45, 72, 40, 8, 2.0
    x, _, a, b, g = make_case(m, k, n, r, seed=5)
    zero = torch.zeros(n, k)
    mask = dropout_mask(11, (m, k), p, "cpu", backend) if p > 0 else None
    outs = run(x, None, a, b, scaling, p, 11, backend, g)
    refs = reference(*(t.double() for t in (x, zero, a, b)), scaling, None if mask is None else mask.double(), g.double())
    for out, ref, name in zip(outs, refs, NAMES):
        matches_reference(out, ref, None, name)
    with pytest.raises(ValueError, match="bias needs weight"):
        lora_linear(x, None, a, b, scaling, bias=torch.zeros(n))


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_rank_split_into_r_blocks_matches_reference(backend, matches_reference, monkeypatch, p):
    """A rank above MAX_BLOCK_R (256 on a GPU; 16 here, to keep the interpreter fast) runs as several
    launches over column blocks of r (16 + 16 + 8), dX accumulating across them."""
    import sys

    monkeypatch.setattr(sys.modules["moopt_kernels.lora_linear"], "MAX_BLOCK_R", 16)
    m, k, n, r, scaling = 40, 48, 36, 40, 0.5
    x, w, a, b, g = make_case(m, k, n, r, seed=5)
    mask = dropout_mask(11, (m, k), p, "cpu", backend) if p > 0 else None
    outs = run(x, w, a, b, scaling, p, 11, backend, g)
    refs = reference(*(t.double() for t in (x, w, a, b)), scaling, None if mask is None else mask.double(), g.double())
    for out, ref, name in zip(outs, refs, NAMES):
        matches_reference(out, ref, None, name)
