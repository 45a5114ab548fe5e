"""linear_cross_entropy against F.cross_entropy on materialised logits."""

import pytest
import torch
import torch.nn.functional as F
from moopt_kernels import linear_cross_entropy


@pytest.mark.parametrize("chunk_size", [7, 64, 1024])  # 7: chunks that do not divide M = 45
@pytest.mark.parametrize("weight_trainable", [True, False])
def test_matches_torch_cross_entropy(chunk_size, weight_trainable):
    gen = torch.Generator().manual_seed(0)
    m, h, v = 45, 32, 97
    hidden = torch.randn(m, h, generator=gen, dtype=torch.float64).float().requires_grad_()
    weight = (torch.randn(v, h, generator=gen) / h**0.5).requires_grad_(weight_trainable)
    labels = torch.randint(0, v, (m,), generator=gen)
    labels[::5] = -100  # every fifth row ignored
    labels[1] = (hidden[1] @ weight.t()).argmax()  # at least one correct prediction

    loss, n_correct = linear_cross_entropy(hidden, weight, labels, chunk_size=chunk_size)
    (loss * 0.7).backward()

    h_ref = hidden.detach().clone().requires_grad_()
    w_ref = weight.detach().clone().requires_grad_(weight_trainable)
    logits = h_ref @ w_ref.t()
    ref = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    (ref * 0.7).backward()
    valid = labels != -100
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-5)
    assert n_correct.dtype == torch.long
    assert n_correct.item() == ((logits.argmax(-1) == labels) & valid).sum().item() >= 1
    torch.testing.assert_close(hidden.grad, h_ref.grad, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(hidden.grad[~valid]) == 0
    if weight_trainable:
        torch.testing.assert_close(weight.grad, w_ref.grad, rtol=1e-5, atol=1e-6)
    else:
        assert weight.grad is None


def test_all_rows_ignored_gives_zero_loss_and_gradient():
    hidden = torch.randn(6, 8, requires_grad=True)
    loss, n_correct = linear_cross_entropy(hidden, torch.randn(11, 8), torch.full((6,), -100), chunk_size=4)
    loss.backward()
    assert loss.item() == 0.0 and n_correct.item() == 0
    assert torch.count_nonzero(hidden.grad) == 0


def test_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="labels"):
        linear_cross_entropy(torch.randn(4, 8), torch.randn(5, 8), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_chunk_of_logits_alive_at_a_time(monkeypatch, dtype):
    """The peak the estimate counts (moopt.memory.estimate.logits_bytes: one chunk's logits and its cast)
    holds only if a chunk's buffers are freed before the next chunk's GEMM: an H200 measured 288 MiB
    more than that at 2 chunks of 1024 x 49152 when the loop kept the previous chunk alive."""
    import weakref

    from moopt_kernels import cross_entropy as ce

    alive: list[weakref.ref] = []
    real = ce._chunk_logits

    def tracked(h, weight, exact):
        assert all(r() is None for r in alive), "the previous chunk's logits are still alive"
        out = real(h, weight, exact)
        alive.append(weakref.ref(out))
        return out

    monkeypatch.setattr(ce, "_chunk_logits", tracked)
    torch.manual_seed(0)
    hidden = torch.randn(40, 16, dtype=dtype, requires_grad=True)
    weight = torch.randn(64, 16, dtype=dtype)
    labels = torch.randint(0, 64, (40,))
    loss, _ = linear_cross_entropy(hidden, weight, labels, chunk_size=8)
    loss.backward()
    assert len(alive) == 5


def test_a_collapsed_model_whose_logits_all_tie_is_not_scored_perfect():
    """Every tied maximum counted as correct: a model diverged to equal logits scored accuracy 1.0 (and a study picked
    it as best). The label must be the argmax (the first of tied maxima, as argmax == label counts)."""
    hidden, weight = torch.zeros(5, 8), torch.randn(11, 8)  # every logit 0
    labels = torch.tensor([0, 3, 7, 10, 0])
    _, n_correct = linear_cross_entropy(hidden, weight, labels, chunk_size=2)
    assert n_correct.item() == 2  # the rows whose label is token 0, the argmax of a tie
