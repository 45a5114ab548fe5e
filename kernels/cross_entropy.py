"""Linear + cross entropy over row chunks, so the M×V logits never exist at once.

HF's default loss keeps the logits plus an fp32 copy and an fp32 log-softmax: about 10 bytes × vocab
per token (1.3 MB/token at Llama 3's 128k vocab, 0.5 MB/token at SmolLM2's 49k). Here forward keeps
hidden, labels and one fp32 logsumexp per row; backward recomputes each chunk's logits:

    logits_c = H_c Wᵀ (fp32)      loss = Σ_valid lse - logit[label]
    dlogits_c = (softmax_c - onehot(label)) · g      dH_c = dlogits_c W      dW += dlogits_cᵀ H_c

Peak extra memory is chunk_size × V × 4 bytes × ~2 (logits and their softmax): 2 × 384 MiB at
chunk 1024, V = 49152; 1 GiB at V = 128256. The cost is one extra H·Wᵀ GEMM in backward
(~+33% of the head's FLOPs). Only a torch path exists; the head GEMMs are compute-bound and already
on cuBLAS, so a Triton kernel would mostly save the softmax passes (Liger measured its fused
linear+CE ~13% slower than unfused but 4× smaller at 128k vocab).
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK_SIZE = 1024  # rows; see the module docstring for the memory it implies


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (h @ weight.t()).float()  # GEMM in the model dtype (tensor cores), softmax in fp32


class LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, chunk_size):
        m = hidden.shape[0]
        lse = torch.empty(m, device=hidden.device, dtype=torch.float32)
        loss = torch.zeros((), device=hidden.device, dtype=torch.float32)
        n_correct = torch.zeros((), device=hidden.device, dtype=torch.long)
        for start in range(0, m, chunk_size):
            rows = slice(start, start + chunk_size)
            logits = _chunk_logits(hidden[rows], weight)
            lab = labels[rows]
            valid = lab != ignore_index
            safe = torch.where(valid, lab, 0)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            loss += torch.where(valid, lse[rows] - picked, 0.0).sum()
            n_correct += ((logits.argmax(dim=-1) == lab) & valid).sum()
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.ignore_index, ctx.chunk_size = ignore_index, chunk_size
        ctx.mark_non_differentiable(n_correct)
        return loss, n_correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        hidden, weight, labels, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        d_hidden = torch.empty_like(hidden) if need_h else None
        d_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            h = hidden[rows]
            lab = labels[rows]
            valid = lab != ctx.ignore_index
            d_logits = torch.exp(_chunk_logits(h, weight) - lse[rows, None])  # softmax, in place of logits
            d_logits.scatter_add_(1, torch.where(valid, lab, 0)[:, None], -valid[:, None].float())
            d_logits *= valid[:, None] * grad_loss
            d_logits = d_logits.to(hidden.dtype)
            if need_h:
                d_hidden[rows] = d_logits @ weight
            if need_w:
                d_weight += (d_logits.t() @ h).float()
        if need_w:
            d_weight = d_weight.to(weight.dtype)
        return d_hidden, d_weight, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ cross-entropy over rows whose label != ignore_index, number of those rows where argmax ==
    label). hidden is M×h, weight V×h (the LM head), labels (M,) already shifted. The loss is a
    differentiable fp32 0-d tensor (divide by the valid-token count for a mean); n_correct is a 0-d
    long tensor. d_weight is computed only when weight.requires_grad (a frozen head costs nothing).
    """
    if backend not in ("auto", "torch"):
        raise ValueError(f"linear_cross_entropy has only a torch path: backend must be 'auto' or 'torch', got {backend!r}")
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"expected hidden M×h and labels (M,), got {tuple(hidden.shape)} and {tuple(labels.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return LinearCrossEntropyFunction.apply(hidden, weight, labels, ignore_index, int(chunk_size))
