"""Linear + cross entropy over row chunks, so the M×V logits never exist at once.

HF's default loss keeps the logits plus an fp32 copy and an fp32 log-softmax: about 10 bytes × vocab
per token (1.3 MB/token at Llama 3's 128k vocab, 0.5 MB/token at SmolLM2's 49k). Here each chunk's
logits are computed once and turned into their gradient in place, in the forward pass (the loss is a
scalar, so dL/dlogits is known up to the incoming scale g):

    logits_c = H_c Wᵀ (fp32)      loss = Σ_valid lse - logit[label]
    dlogits_c = softmax_c - onehot(label)      dH_c = dlogits_c W      dW += dlogits_cᵀ H_c

and backward only multiplies dH (and dW) by g. Forward keeps dH (M×h, the size of H) instead of H +
lse, and no logits GEMM is recomputed in backward: 2 head GEMMs per step instead of 3 (the recompute
was ~5% of a SmolLM2-135M step on CPU, where the 49k head is ~20% of the FLOPs). The softmax is done
in place (max, subtract, exp, divide on the one chunk buffer), so the peak extra memory is one fp32
chunk: chunk_size × V × 4 bytes (192 MiB at chunk 1024, V = 49152; 501 MiB at V = 128256). Under
no_grad (evaluation) no gradient is computed. Only a torch path exists; the head GEMMs are
compute-bound and already on cuBLAS/MKL (Liger measured its fused linear+CE ~13% slower than unfused
but 4× smaller at 128k vocab).
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK_SIZE = 1024  # rows; see the module docstring for the memory it implies
EXACT_VOCAB_BLOCK = 8192  # vocabulary rows per fp32 GEMM of an exact (evaluation) chunk on the CPU


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, exact: bool) -> torch.Tensor:
    """fp32 logits of one chunk. Training: the GEMM in the model dtype (tensor cores, oneDNN's bf16),
    rounded to it, then fp32 for the softmax, as HF's loss does. ``exact`` (evaluation, which reports the
    loss and the accuracy): fp32 products of the bf16/fp16 values, so bf16's rounding of logits near 20
    (steps of 0.125) neither shifts eval_loss nor makes ties that count as correct; it costs one fp32 head
    GEMM over the labelled rows alone: cuBLAS's bf16-in fp32-out GEMM on CUDA; on the CPU (torch 2.13
    has no such mm there) fp32 GEMMs over blocks of EXACT_VOCAB_BLOCK vocabulary rows, so the fp32 copy
    of the head is one block at a time (the whole head in fp32 would be 2 GiB at Llama 3's vocab)."""
    if not exact or h.dtype == torch.float32:
        return (h @ weight.t()).float()
    if h.is_cuda:
        try:
            return torch.mm(h, weight.t(), out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):  # a torch without mm.dtype on this device
            pass
    hf = h.float()
    out = torch.empty((h.shape[0], weight.shape[0]), device=h.device, dtype=torch.float32)
    for v in range(0, weight.shape[0], EXACT_VOCAB_BLOCK):
        out[:, v : v + EXACT_VOCAB_BLOCK] = hf @ weight[v : v + EXACT_VOCAB_BLOCK].float().t()
    return out


class LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, chunk_size, need_h, need_w):
        m = hidden.shape[0]
        loss = torch.zeros((), device=hidden.device, dtype=torch.float32)
        n_correct = torch.zeros((), device=hidden.device, dtype=torch.long)
        d_hidden = torch.empty_like(hidden) if need_h else None
        d_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
        for start in range(0, m, chunk_size):
            rows = slice(start, start + chunk_size)
            h = hidden[rows]
            logits = _chunk_logits(h, weight, exact=not (need_h or need_w))  # the only chunk×V buffer
            lab = labels[rows]
            valid = lab != ignore_index
            safe = torch.where(valid, lab, 0)[:, None]
            picked = logits.gather(1, safe).squeeze(1)
            # correct: the label is the argmax (the first of tied maxima, as argmax == label counts); one pass gives the
            # softmax's max too. Counting every tied maximum as correct scored a collapsed model (all logits equal)
            # at accuracy 1.0, and a study picked it as its best.
            row_max, top = logits.max(dim=-1, keepdim=True)
            n_correct += ((top.squeeze(1) == lab) & valid).sum()
            probs = logits.sub_(row_max).exp_()  # in place: exp(logits - max)
            total = probs.sum(dim=-1, keepdim=True)
            lse = (total.log() + row_max).squeeze(1)
            loss += torch.where(valid, lse - picked, 0.0).sum()
            if not (need_h or need_w):
                del logits, probs  # before the next chunk's GEMM, or two chunks are alive at once
                continue
            d_logits = probs.div_(total)  # softmax, in place
            d_logits.scatter_add_(1, safe, -valid[:, None].float())
            ignored = (~valid).nonzero().squeeze(1)
            if len(ignored):  # ignored rows carry no gradient (only those rows are written: callers
                d_logits.index_fill_(0, ignored, 0.0)  # usually pass labelled rows alone)
            d_logits = d_logits.to(hidden.dtype)
            if need_h:
                d_hidden[rows] = d_logits @ weight
            if need_w:
                d_weight += (d_logits.t() @ h).float()
            # free this chunk before the next one's GEMM: the names would otherwise keep its fp32
            # logits and their cast alive through it (an H200 measured +288 MiB at 2 chunks of 1024 x 49k)
            del logits, probs, d_logits
        ctx.save_for_backward(d_hidden, d_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(n_correct)
        return loss, n_correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        d_hidden, d_weight = ctx.saved_tensors
        if d_hidden is not None:
            d_hidden = d_hidden * grad_loss.to(d_hidden.dtype)
        if d_weight is not None:
            d_weight = (d_weight * grad_loss).to(ctx.weight_dtype)
        return d_hidden, d_weight, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ cross-entropy over rows whose label != ignore_index, number of those rows where the label
    is the argmax: the first of tied maxima). hidden is M×h, weight V×h (the LM head), labels (M,) already shifted. The loss is a
    differentiable fp32 0-d tensor (divide by the valid-token count for a mean); n_correct is a 0-d
    long tensor. Gradients are computed during this call (when grad mode is on and hidden or weight
    requires grad) and scaled in backward; d_weight only when weight.requires_grad (a frozen head
    costs nothing). Not twice differentiable.
    """
    if backend not in ("auto", "torch"):
        raise ValueError(f"linear_cross_entropy has only a torch path: backend must be 'auto' or 'torch', got {backend!r}")
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"expected hidden M×h and labels (M,), got {tuple(hidden.shape)} and {tuple(labels.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    grad = torch.is_grad_enabled()
    need_h, need_w = grad and hidden.requires_grad, grad and weight.requires_grad
    return LinearCrossEntropyFunction.apply(hidden, weight, labels, ignore_index, int(chunk_size), need_h, need_w)
