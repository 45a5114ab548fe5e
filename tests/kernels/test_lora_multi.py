"""lora_multi_linear (q,k,v-style projections sharing x) against separate lora_linear calls."""

import pytest
import torch
from moopt_kernels import lora_linear, lora_multi_linear
from moopt_kernels.lora_linear import dropout_mask


def make_projections(k, ns, ranks, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(n, k, generator=gen) / k**0.5 for n in ns]
    as_ = [torch.randn(r, k, generator=gen) / k**0.5 for r in ranks]
    bs = [torch.randn(n, r, generator=gen) / r**0.5 for n, r in zip(ns, ranks)]
    return ws, as_, bs


def leaves(ts):
    return [t.detach().clone().requires_grad_() for t in ts]


@pytest.mark.parametrize("p", [0.0, 0.15])
def test_multi_equals_separate_projections_with_the_same_mask(backend, matches_reference, p):
    """Three projections of different widths and ranks (a GQA-like q,k,v). With dropout the separate
    fp64 reference gets the one mask the multi op shares across projections."""
    m, k, ns, ranks, scalings = 50, 40, (64, 24, 24), (8, 4, 16), (2.0, 0.5, 1.0)
    ws, as_, bs = make_projections(k, ns, ranks)
    x = torch.randn(2, m // 2, k)
    gs = [torch.randn(2, m // 2, n) for n in ns]
    mask = dropout_mask(9, (m, k), p, "cpu", backend).view(2, m // 2, k) if p > 0 else torch.ones_like(x)

    x1, a1, b1 = leaves([x]), leaves(as_), leaves(bs)
    outs = lora_multi_linear(x1[0], ws, a1, b1, scalings, dropout_p=p, seed=9, backend=backend)
    torch.autograd.backward(outs, gs)

    x64 = x.double().requires_grad_()
    a64, b64 = leaves([a.double() for a in as_]), leaves([b.double() for b in bs])
    refs = [
        x64 @ w.double().t() + s * ((x64 * mask.double()) @ a.t()) @ b.t()
        for w, a, b, s in zip(ws, a64, b64, scalings)
    ]
    torch.autograd.backward(refs, [g.double() for g in gs])

    for out, ref in zip(outs, refs):
        matches_reference(out.detach(), ref.detach(), None, "y")
    matches_reference(x1[0].grad, x64.grad, None, "dX (summed over projections)")
    for i in range(3):
        matches_reference(a1[i].grad, a64[i].grad, None, f"dA[{i}]")
        matches_reference(b1[i].grad, b64[i].grad, None, f"dB[{i}]")


def test_multi_without_dropout_matches_lora_linear_calls(backend):
    m, k, ns, ranks = 33, 48, (40, 40), (8, 8)
    ws, as_, bs = make_projections(k, ns, ranks, seed=1)
    x = torch.randn(m, k)
    xa, aa, ba = leaves([x]), leaves(as_), leaves(bs)
    outs = lora_multi_linear(xa[0], ws, aa, ba, (2.0, 2.0), backend=backend)
    sum(o.square().sum() for o in outs).backward()
    xb, ab, bb = leaves([x]), leaves(as_), leaves(bs)
    sep = [lora_linear(xb[0], w, a, b, 2.0, backend=backend) for w, a, b in zip(ws, ab, bb)]
    sum(o.square().sum() for o in sep).backward()
    for got, want in zip([*outs, xa[0].grad, *aa, *ba], [*sep, xb[0].grad, *(a.grad for a in ab), *(b.grad for b in bb)]):
        got = got.grad if got.requires_grad and got.is_leaf else got
        # fp32, summed in a different order: rtol 1e-5 and atol 1e-5 of the tensor's scale
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_unused_output_contributes_nothing(backend):
    """Only the second projection reaches the loss: the first one's dB is None and dA zero."""
    k, ns, ranks = 32, (24, 16), (4, 4)
    ws, as_, bs = make_projections(k, ns, ranks, seed=2)
    x = torch.randn(20, k, requires_grad=True)
    a_, b_ = leaves(as_), leaves(bs)
    _, second = lora_multi_linear(x, ws, a_, b_, (1.0, 3.0), backend=backend)
    second.sum().backward()
    assert b_[0].grad is None
    assert torch.count_nonzero(a_[0].grad) == 0
    xr = x.detach().clone().requires_grad_()
    a_ref, b_ref = leaves([as_[1]]), leaves([bs[1]])
    lora_linear(xr, ws[1], a_ref[0], b_ref[0], 3.0, backend="torch").sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a_[1].grad, a_ref[0].grad, rtol=1e-5, atol=1e-5)


def test_multi_saves_x_once():
    ws, as_, bs = make_projections(64, (64, 32, 32), (8, 8, 8))
    x = torch.randn(16, 64, requires_grad=True)
    as_, bs = leaves(as_), leaves(bs)
    params = {t.data_ptr() for t in (*ws, *as_, *bs)}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lora_multi_linear(x, ws, as_, bs, (1.0,) * 3, dropout_p=0.1, seed=1, backend="torch")
    mine = [t for t in saved if t.data_ptr() not in params]
    assert sorted(tuple(t.shape) for t in mine if t.dtype != torch.bool) == [(16, 24), (16, 64)]
    assert [tuple(t.shape) for t in mine if t.dtype == torch.bool] == [(16, 64)]  # one mask for all three
