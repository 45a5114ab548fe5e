"""One optimizer step of moopt's training loop, the one that trials, the memory probe, the final
training and benchmarks/bench_trial.py run.

Forward + backward over the step's micro-batches (gradient accumulation), each micro-batch's summed
cross-entropy divided by the label tokens of the whole step, so the step's gradient is that of the
mean loss per label token whatever the micro-batch sizes; then gradient clipping, the optimizer step,
the scheduler step and ``zero_grad(set_to_none=True)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from moopt.train.data import IGNORE


def causal_lm_loss(model, batch: dict[str, torch.Tensor], backend: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(summed CE over completion tokens, correct next-token predictions, number of such tokens).

    Only rows that carry a label go through the LM head, chunked, so full fp32 logits
    (T x vocab x 4 bytes: 100 MB for 512 tokens of a 49k vocabulary) are never built.
    """
    from moopt_kernels import linear_cross_entropy

    if "position_ids" in batch:  # packed rows: attention is kept inside each example by the position restarts
        # (no cache: with one, transformers would not read the restarts and attention would cross examples)
        out = model.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    else:
        out = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    hidden = out.last_hidden_state[:, :-1]
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    n = int(keep.sum())
    # the loss has only a torch path (chunked linear+CE); ``backend`` is the LoRA modules' own
    loss_sum, n_correct = linear_cross_entropy(hidden[keep], model.lm_head.weight, labels[keep], backend="auto")
    return loss_sum, n_correct, n


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean cross-entropy per label token over the step's micro-batches
    tokens: int  # tokens the step trained on (attention mask), padding excluded
    label_tokens: int  # the completion tokens the loss is averaged over


def label_tokens(batches: Iterable[dict[str, torch.Tensor]]) -> int:
    """Next-token targets in ``batches``: labels shifted by one, ``IGNORE`` (prompt, padding) left out."""
    return sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)


def check_finite(loss: float, step: int) -> float:
    """``loss``, or FloatingPointError naming the (1-based) optimizer step when it is NaN or infinite."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"non-finite training loss ({loss}) at step {step}")
    return loss


def train_step(
    model: torch.nn.Module,
    batches: Sequence[dict[str, torch.Tensor]],
    *,
    params: list[torch.nn.Parameter],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler | None,
    max_grad_norm: float,
    device: torch.device,
    backend: str,
    before_update: Callable[[StepResult], float] | None = None,
    attention: Callable[[dict[str, torch.Tensor]], object] | None = None,
) -> StepResult:
    """One optimizer step over ``batches`` (the step's micro-batches, at least one, on any device: each
    is moved to ``device`` in turn). ``before_update(result)`` runs after the backward passes, before
    gradient clipping and the optimizer step; it returns the loss to report and raises to stop the
    step (a non-finite loss must not reach the weights). ``max_grad_norm`` <= 0: no clipping;
    ``sched`` None: no scheduler. ``attention(batch)`` runs before each micro-batch's forward (the trial's
    moopt.train.recipe.BatchAttention: the attention implementation for that batch's width)."""
    n_labels = label_tokens(batches)
    total, tokens = 0.0, 0
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()}
        if attention is not None:
            attention(b)
        loss_sum, _, _ = causal_lm_loss(model, b, backend)
        (loss_sum / max(n_labels, 1)).backward()
        total += float(loss_sum.detach())
        tokens += int(b["attention_mask"].sum())
    del loss_sum, b  # the last micro-batch's graph root and tensors are not kept through the optimizer step
    loss = total / max(n_labels, 1)
    if before_update is not None:
        loss = before_update(StepResult(loss=loss, tokens=tokens, label_tokens=n_labels))
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()  # AdamW allocates its two fp32 states per parameter here, on the first step
    if sched is not None:
        sched.step()
    opt.zero_grad(set_to_none=True)
    return StepResult(loss=loss, tokens=tokens, label_tokens=n_labels)
