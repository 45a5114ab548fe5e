"""LoRA on a Hugging Face Llama, through moopt's fused kernels, saved in PEFT's format.

``attach_lora`` freezes the model and replaces the targeted ``nn.Linear`` of every decoder layer by a
``LoRALinear``. Projections that the layer calls with the same tensor (q, k, v in attention; gate, up in
the MLP) are tied into a ``SharedInputGroup`` so X is read once and saved once for all of them
(``moopt_kernels.lora_multi_linear``). ``save_peft_adapter`` writes what ``peft.PeftModel.from_pretrained``
loads.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from moopt_kernels import lora_linear, lora_multi_linear, resolve_backend
from torch import nn

from moopt.config import SHARED_INPUT_SETS

LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def is_quantized(linear: nn.Module) -> bool:
    """A bitsandbytes 4-bit/8-bit layer (``Linear4bit``/``Linear8bitLt``, both ``nn.Linear`` subclasses
    whose weight is packed): its own forward must compute x·Wᵀ."""
    return type(linear).__module__.startswith("bitsandbytes")


def _draw_seed() -> int:
    """A dropout seed from torch's global CPU generator: torch.manual_seed makes runs repeatable, and
    activation checkpointing (which restores the RNG state) redraws the same seed on recompute."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: y = base(x) + (alpha/r)·B·A·dropout(x).

    ``lora_A`` (r×in, Kaiming-uniform as PEFT) and ``lora_B`` (out×r, zeros) are fp32 master weights;
    the kernels cast them to x's dtype. A fresh dropout seed is drawn per call in training; eval uses p=0.
    A bitsandbytes base (QLoRA) runs its own dequantizing forward and the kernel adds the update alone.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout_p: float = 0.0, backend: str = "auto"):
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.r, self.alpha, self.dropout_p, self.backend = r, alpha, dropout_p, backend
        self.scaling = alpha / r
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's init for lora_A
        self.group: SharedInputGroup | None = None
        self.quantized = is_quantized(base)

    @property
    def active_dropout(self) -> float:
        return self.dropout_p if self.training else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.group is not None:
            return self.group.output(self, x)
        p = self.active_dropout
        seed = _draw_seed() if p > 0 else 0
        if self.quantized:  # bitsandbytes computes x·Wᵀ; the kernel adds the update alone
            return self.base(x) + lora_linear(x, None, self.lora_A, self.lora_B, self.scaling, dropout_p=p,
                                              seed=seed, backend=self.backend)
        return lora_linear(
            x, self.base.weight, self.lora_A, self.lora_B, self.scaling,
            dropout_p=p, seed=seed, backend=self.backend, bias=self.base.bias,
        )

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, dropout_p={self.dropout_p}, backend={self.backend!r}"


class SharedInputGroup:
    """LoRALinears that their parent calls one after another with the same tensor.

    Contract: the first member called with a tensor computes every member's output in one
    ``lora_multi_linear`` call; a sibling called next with the identical tensor (same object, same
    in-place version) gets its cached output. The cache is dropped once every member has been served.
    Any other call (a new tensor, an in-place-modified one, a member asking twice) recomputes, so the
    result is always what the member would compute alone, up to the shared dropout mask. Not
    thread-safe: one forward at a time per model, as in training.
    """

    def __init__(self, members: list[LoRALinear]):
        self.members = members
        self._clear()

    def _clear(self) -> None:
        self._x: torch.Tensor | None = None
        self._version = -1
        self._outputs: tuple[torch.Tensor, ...] = ()
        self._served: set[int] = set()

    def output(self, member: LoRALinear, x: torch.Tensor) -> torch.Tensor:
        i = self.members.index(member)
        if x is not self._x or x._version != self._version or i in self._served:
            self._compute(member, x)
        out = self._outputs[i]
        self._served.add(i)
        if len(self._served) == len(self.members):
            self._clear()  # release x and the outputs as soon as all siblings have them
        return out

    def _compute(self, caller: LoRALinear, x: torch.Tensor) -> None:
        p = caller.active_dropout
        m = self.members
        self._outputs = lora_multi_linear(
            x, [l.base.weight for l in m], [l.lora_A for l in m], [l.lora_B for l in m], [l.scaling for l in m],
            dropout_p=p, seed=_draw_seed() if p > 0 else 0, backend=caller.backend, biases=[l.base.bias for l in m],
        )
        self._x, self._version, self._served = x, x._version, set()


def attach_lora(
    model: nn.Module,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: tuple[str, ...],
    backend: str = "auto",
    fuse_shared_inputs: bool = True,
) -> dict:
    """Freeze every parameter of ``model`` and put LoRA on the ``target_modules`` of each decoder layer.

    Returns {"backend": "triton"|"torch" (what runs on the model's device), "n_trainable": int,
    "modules": [qualified names replaced]}. ``fuse_shared_inputs=False`` keeps one kernel call per
    projection (for comparisons).
    """
    problems = []
    if r < 1:
        problems.append(f"r must be >= 1, got {r}")
    if not 0.0 <= dropout < 1.0:
        problems.append(f"dropout must be in [0, 1), got {dropout}")
    unknown = sorted(set(target_modules) - set(LLAMA_PROJECTIONS))
    if not target_modules or unknown:
        problems.append(f"target_modules must be a non-empty subset of {LLAMA_PROJECTIONS}, got {tuple(target_modules)}")
    if problems:
        raise ValueError("attach_lora: " + "; ".join(problems))

    for param in model.parameters():
        param.requires_grad_(False)
    replaced: list[str] = []
    parents: dict[str, nn.Module] = {}
    for name, module in list(model.named_modules()):
        parent_name, _, leaf = name.rpartition(".")
        if leaf in target_modules and isinstance(module, nn.Linear) and ".layers." in f".{parent_name}.":
            parent = model.get_submodule(parent_name)
            setattr(parent, leaf, LoRALinear(module, r, alpha, dropout, backend))
            parents[parent_name] = parent
            replaced.append(name)
    if not replaced:
        raise ValueError(f"attach_lora: no nn.Linear named {tuple(target_modules)} inside decoder layers (`.layers.N.`)")

    if fuse_shared_inputs:
        for parent in parents.values():
            for names in SHARED_INPUT_SETS:
                members = [getattr(parent, n) for n in names if isinstance(getattr(parent, n, None), LoRALinear)]
                members = [m for m in members if not m.quantized]  # a packed weight can't join the fused GEMM
                if len(members) >= 2:
                    group = SharedInputGroup(members)
                    for member in members:
                        member.group = group

    release_int8_inputs(model)
    device = model.get_submodule(replaced[0]).base.weight.device
    return {
        "backend": resolve_backend(backend, device),
        "n_trainable": sum(p.numel() for p in lora_parameters(model)),
        "modules": replaced,
    }


def _drop_int8_input(module: nn.Module, args, out) -> None:
    fn = getattr(out, "grad_fn", None)
    if fn is None or module.weight.requires_grad:
        return
    if getattr(fn, "A", None) is not None:  # MatMul8bitFp (CPU/XPU training): ctx.A
        fn.A = None
    tensors = getattr(fn, "tensors", None)
    if isinstance(tensors, (tuple, list)) and len(tensors) == 3:  # MatMul8bitLt (CUDA): (CAt, subA, A)
        fn.tensors = (None, None, None)


def release_int8_inputs(model: nn.Module) -> int:
    """Let bitsandbytes' 8-bit linears of ``model`` drop the input they keep for backward.

    Its 8-bit matmul keeps its input (and on CUDA the input's int8 transpose) as ctx attributes, for the
    gradient of the weight alone, which a frozen base never needs: ``MatMul8bitFp.backward`` (CPU) and
    ``MatMul8bitLt.backward`` (CUDA) read them only when the weight requires grad (bitsandbytes 0.50,
    autograd/_functions.py); dX needs the int8 weight and its scales alone. As attributes rather than
    ``save_for_backward``, they also escape non-reentrant activation checkpointing, so every checkpointed
    layer's linear inputs stayed alive until backward. A forward hook clears them as soon as each
    forward returns (a checkpoint's recompute runs the hook again). Returns how many linears have it;
    idempotent (a warm worker attaches LoRA once per trial)."""
    n = 0
    for module in model.modules():
        if type(module).__name__ == "Linear8bitLt" and is_quantized(module):
            if not getattr(module, "_moopt_releases_input", False):
                module.register_forward_hook(_drop_int8_input)
                module._moopt_releases_input = True
            n += 1
    return n


def detach_lora(model: nn.Module) -> int:
    """Put every LoRALinear's frozen base linear back in its place (the model as before
    :func:`attach_lora`, its base weights untouched by training); returns how many were taken out."""
    n = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent_name), leaf, module.base)
            module.group = None
            n += 1
    return n


def set_lora_backend(model: nn.Module, backend: str) -> None:
    """Switch every LoRALinear of ``model`` (and so its shared-input groups) to ``backend``."""
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.backend = backend


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA matrices (A then B of each LoRALinear, in module order)."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]


def save_peft_adapter(
    model: nn.Module,
    out_dir: str | os.PathLike,
    base_model_name_or_path: str,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: tuple[str, ...],
    revision: str | None = None,
) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` as PEFT saves a LoRA adapter, so
    ``peft.PeftModel.from_pretrained(base, out_dir)`` reproduces this model's outputs. Keys are
    ``base_model.model.<module path>.lora_{A,B}.weight`` (PEFT drops the adapter name on save)."""
    from safetensors.torch import save_file

    from moopt.yamlio import atomic_write_bytes, atomic_write_with

    tensors = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoRALinear):
            continue
        if module.r != r or module.alpha != alpha:
            raise ValueError(f"save_peft_adapter: {name} has r={module.r}, alpha={module.alpha}; asked to save r={r}, alpha={alpha}")
        tensors[f"base_model.model.{name}.lora_A.weight"] = module.lora_A.detach().cpu().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = module.lora_B.detach().cpu().contiguous()
    if not tensors:
        raise ValueError("save_peft_adapter: the model has no LoRALinear modules (call attach_lora first)")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # adapter_config.json as peft.LoraConfig.save_pretrained writes it, its fields that describe this adapter
    # (PEFT's loader fills the rest with its defaults). Written here rather than through PEFT: importing
    # peft (and the bitsandbytes it imports) adds 254 MiB to a process that has torch and transformers, at
    # the end of a trial, when a small CPU trial's RSS is near its peak; in bench_memory_gate the batch-4
    # trials' peaks fell by 50-70 MiB (medians per configuration, SmolLM2 in bf16, 2026-12-04).
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": int(r), "lora_alpha": alpha, "lora_dropout": float(dropout), "target_modules": sorted(target_modules),
        "bias": "none", "fan_in_fan_out": False, "inference_mode": False, "init_lora_weights": True,
        "use_rslora": False, "use_dora": False, "modules_to_save": None, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
        "revision": revision,  # a hub model's commit: PEFT loads the base at it
    }
    atomic_write_bytes(out / "adapter_config.json", (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    # save_file writes from the tensors' own memory; save() would build the whole file as bytes first, a
    # copy that raised a CPU trial's resident peak by the adapter's size (+76 MiB for r 64 on all of
    # SmolLM2's linears, above the trial's training peak).
    atomic_write_with(out / "adapter_model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    return out
