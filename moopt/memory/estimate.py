"""Analytic peak-memory estimate of one moopt training step, from ``config.json`` alone.

Notation: T = batch × seq padded tokens, L layers, h hidden, I intermediate, V vocab, r rank, a_b
bytes per activation element. One function per term (:func:`weight_bytes`, :func:`lora_bytes`,
:func:`phase_bytes` with the activations, logits and backward/optimizer transients of each phase of
the step, :func:`allocator_slack_bytes`, :func:`runtime_bytes`, :func:`checkpoint_page_bytes`):

    peak = runtime + weights + lora + max over phases(activations + logits + transients) + slack

``runtime`` is the CUDA context on ``cuda`` and the Python/torch process on ``cpu``. Weights are never
loaded. What the figure means:

- ``device="cuda"``: the GPU memory the training process holds at its peak, as NVML reports it
  (CUDA context + caching-allocator reserve). Compare with ``max_memory_reserved() + context``.
- ``device="cpu"``: the peak resident set size (``VmHWM``) of a training process: ``runtime``
  (Python + torch + transformers imported and the first kernels run, measured in this project's
  CPU venv) plus everything the step allocates. ``total_bytes - breakdown["runtime"]`` is
  the step's own extra memory, what ``peak RSS - RSS after imports`` measures.

moopt's own step is modelled (moopt/train/step.py): moopt LoRA modules that save only X and the fp32
S = X·Aᵀ (kernels/moopt_kernels/lora_linear.py, both backends), AdamW on fp32 adapters, the chunked linear+CE
(kernels/moopt_kernels/cross_entropy.py). ``kernels="peft"`` and ``loss="hf"`` model the usual HF/PEFT peer setup
(PEFT LoRA under bf16 autocast, ``prepare_model_for_kbit_training`` upcasting non-quantised params to
fp32, HF ``ForCausalLMLoss``, bitsandbytes ≤ 0.4x keeping every 4-bit linear's input) so published
peer numbers can be compared: benchmarks/bench_published.py, results and what each CUDA term changed
in docs/RESULTS.md. ``MemoryEstimate.allocated_bytes`` / ``reserved_bytes``
give the figure in the measure a source reports (``max_memory_allocated`` / ``max_memory_reserved``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from moopt.config import EAGER_MAX_TOKENS, SHARED_INPUT_SETS, TrialConfig, attention_implementation, resolve_dtype
from moopt.errors import ConfigError

GIB = 1024**3
MIB = 1024**2

DEVICES = ("cuda", "cpu")
KERNELS = ("torch", "triton", "peft")  # torch/triton: moopt's LoRA (with dropout, torch keeps X̂ and a mask); peft: peers
LOSSES = ("chunked", "hf")
BREAKDOWN_KEYS = (
    "runtime",  # CUDA context (cuda) or the Python+torch process (cpu)
    "cuda_context",
    "cuda_workspaces",  # cuBLAS/cuBLASLt workspaces, in the caching allocator
    "weights",
    "checkpoint_pages",  # cpu + 8bit/4bit: the memory-mapped checkpoint, read whole while quantising; cpu
    # unquantised in another dtype than the file's: what the load-time conversion peaks above the step
    "lora_params_grads_optimizer",
    "activations",
    "logits",
    "transients",
    "allocator_slack",
    "calibration",
)

# CUDA context (NVML's per-process bytes less the allocator's reserve), measured on an H200 (driver
# 580, CUDA 13.0, torch 2.11; benchmarks/results/gpu/h200_2026-12-04, gpu_memory_probe.py): 610 MiB
# after CUDA's init, 676 after the first cuBLAS GEMM, 740 after the first backward, 758 MiB in every
# trial of moopt's step (SDPA, Triton kernels loaded). Published figures for older stacks are lower
# (287 MB with CUDA 11.7's lazy loading, 667 MB without), so 768 MiB keeps the estimate on the safe
# side; a probe calibrates each machine. Until 2026-12-04 this was 512 MiB, 246 under the H200's.
CUDA_CONTEXT_BYTES = 768 * MIB
# bitsandbytes' 8-bit (LLM.int8) kernels load into the context on first use: 822 vs 758 MiB on the
# H200 (an 8-bit trial vs the unquantised and 4-bit ones, same measurement).
CUDA_BNB_INT8_CONTEXT_BYTES = 64 * MIB
# cuBLAS workspace, one per (handle, stream): PyTorch's default CUBLAS_WORKSPACE_CONFIG is ":4096:8"
# (8 chunks of 4096 KiB = 32 MiB) on Hopper and later, ":4096:2:16:8" (8.1 MiB) before
# (aten/src/ATen/cuda/CublasHandlePool.cpp, getChosenWorkspaceSize); cuBLASLt shares it since torch
# 2.5. Forward runs on the main thread and backward on autograd's device thread, each with its own
# handle: two workspaces, taken from the caching allocator (so in memory_allocated()). 32 MiB each
# covers every architecture.
CUDA_WORKSPACE_BYTES = 2 * 32 * MIB
# CPU runtime: a trial worker's resident memory before its first step plus what the first
# forward/backward adds (oneDNN, OpenMP and autograd threads). Measured peaks of a tiny-model probe,
# where this term is nearly everything: 481 MiB in the dev venv, 591 MiB in a fresh CI clone (more
# import-time memory there); 560 MiB sits between. Read as VmHWM: ru_maxrss carries the parent's
# peak across exec and reads higher.
CPU_RUNTIME_BYTES = 560 * MIB
# Caching-allocator slack on the dynamic part (activations, logits, transients): 0.03-0.15 measured
# by others; 0.10 keeps the estimate on the safe side. glibc on CPU returns big blocks (mmap) at once.
CUDA_SLACK = 0.10
# What the H200 showed beyond that (max_memory_reserved - max_memory_allocated, 9 SmolLM2-shaped
# trials, benchmarks/results/gpu/h200_2026-12-04/memory_probe_cuda.json): 51-78 MiB even where the
# step's dynamic part is ~150 MiB, and 211-218 MiB where the chunked loss head's chunk is full (1024
# rows x 49k vocabulary: 288 MiB of logits and their cast), whose blocks the allocator keeps cached
# while smaller tensors of the backward cannot reuse them. Fitted on those 9 (no hold-out): slack =
# max(64 MiB, 0.10 x dynamic + 0.6 x one chunk's logits bytes); residuals -14 to +107 MiB.
CUDA_SLACK_FLOOR_BYTES = 64 * MIB
CUDA_CE_CHUNK_SLACK = 0.6
CPU_SLACK = 0.10
# Bytes per labelled logit of the loss head in a CPU step's peak RSS, by activation bytes (logits_bytes).
CPU_LOGIT_BYTES = {4: 12, 2: 8}
# CPU + bitsandbytes (8bit/4bit), fitted on benchmarks/bench_memory.py's 16 quantised SmolLM2 probes:
# - bitsandbytes' native library adds ~35 MiB to a trial worker (tiny-model probes, 4bit vs none:
#   481 -> 513 MiB in the dev venv, 591 -> 625 MiB in a fresh CI clone; a bare interpreter grows
#   by 187 MiB, mostly torch modules a worker has loaded anyway);
# - transformers memory-maps the checkpoint and bitsandbytes reads every weight to quantise it; the
#   unquantised embeddings and norms keep the mapping alive, so the whole file stays resident
#   (least squares: 0.99 of the file bytes);
# - the quantising pass frees many weight-sized buffers, which raises glibc's dynamic mmap threshold,
#   so later activations come from the heap, which keeps what it frees: +2.4% of the dynamic part
#   (fitted), 5% used.
CPU_BNB_RUNTIME_BYTES = 35 * MIB
CPU_QUANT_CHECKPOINT_RESIDENT = 1.0
CPU_QUANT_HEAP_RETENTION = 0.05
# NF4 with double quantisation: 4 bits + 0.127 bit of quantisation constants per parameter.
NF4_BYTES_PER_PARAM = 0.5 + 0.127 / 8
# AdamW on fp32 adapters: 4 (param) + 4 (grad) + 8 (two fp32 states) bytes per trainable param.
LORA_BYTES_PER_PARAM = 16
# foreach AdamW temporaries (sqrt(v) and friends) during optimizer.step(): ~4 bytes per param; 8 to
# cover grad clipping's foreach norms too. CUDA only: torch 2.13 picks foreach (and foreach clipping)
# only for CUDA/XPU params; on CPU AdamW loops over tensors one at a time, so its temporaries are a few
# copies of the largest adapter matrix (8 bytes per element covers them). Measured on SmolLM2-135M,
# r=64 all-linear (19.5 M adapter params): peak RSS 1474 MiB where foreach temporaries would give 1595.
OPTIMIZER_TMP_BYTES_PER_PARAM = 8
CPU_OPTIMIZER_TMP_BYTES_PER_ELEMENT = 8
CALIBRATION_FACTOR_RANGE = (0.9, 1.1)
# How far the true peak has been seen above the uncalibrated estimate, (measured - estimate) / estimate,
# worst case per (device, quantization): the memory gate's band before any probe calibrates it.
# cpu: the worst over benchmarks/results/memory_cpu.csv and memory_cpu_highstate.csv (32 SmolLM2-135M probes
# each, peak RSS). memory_cpu_highstate.csv: the old 3-step probe in a fresh venv of scripts/setup.sh, in a
# machine state ~85 MiB above the others (docs/RESULTS.md; the runtime spread CPU_RUNTIME_SPREAD_BYTES stands
# for): unquantised at most 2.9% above, so the 3% floor; 8-bit up to 10.1% (b8 x 64 r 8 on all linears without
# checkpointing; 27% before the estimate counted each quantised LoRA's own X̂ and moopt stopped 8-bit bases
# keeping their input); 4-bit up to 12.1% (b16 x 64 r 8 on all linears with checkpointing). memory_cpu.csv
# (2026-12-05 afternoon, the probe as a trial goes on and trimming the heap before its evaluation, the low
# state): 4-bit up to 10.5% above. Before that trim the varied shapes had left bitsandbytes' CPU heap
# resident under the evaluation: 4-bit with checkpointing measured up to 15.9% above (b4 x 64 r 8 on q,v:
# 1694 MiB against 1461; 1455 with the trim), and this prior was 16%.
# cuda: benchmarks/results/memory_published.csv (published peaks of other stacks: LitGPT Llama-2-7B LoRA
# batch 2 for none, Unsloth's HF+FA2 Llama-3.3-70B QLoRA at 80 GB for 4bit);
# no published 8-bit peak was found, so 8bit takes the larger of the two. Rounded up to whole percent;
# tests/test_memory_gate_band.py recomputes them from those CSVs. The H200's own NVML peaks
# (benchmarks/results/gpu/h200_2026-12-04) lie within them.
ESTIMATE_UNDER_PRIOR = {
    ("cpu", "none"): 0.03, ("cpu", "4bit"): 0.13, ("cpu", "8bit"): 0.11,
    ("cuda", "none"): 0.06, ("cuda", "4bit"): 0.14, ("cuda", "8bit"): 0.14,
}
# The other side: the worst over-estimate (estimate above the measured peak) per (device, quantization), rounded
# up to whole percent, at least MIN_ERROR_BAND. Uncalibrated, a configuration estimated over the budget by less
# than this is probed, not ruled out untrained: the tiny test model on this CPU was estimated at 0.55 GiB and
# peaked at 0.48, so a 0.5 GiB budget ruled out every configuration that fitted. cpu: memory_cpu.csv (fp32
# SmolLM2, up to 15.4% above for b16 x 64 unquantised, 9.6% 4-bit, 7.2% 8-bit; the other CPU files less), plus
# the runtime's spread (CPU_RUNTIME_SPREAD_BYTES) as on the under side. cuda: the H200's own NVML peaks
# (benchmarks/results/gpu/h200_2026-12-04: unquantised up to 6.1% above, 4-bit 2.3%; the one 8-bit run measured
# above its estimate, so 8bit takes the larger). Published peaks of other stacks (up to 16% under the estimate,
# torchtune's QLoRA) are not this stack's and are not used. tests/test_memory_gate_band.py recomputes them.
ESTIMATE_OVER_PRIOR = {
    ("cpu", "none"): 0.16, ("cpu", "4bit"): 0.10, ("cpu", "8bit"): 0.08,
    ("cuda", "none"): 0.07, ("cuda", "4bit"): 0.03, ("cuda", "8bit"): 0.07,
}
MAX_OVER_PRIOR = 0.5  # a configuration estimated at twice the budget is not probed, whatever the spread
# The CPU runtime term's spread between machines and venvs, an absolute amount the relative prior above
# does not scale with: resident memory after imports seen from 481 to 603 MiB, and the CI machine's
# tiny-model test measured 5.4% (about 71 MiB) above an estimate of ~1.3 GiB where the 32 SmolLM2 probes
# never were above. Added to the cpu prior as spread / estimate (under_prior), so a small configuration
# near the budget is probed, not trusted, until a measurement on this machine calibrates the key.
CPU_RUNTIME_SPREAD_BYTES = 128 * MIB
MIN_ERROR_BAND = 0.03  # run-to-run spread of a probe's own peak (CPU RSS: ~2%)
DEFAULT_CE_CHUNK = 1024  # rows, moopt_kernels.cross_entropy.DEFAULT_CHUNK_SIZE
# What a configuration measured once (a probe, or its trial earlier) must leave under the budget: its peak's
# run-to-run spread and how far its trial may go above its probe. CUDA (caching allocator, NVML): the spread.
# CPU peak RSS goes further: the heap creeps with each step's new batch shapes over a trial's steps and its
# evaluation adds 20-45 MiB on top (SmolLM2 bf16, the bundled data, 2026-12-05): trials peaked 0.9-3.0% above
# their probes (b8 r 16 q,k,v,o: probe 0.956 GiB, trial 0.985). The gate widens it further for a key where
# a trial was seen further above its probe (measured_spread).
MEASURED_SPREAD = {"cpu": 0.05, "cuda": MIN_ERROR_BAND}
PROBE_EXCESS_MARGIN = 0.01  # over the worst trial-above-its-probe seen for the key


def measured_spread(device: str, probe_excess: list[float] | tuple[float, ...] = ()) -> float:
    """The margin a measured peak needs under the budget on ``device``: MEASURED_SPREAD, or the worst relative
    excess of a trial over its own probe seen for this key (calibration.add_pair records them) plus
    PROBE_EXCESS_MARGIN, whichever is larger."""
    worst = max(probe_excess, default=None)
    prior = MEASURED_SPREAD.get(device, MEASURED_SPREAD["cpu"])
    return prior if worst is None else max(prior, float(worst) + PROBE_EXCESS_MARGIN)


@dataclass(frozen=True)
class ModelDims:
    """The shapes that matter for memory, read from a LlamaConfig."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    name: str = ""

    @classmethod
    def from_config(cls, cfg: Any) -> "ModelDims":
        heads = int(cfg.num_attention_heads)
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return cls(
            layers=int(cfg.num_hidden_layers), hidden=int(cfg.hidden_size),
            intermediate=int(cfg.intermediate_size), heads=heads, kv_heads=int(kv),
            head_dim=int(head_dim), vocab=int(cfg.vocab_size),
            tied=bool(getattr(cfg, "tie_word_embeddings", False)),
            name=str(getattr(cfg, "_name_or_path", "") or ""),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each Llama linear in one layer."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:  # P_lin
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:  # P_emb: embed_tokens, plus lm_head when untied
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def norm_params(self) -> int:  # two RMSNorms per layer + the final one
        return (2 * self.layers + 1) * self.hidden

    def lora_params(self, r: int, targets: Iterable[str]) -> int:
        """P_lora = L · r · Σ_{m∈S} (d_in + d_out)."""
        shapes = self.linear_shapes()
        return self.layers * r * sum(sum(shapes[m]) for m in targets)

    def signature(self) -> str:
        return f"llama-L{self.layers}-h{self.hidden}-i{self.intermediate}-kv{self.kv_heads}-v{self.vocab}"


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes and the terms that make it up (the terms of the peak phase; they sum to the total)."""

    total_bytes: int
    breakdown: dict[str, int]
    phase: str = ""  # which phase of the step holds the peak: loss, layer_backward, optimizer
    notes: tuple[str, ...] = field(default_factory=tuple)
    shape: tuple[int, int] = (0, 0)  # (batch, sequence) estimated
    device: str = ""
    kernels: str = ""
    loss: str = ""

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    @property
    def reserved_bytes(self) -> int:
        """What ``torch.cuda.max_memory_reserved()`` would show: the total less the CUDA context."""
        return self.total_bytes - self.breakdown.get("cuda_context", 0) - self.breakdown.get("runtime", 0)

    @property
    def allocated_bytes(self) -> int:
        """What ``torch.cuda.max_memory_allocated()`` would show: reserved less the allocator's slack
        (and any calibration, which is fitted on process totals)."""
        return self.reserved_bytes - self.breakdown.get("allocator_slack", 0) - self.breakdown.get("calibration", 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "total_gib": round(self.total_gib, 4),
            "breakdown": {k: round(v / GIB, 4) for k, v in self.breakdown.items()},
            "phase": self.phase,
            "assumed": {"device": self.device, "kernels": self.kernels, "loss": self.loss,
                        "batch": self.shape[0], "seq": self.shape[1]},
            "notes": list(self.notes),
        }

    def render(self) -> str:
        """Aligned plain-text table, one term per line, then the total."""
        rows = [(k, v) for k, v in self.breakdown.items() if v]
        width = max([len(k) for k, _ in rows] + [len("total")])
        lines = [f"{'term':<{width}}  {'GiB':>9}"]
        lines += [f"{k:<{width}}  {v / GIB:>9.3f}" for k, v in rows]
        lines.append(f"{'-' * width}  {'-' * 9}")
        lines.append(f"{'total':<{width}}  {self.total_gib:>9.3f}")
        if self.phase:
            lines.append(f"(peak phase: {self.phase})")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# model_types whose layers, attention and head are Llama's as moopt trains them: LoRA on q/k/v/o_proj and
# gate/up/down_proj under model.layers, and a loss computed from the last hidden state times lm_head's weight. Each one
# trained here and its saved adapter reproduced moopt's eval_loss in PEFT to 0.001 (tiny random models, 2026-12-07).
LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3", "gemma")
NOT_LLAMA = {  # what a close relative does differently (what went wrong when it was let through)
    "granite": "its head scales the logits (logits_scaling), which moopt's loss would leave out: wrong losses",
    "gemma2": "its head soft-caps the logits and its attention needs eager softcapping: wrong losses or a failed trial",
    "gemma3": "its head soft-caps the logits: wrong losses",
    "cohere": "its head scales the logits (logit_scale): wrong losses",
    "phi3": "its attention and MLP are fused (qkv_proj, gate_up_proj): LoRA would reach o_proj and down_proj only",
    "gpt_neox": "its layers are not Llama's (gpt_neox.layers, query_key_value): no LoRA target would be found",
    "gpt2": "its layers are not Llama's (transformer.h, c_attn): no LoRA target would be found",
}


def load_model_config(path_or_folder: str | Path):
    """A ``transformers.PretrainedConfig`` from ``config.json`` (or a folder holding it); no weights."""
    from transformers import AutoConfig, LlamaConfig

    from moopt.memory.shapes import model_shape

    path = Path(path_or_folder).expanduser()
    known = model_shape(str(path_or_folder)) if not path.exists() else None
    if known is not None:  # a name from moopt.memory.shapes: its config.json values, no file needed
        name = known.pop("_name_or_path")
        known.pop("torch_dtype", None)
        cfg = LlamaConfig(**{k: v for k, v in known.items() if k != "model_type"})
        cfg._name_or_path = name
        return cfg
    if path.is_dir():
        if not (path / "config.json").is_file():
            from moopt.model_files import adapter_hint

            raise ConfigError(f"{path}: folder has no config.json{adapter_hint(path)}")
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    shape = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [k for k in shape if k not in data]
    if missing:
        raise ConfigError(f"{path}: missing {missing}; only Llama-family configs are supported")
    wrong = [f"{k}={data[k]!r}" for k in (*shape, "num_key_value_heads")
             if k in data and (isinstance(data[k], bool) or not isinstance(data[k], int) or data[k] < 1)]
    if wrong:
        raise ConfigError(f"{path}: {', '.join(wrong)}: each must be a whole number >= 1")
    model_type = data.get("model_type", "llama")
    # the estimate is a dense decoder's (Llama's q, k, v, o, gate, up, down in each layer): a mixture of experts holds
    # several MLPs a layer (Mixtral's 8: its weights read as 13 GiB of its 87), an encoder is no causal LM
    experts = max(int(data.get(k) or 0) for k in ("num_local_experts", "num_experts", "n_routed_experts")
                  if isinstance(data.get(k) or 0, int))
    causal = [a for a in data.get("architectures") or [] if isinstance(a, str)]
    if experts > 1 or (causal and not any(a.endswith("ForCausalLM") for a in causal)):
        what = f"a mixture of {experts} experts" if experts > 1 else f"not a causal LM ({', '.join(causal)})"
        raise ConfigError(f"{path}: model_type {model_type}, {what}: moopt estimates and trains dense Llama-family "
                          "decoders only")
    if model_type not in LLAMA_FAMILY:
        why = NOT_LLAMA.get(model_type, "its layers are not Llama's (q/k/v/o_proj and gate/up/down_proj under model.layers,"
                                        " an lm_head moopt's loss computes as is)")
        raise ConfigError(f"{path}: model_type {model_type}: moopt trains Llama-family decoders only "
                          f"({', '.join(LLAMA_FAMILY)}); {why}")
    try:
        cfg = AutoConfig.for_model(model_type, **{k: v for k, v in data.items() if k != "model_type"})
    except Exception:  # noqa: BLE001 - an unknown model_type, transformers' strict dataclass validation, ...
        try:
            cfg = LlamaConfig(**{k: v for k, v in data.items() if k != "model_type"})
        except Exception as e:  # noqa: BLE001 - transformers' strict dataclass validation, ZeroDivisionError, ...
            first = " ".join(str(e).split())[:240]
            raise ConfigError(f"{path}: not a config transformers can read ({type(e).__name__}: {first})") from None
    cfg._name_or_path = str(path.parent)
    from moopt.model_files import is_conversion

    # moopt's cached conversion (fp32): unquantised trials load its copy in their dtype (prepare_dtype_copy)
    cfg.moopt_dtype_copies = is_conversion(path.parent)
    return cfg


def checkpoint_bytes(model_config: Any, dims: "ModelDims", dtype: str | None = None) -> int:
    """Bytes of the weights on disk: every parameter in the file's dtype (``dtype``, else the config's
    ``dtype``; bf16 when the config does not say)."""
    dtype = dtype or _config_dtype(model_config)
    per = 4 if "float32" in dtype else 1 if "int8" in dtype else 2
    return per * (dims.linear_params + dims.embedding_params + dims.norm_params)


def loaded_file_dtype(model_config: Any, trial: TrialConfig, device: str) -> str:
    """The dtype of the file an unquantised trial loads: the checkpoint's, or for moopt's cached conversions
    (``moopt_dtype_copies``) the copy in the trial's own dtype."""
    if getattr(model_config, "moopt_dtype_copies", False) and trial.model.quantization == "none":
        return resolve_dtype(trial.model.dtype, device)
    return _config_dtype(model_config)


def _config_dtype(model_config: Any) -> str:
    """The checkpoint's dtype as its config says it ("float32"; bf16 when it does not say)."""
    return str(getattr(model_config, "dtype", None) or "bfloat16").removeprefix("torch.")


def _act_bytes(trial: TrialConfig, device: str) -> int:
    return 4 if resolve_dtype(trial.model.dtype, device) == "float32" else 2  # what the trial trains in


@dataclass(frozen=True)
class StepShape:
    """What every term of the estimate reads: the model's dimensions and the trial's step."""

    m: ModelDims
    trial: TrialConfig
    device: str
    kernels: str
    loss: str
    b: int  # batch
    s: int  # sequence
    a_b: int  # bytes per activation element (the compute dtype)
    cuda_workspace_bytes: int = CUDA_WORKSPACE_BYTES
    cuda_slack: float = CUDA_SLACK

    @property
    def T(self) -> int:  # tokens of the batch, padding included
        return self.b * self.s

    @property
    def quant(self) -> str:
        return self.trial.model.quantization

    @property
    def peft(self) -> bool:
        return self.kernels == "peft"

    @property
    def masked(self) -> bool:
        """Padding possible (batch > 1): HF builds a 4D mask and SDPA gets K/V repeated to all heads."""
        return self.b > 1

    @property
    def attention(self) -> str:
        """The attention implementation the trial runs (moopt.config.attention_implementation)."""
        return attention_implementation(self.device, resolve_dtype(self.trial.model.dtype, self.device), self.s)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.trial.lora.target_modules)

    @property
    def r(self) -> int:
        return self.trial.lora.r


def _non_quantised_bytes(st: StepShape) -> int:
    """Bytes per parameter of what bitsandbytes does not quantise (embeddings, lm_head, norms).
    PEFT's prepare_model_for_kbit_training upcasts them to fp32: +2.1 GB on Llama-3-8B; moopt keeps
    them in the compute dtype (the base weights load in it)."""
    return 4 if (st.peft and st.quant != "none") else st.a_b


def weight_bytes(st: StepShape) -> float:
    """The frozen base weights: compute dtype, NF4 with double quantisation, or int8 + row scales."""
    m, w_b = st.m, st.a_b
    other_b = _non_quantised_bytes(st)
    small = m.embedding_params + m.norm_params
    if st.quant == "none":
        return w_b * (m.linear_params + small)
    if st.quant == "4bit":
        return m.linear_params * NF4_BYTES_PER_PARAM + other_b * small
    # 8bit: int8 weights + one fp32 scale per output row
    row_scales = 4 * m.layers * sum(d_out for _, d_out in m.linear_shapes().values())
    return m.linear_params + row_scales + other_b * small


def lora_bytes(st: StepShape, phase: str = "optimizer") -> int:
    """LoRA adapters: fp32 params + fp32 grads + AdamW's two fp32 states. In the loss phase of a step
    with one micro-batch the grads do not exist yet: the step ends with ``zero_grad(set_to_none=True)``
    (moopt/train/step.py), so they are allocated during backward (SmolLM2 r 64 on all linears, 19.5 M
    adapter parameters, bf16 on a CPU: the estimate was ~110 MiB over its probes at every batch size
    with the grads counted there, 17-44 MiB over at r 8)."""
    per_param = LORA_BYTES_PER_PARAM
    if phase == "loss" and st.trial.training.gradient_accumulation_steps == 1:
        per_param -= 4
    return per_param * st.m.lora_params(st.r, st.targets)


def activation_bytes_per_token_layer(st: StepShape, bnb_keeps_inputs: bool) -> int:
    """Saved activations of one decoder layer, bytes per token."""
    m, a_b, h, I = st.m, st.a_b, st.m.hidden, st.m.intermediate
    shapes, targets, r = m.linear_shapes(), st.targets, st.r
    q_out, kv_out = m.heads * m.head_dim, m.kv_heads * m.head_dim
    kv_saved = q_out if st.masked else kv_out
    # bitsandbytes 0.50: its 8-bit matmul keeps its input for backward (every linear; MatMul8bitLt's
    # ctx.tensors, on a CPU MatMul8bitFp's ctx.A), MatMul4Bit only the packed weight
    # (bitsandbytes/autograd/_functions.py). moopt drops the 8-bit one (moopt.train.lora.release_int8_inputs:
    # it serves only a weight gradient a frozen base never needs), so its 8bit, like 4bit, keeps just what
    # the LoRA keeps; peers keep it.
    base_keeps = set(shapes) if (st.quant == "8bit" and st.peft) or (st.quant == "4bit" and bnb_keeps_inputs) else set()
    # moopt's torch backend with dropout keeps X̂ (X with the dropped entries zeroed, in X's dtype) and the
    # bool keep mask in place of X (moopt_kernels.lora_linear.torch_down; triton regenerates the mask from
    # its seed and keeps X). Unquantised, siblings that share an input share one X̂ (lora_multi); over a
    # quantised base each LoRA keeps its own (moopt.train.lora: a packed weight can't join the fused GEMM).
    # SmolLM2 on a CPU, fp32, 8 x 64 tokens, saved tensors counted with saved_tensors_hooks: 8-bit all
    # linears keep six 576-wide X̂ and one 1536-wide per layer (+283 MiB over q,v), which the estimate had
    # counted once per shared input.
    hat = not st.peft and st.kernels == "torch" and st.trial.lora.dropout > 0
    keeps_input = base_keeps | (set() if hat else set(targets))
    act = 2 * 4 * h  # two RMSNorms: the fp32 copy (bf16 input) or the fp32 input itself, 4h each
    if st.attention == "eager":  # q, and k, v repeated to all heads (the b·heads·s² softmax: attention_score_bytes)
        act += a_b * 3 * q_out
    else:
        act += a_b * (q_out + 2 * kv_saved + q_out) + 4 * m.heads  # SDPA saves q, k, v, out + fp32 lse
    act += a_b * 3 * I  # SwiGLU: gate (silu input), silu output, up
    act += _input_bytes(st, keeps_input)
    if st.peft:
        act += sum(a_b * r for _ in targets)  # S in bf16 under autocast
        if st.trial.lora.dropout > 0:  # PEFT keeps the dropped copy and a bool mask per module
            act += sum((a_b + 1) * shapes[t][0] for t in targets)
    elif hat:
        act += sum(a_b * r for _ in targets)  # S in X's dtype
        if st.quant == "none":  # one X̂ + mask per shared input
            act += sum((a_b + 1) * shapes[g[0]][0] for g in _input_groups(targets))
        else:
            act += sum((a_b + 1) * shapes[t][0] for t in targets)
    else:
        act += sum(4 * r for _ in targets)  # moopt's triton: fp32 S; the dropout mask is regenerated
    return act


def _input_bytes(st: StepShape, modules: set[str]) -> int:
    """Bytes per token of the inputs of ``modules``, each tensor once (siblings share theirs)."""
    shapes = st.m.linear_shapes()
    return sum(st.a_b * shapes[g[0]][0] for g in _input_groups(tuple(modules)))


def _input_groups(targets: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The targets grouped by the tensor HF's Llama layer feeds them (q/k/v, gate/up; o and down alone)."""
    shared = [tuple(t for t in family if t in targets) for family in SHARED_INPUT_SETS]
    alone = [(t,) for t in targets if not any(t in family for family in SHARED_INPUT_SETS)]
    return [g for g in shared if g] + alone


def outer_bytes_per_token(st: StepShape) -> int:
    """Outside the layers: final RMSNorm (4h), RoPE cos/sin, the hidden rows the chunked CE keeps."""
    a_b, h = st.a_b, st.m.hidden
    return 4 * h + 2 * a_b * st.m.head_dim + (a_b * h if st.loss == "chunked" else 0)


def attention_score_bytes(st: StepShape) -> int:
    """One layer's saved attention probabilities under eager attention (transformers' eager_attention_forward:
    the fp32 softmax, kept by its backward, and its copy in the compute dtype, kept by the matmul with V);
    0 under SDPA, which keeps no b·heads·s² tensor. An upper bound: SmolLM2 in bf16 at 16 x 128 tokens
    (packed long-tailed rows) peaked 167 MiB above its SDPA twin (1.81 against 1.65 GiB resident), where
    this counts 405 MiB over the 30 layers."""
    if st.attention != "eager":
        return 0
    return (4 + st.a_b) * st.b * st.m.heads * st.s * st.s


def mask_bytes(st: StepShape) -> int:
    """HF's 4D bool attention mask (b·s² bytes), built when the batch may hold padding."""
    return st.b * st.s * st.s if st.masked else 0


def logits_bytes(st: StepShape, ce_chunk_size: int) -> int:
    """The loss's logits path at its peak."""
    T, V = st.T, st.m.vocab
    if st.loss == "chunked":
        # moopt_kernels/cross_entropy.py: one fp32 chunk of logits turned into its gradient in place (4
        # bytes per logit), plus its cast to the activation dtype when that is not fp32 (bf16: +2); on
        # CUDA that is what the H200 measured. On a CPU the head alone raises peak RSS by just that
        # (SmolLM2's 576 x 49152 head, 2026-12-04, AMD EPYC: 4.04-4.36 bytes per logit in fp32, 6.00-6.30
        # in bf16, at 256-1024 rows), but a whole step's peak RSS grows by more per labelled token,
        # fitted per dtype on the CPU probes: fp32 12 (benchmarks/results/memory_cpu.csv), bf16 8 (the
        # memory gate's space, 12 configurations at 84-672 tokens: measured slope 1.08-1.30 MiB per
        # token; with 12 the estimate's was 0.14-0.17 steeper, the gate study's estimate 22-25% over at
        # batch 32; with 9, once the 8-bit and dropout terms were fixed, 2-6% under at batch 4 and 4-9%
        # over at batch 16 in bench_memory_gate's 5 seeds, calibrated median 3.8-6.4%; with 8 3.4-5.0%,
        # and never under memory_cpu_bf16.csv's 8 probes; 7 goes under them by up to 1.9%).
        # The excess is the heap around the chunk's buffers, not modelled term by term.
        per_logit = (CPU_LOGIT_BYTES.get(st.a_b, 12) if st.device == "cpu"
                     else 4 + (st.a_b if st.a_b != 4 else 0))
        return per_logit * min(ce_chunk_size, T) * V
    # HF ForCausalLMLoss, measured with a live-tensor tracker (torch 2.13): backward holds the
    # saved fp32 log-softmax, its incoming grad and its output grad: 12·T·V, plus the logits
    # the model output still holds (the lm_head's dtype: 2 bytes bf16 / 4 fp32): 14 / 16 bytes per logit.
    return (12 + _non_quantised_bytes(st)) * T * V


def residual_grad_bytes(st: StepShape) -> int:
    """The gradient flowing down the residual stream (+ its sum)."""
    return 2 * st.a_b * st.m.hidden * st.T


def layer_backward_transient_bytes(st: StepShape) -> int:
    """Temporaries of one layer's backward: the larger of the MLP's and the attention's, plus
    bitsandbytes' dequantised weight on a quantised model.

    Attention backward (FlashAttention-2 and SDPA's flash/efficient kernels, flash_api.cpp mha_bwd): an
    fp32 dq accumulator (4 bytes × n_h·d per token), fp32 softmax row sums, and with GQA dk/dv expanded
    to all heads in the compute dtype before they are summed back; plus the dq/dk/dv outputs
    themselves. It runs while the layer's saved tensors are alive, before the MLP's backward
    temporaries exist, so the transient is the larger of the two (the MLP's on every Llama shape
    checked)."""
    m, a_b, T = st.m, st.a_b, st.T
    q_out, kv_out = m.heads * m.head_dim, m.kv_heads * m.head_dim
    mlp_tmp = (3 * a_b * m.intermediate + 2 * a_b * m.hidden) * T  # MLP backward: grads of gate/up/act alive at once
    # attention backward: fp32 dq accumulator + fp32 row sums, dk/dv expanded to all heads, dq/dk/dv
    attn_tmp = (4 * q_out + 4 * m.heads + 2 * a_b * q_out + a_b * (q_out + 2 * kv_out)) * T
    if st.attention == "eager":  # the softmax's fp32 gradient and the probabilities' gradient in the compute dtype
        attn_tmp += (4 + a_b) * st.b * m.heads * st.s * st.s
    dequant = 0
    if st.quant != "none":  # bnb dequantises one weight to the compute dtype per matmul
        dequant = 2 * max(a * c for a, c in m.linear_shapes().values())
    return max(mlp_tmp, attn_tmp) + dequant


def optimizer_transient_bytes(st: StepShape) -> int:
    """AdamW's (and clipping's) temporaries during optimizer.step()."""
    if st.device == "cuda":
        return OPTIMIZER_TMP_BYTES_PER_PARAM * st.m.lora_params(st.r, st.targets)
    # per-tensor AdamW: temporaries of one adapter matrix (r × max(d_in, d_out)) at a time
    shapes = st.m.linear_shapes()
    return CPU_OPTIMIZER_TMP_BYTES_PER_ELEMENT * st.r * max(max(shapes[t]) for t in st.targets)


def phase_bytes(st: StepShape, bnb_keeps_inputs: bool, ce_chunk_size: int) -> dict[str, tuple[int, int, int]]:
    """(activations, logits, transients) alive at each phase of the step: the loss (all activations
    saved, the logits path), a layer's backward (one layer recomputed under gradient checkpointing)
    and the optimizer step."""
    T, L = st.T, st.m.layers
    per_token_layer = activation_bytes_per_token_layer(st, bnb_keeps_inputs)
    outer = outer_bytes_per_token(st)
    scores = attention_score_bytes(st)
    if st.trial.model.gradient_checkpointing:
        kept = st.a_b * st.m.hidden * T * L  # HF per-layer checkpointing keeps each layer's input
        loss_acts = kept + outer * T + mask_bytes(st)
        bwd_acts = loss_acts + per_token_layer * T + scores  # one layer recomputed
    else:
        loss_acts = (per_token_layer * T + scores) * L + outer * T + mask_bytes(st)
        bwd_acts = loss_acts
    grad_hidden = residual_grad_bytes(st)
    return {
        "loss": (loss_acts, logits_bytes(st, ce_chunk_size), grad_hidden // 2),
        "layer_backward": (bwd_acts, 0, grad_hidden + layer_backward_transient_bytes(st)),
        "optimizer": (0, 0, optimizer_transient_bytes(st)),
    }


def allocator_slack_bytes(st: StepShape, dynamic: int, ce_chunk_size: int = DEFAULT_CE_CHUNK) -> float:
    """The allocator's slack on the dynamic part (activations, logits, transients); on CUDA at least
    CUDA_SLACK_FLOOR_BYTES, plus the cached blocks of the chunked loss head's chunk (CUDA_CE_CHUNK_SLACK);
    on CPU with bitsandbytes, the heap's retention on top. ``st.cuda_slack == 0`` switches CUDA's off."""
    if st.device == "cuda":
        if st.cuda_slack == 0:
            return 0.0
        chunk = logits_bytes(st, ce_chunk_size) if st.loss == "chunked" else 0
        return max(CUDA_SLACK_FLOOR_BYTES, st.cuda_slack * dynamic + CUDA_CE_CHUNK_SLACK * chunk)
    slack = CPU_SLACK * dynamic
    if st.quant != "none":
        slack += CPU_QUANT_HEAP_RETENTION * dynamic
    return slack


def runtime_bytes(st: StepShape, cuda_context_bytes: int, cpu_runtime_bytes: int) -> dict[str, int]:
    """What the process holds before the step: CUDA context and cuBLAS workspaces, or the CPU
    process (+ bitsandbytes' native library when quantised)."""
    if st.device == "cuda":
        int8 = CUDA_BNB_INT8_CONTEXT_BYTES if st.quant == "8bit" else 0
        return {"cuda_context": cuda_context_bytes + int8, "cuda_workspaces": st.cuda_workspace_bytes}
    return {"runtime": cpu_runtime_bytes + (CPU_BNB_RUNTIME_BYTES if st.quant != "none" else 0)}


def checkpoint_page_bytes(st: StepShape, model_config: Any) -> float:
    """CPU + bitsandbytes: the memory-mapped checkpoint, read whole while quantising, stays resident."""
    if st.device == "cpu" and st.quant != "none":
        return CPU_QUANT_CHECKPOINT_RESIDENT * checkpoint_bytes(model_config, st.m)
    return 0


def estimate_peak(
    model_config: Any,
    trial: TrialConfig,
    device: str = "cuda",
    kernels: str = "torch",
    loss: str = "chunked",
    calibration: dict | None = None,
    *,
    ce_chunk_size: int = DEFAULT_CE_CHUNK,
    cuda_context_bytes: int = CUDA_CONTEXT_BYTES,
    cpu_runtime_bytes: int = CPU_RUNTIME_BYTES,
    batch_shape: tuple[int, int] | None = None,
    bnb_keeps_inputs: bool | None = None,
    cuda_workspace_bytes: int = CUDA_WORKSPACE_BYTES,
    cuda_slack: float = CUDA_SLACK,
) -> MemoryEstimate:
    """Peak memory of one training step of ``trial`` on ``model_config`` (a LlamaConfig).

    Worst case batch: ``batch_size × max_seq_length`` tokens, all labelled; with batch_size > 1 padding
    is assumed possible, so HF builds a 4D bool mask (b·s² bytes) and SDPA then gets repeated K/V
    (transformers 5.24 passes GQA natively via ``enable_gqa`` only when there is no mask).
    ``calibration``: see :func:`fit_calibration`; either one ``{"factor", "offset_bytes"}`` or a
    mapping from :func:`calibration_key` to such dicts.
    ``batch_shape``: (batch, sequence) of the largest padded batch the trial really builds from its data
    (:func:`moopt.study.gate.batch_shape`); default ``batch_size × max_seq_length``.
    ``cuda_workspace_bytes``, ``cuda_slack``: the CUDA terms (cuBLAS workspaces; the caching allocator's
    share of the step's dynamic memory), as keywords so a comparison can switch them off.
    ``bnb_keeps_inputs``: whether bitsandbytes' 4-bit matmul keeps its input for backward. Up to
    0.4x ``MatMul4Bit.forward`` stored ``ctx.tensors = (A, B)`` (every quantised linear keeps its
    input, as in the published peer runs); 0.50 stores ``(None, B)``. Default: True for
    ``kernels="peft"`` (peers), False for moopt's own runs (the bitsandbytes this project installs).
    """
    errors = []
    if device not in DEVICES:
        errors.append(f"device: must be one of {list(DEVICES)}, got {device!r}")
    if kernels not in KERNELS:
        errors.append(f"kernels: must be one of {list(KERNELS)}, got {kernels!r}")
    if loss not in LOSSES:
        errors.append(f"loss: must be one of {list(LOSSES)}, got {loss!r}")
    if errors:
        raise ConfigError("; ".join(errors))
    b, s = batch_shape if batch_shape else (trial.training.batch_size, trial.data.max_seq_length)
    if b < 1 or s < 1:
        raise ConfigError(f"batch_shape: batch and sequence must be >= 1, got {(b, s)}")
    st = StepShape(m=ModelDims.from_config(model_config), trial=trial, device=device, kernels=kernels, loss=loss,
                   b=b, s=s, a_b=_act_bytes(trial, device), cuda_workspace_bytes=cuda_workspace_bytes,
                   cuda_slack=cuda_slack)
    if bnb_keeps_inputs is None:
        bnb_keeps_inputs = st.peft

    notes: list[str] = []
    # The trial picks attention per batch (moopt.train.recipe.BatchAttention): when the longest batch runs
    # SDPA, its batches of up to EAGER_MAX_TOKENS still run eager, whose probabilities can make that
    # shorter step peak above it (when s is little longer); the estimate is the larger of the two.
    short = replace(st, s=EAGER_MAX_TOKENS)
    steps = [st, short] if st.s > EAGER_MAX_TOKENS and short.attention == "eager" else [st]
    peak = -1
    for cand in steps:
        phases = phase_bytes(cand, bnb_keeps_inputs, ce_chunk_size)
        held = {k: sum(v) + lora_bytes(cand, k) for k, v in phases.items()}  # what each phase holds above the weights
        top = max(held, key=held.get)
        if held[top] > peak:
            phase, s, peak = top, cand.s, held[top]  # s: the shape of the peak, what a probe must measure
            activations, logit_bytes, transients = phases[top]
    dynamic = activations + logit_bytes + transients
    if s != st.s:
        notes.append(f"peak at the eager step of {b} x {s} tokens (its batches that short run eager)")
    if device == "cpu" and st.quant != "none":
        notes.append("cpu + bitsandbytes: the checkpoint file stays mapped and resident (it is read whole to quantise)")
    breakdown = {k: 0 for k in BREAKDOWN_KEYS}
    breakdown.update(runtime_bytes(st, cuda_context_bytes, cpu_runtime_bytes))
    breakdown.update(
        weights=int(weight_bytes(st)), checkpoint_pages=int(checkpoint_page_bytes(st, model_config)),
        lora_params_grads_optimizer=int(lora_bytes(st, phase)), activations=int(activations), logits=int(logit_bytes),
        transients=int(transients), allocator_slack=int(allocator_slack_bytes(st, dynamic, ce_chunk_size)),
    )
    total = sum(breakdown.values())
    if device == "cpu" and st.quant == "none":
        # Loading converts a checkpoint stored in another dtype (a fp32 file trained in bf16, a bf16 one in
        # fp32): the memory-mapped file is read whole while the converted weights fill, and then let go.
        # That load-time peak, runtime + converted weights + file, is above the step's for small steps:
        # SmolLM2-135M's fp32 file in bf16 peaked at 1247 MiB resident in every probe up to 4 x 128 tokens
        # (benchmarks/results/memory_cpu_bf16.csv), where the step alone was estimated from 1130 MiB.
        ckpt = checkpoint_bytes(model_config, st.m, loaded_file_dtype(model_config, trial, device))
        load = breakdown["runtime"] + breakdown["weights"] + ckpt
        if ckpt != breakdown["weights"] and load > total:
            breakdown["checkpoint_pages"] = load - total
            total = load
            notes.append("cpu: the load-time conversion of the checkpoint's dtype peaks above the step "
                         "(the file mapped while the converted weights fill); checkpoint_pages is that excess")
    if calibration:
        cal = calibration.get(calibration_key(model_config, trial, device, kernels), None) if "factor" not in calibration else calibration
        if cal:
            calibrated = apply_calibration(total, cal)
            breakdown["calibration"] = calibrated - total
            total = calibrated
            notes.append(f"calibrated: factor {cal['factor']:.3f}, offset {cal.get('offset_bytes', 0) / MIB:.0f} MiB")
    breakdown = {k: v for k, v in breakdown.items()
                 if k not in ("runtime", "cuda_context", "cuda_workspaces", "checkpoint_pages", "calibration") or v}
    return MemoryEstimate(total_bytes=int(total), breakdown=breakdown, phase=phase, notes=tuple(notes),
                          shape=(int(b), int(s)), device=device, kernels=kernels, loss=loss)


# -- calibration -------------------------------------------------------------------------------


def calibration_key(model_config: Any, trial: TrialConfig, device: str, kernels: str) -> str:
    """One factor/offset per (model, quantization, kernels, device, the dtype it trains in)."""
    dtype = resolve_dtype(trial.model.dtype, device)
    key = f"{ModelDims.from_config(model_config).signature()}|{trial.model.quantization}|{kernels}|{device}|{dtype}"
    if device == "cpu" and trial.model.quantization == "none":  # on a CPU the file's dtype sets the load's peak
        key += f"|file {loaded_file_dtype(model_config, trial, device)}"
    return key


def apply_calibration(total_bytes: int, cal: dict) -> int:
    return int(math.ceil(float(cal["factor"]) * total_bytes + float(cal.get("offset_bytes", 0))))


def fit_calibration(pairs: list[tuple[int | MemoryEstimate, int]]) -> dict[str, float]:
    """Fit ``measured ≈ factor · estimate + offset`` from probe runs, robustly (Theil-Sen): factor =
    median of the pairwise slopes, clamped to [0.9, 1.1] so a few small probes cannot extrapolate a
    steep line to big configurations; offset = median residual. One pair (or equal estimates):
    factor = measured / estimate, offset 0. Probed configurations themselves are answered from their
    measurement (moopt.study.gate.MemoryGate), so the fit need not cover them.

    Leave-one-out on benchmarks/bench_memory.py's 32 CPU probes (16 unquantised, 16 4bit/8bit):
    median |error| 2.2%, max 359 MiB.
    Returns ``{"factor", "offset_bytes", "n"}``.
    """
    import itertools
    import statistics

    if not pairs:
        raise ValueError("fit_calibration needs at least one (estimate, measured) pair")
    xs = [float(e.total_bytes if isinstance(e, MemoryEstimate) else e) for e, _ in pairs]
    ys = [float(y) for _, y in pairs]
    if any(x <= 0 for x in xs):
        raise ValueError(f"estimates must be > 0, got {xs}")
    slopes = [(y2 - y1) / (x2 - x1) for (x1, y1), (x2, y2) in itertools.combinations(zip(xs, ys), 2) if x2 != x1]
    if not slopes:
        return {"factor": statistics.median(y / x for x, y in zip(xs, ys)), "offset_bytes": 0.0, "n": len(xs)}
    factor = min(max(statistics.median(slopes), CALIBRATION_FACTOR_RANGE[0]), CALIBRATION_FACTOR_RANGE[1])
    offset = statistics.median(y - factor * x for x, y in zip(xs, ys))
    return {"factor": factor, "offset_bytes": offset, "n": len(xs)}


# -- what fits: the largest batch × sequence, and plans for a model that does not fit one GPU ----------

FIT_BATCHES = (1, 2, 4, 8, 16, 32, 64)
# FSDP / ZeRO-3 prefetch: the layer being computed and the next one are gathered unsharded
# (torch.distributed.fsdp forward/backward_prefetch, one layer ahead by default).
SHARDED_GATHERED_LAYERS = 2


def _with_shape(trial: TrialConfig, b: int, s: int, **model_fields) -> TrialConfig:
    d = trial.to_dict()
    d["training"]["batch_size"] = int(b)
    d["data"]["max_seq_length"] = int(s)
    d["model"].update(model_fields)
    return TrialConfig.from_dict(d)


def longest_fitting_seq(model_config: Any, trial: TrialConfig, budget_bytes: float, batch: int,
                        max_seq: int, **kw) -> int:
    """Largest sequence length s ≤ max_seq with estimate(batch × s) ≤ budget (0 if even s=1 does not fit).
    The estimate grows with s, so a bisection finds it."""
    def fits(s: int) -> bool:
        return estimate_peak(model_config, trial, batch_shape=(batch, s), **kw).total_bytes <= budget_bytes

    if not fits(1):
        return 0
    lo, hi = 1, int(max_seq)
    if fits(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def fit_table(model_config: Any, trial: TrialConfig, budget_bytes: float, max_seq: int | None = None,
              batches: Iterable[int] = FIT_BATCHES, margin: float = 0.0, **kw) -> list[tuple[int, int]]:
    """[(batch, longest sequence whose estimate × (1 + margin) fits the budget)] for each batch size,
    while any sequence fits."""
    max_seq = int(max_seq or getattr(model_config, "max_position_embeddings", 0) or 131072)
    out = []
    for b in batches:
        s = longest_fitting_seq(model_config, trial, budget_bytes / (1 + margin), b, max_seq, **kw)
        if s == 0:
            break
        out.append((b, s))
    return out


def sharded_estimate(model_config: Any, trial: TrialConfig, n_gpus: int, **kw) -> int:
    """Per-GPU peak when the frozen weights and the adapters with their optimizer states are sharded
    over ``n_gpus`` (FSDP FULL_SHARD / DeepSpeed ZeRO-3), each GPU training its own batch of
    ``batch_size × max_seq_length``: weights/n + adapters/n + ``SHARDED_GATHERED_LAYERS`` layers
    gathered whole + everything else as on one GPU. moopt itself trains a trial on one GPU; this says
    what a sharded run elsewhere would need."""
    est = estimate_peak(model_config, trial, **kw)
    m = ModelDims.from_config(model_config)
    weights = est.breakdown.get("weights", 0)
    lora = est.breakdown.get("lora_params_grads_optimizer", 0)
    per_param = {"none": _act_bytes(trial, kw.get("device", "cuda")), "8bit": 1, "4bit": NF4_BYTES_PER_PARAM}
    layer_weights = per_param[trial.model.quantization] * m.linear_params / m.layers
    gathered = SHARDED_GATHERED_LAYERS * layer_weights if n_gpus > 1 else 0
    return int(est.total_bytes - (weights + lora) * (1 - 1 / n_gpus) + gathered)


def under_prior(device: str, quant: str, estimate_bytes: int | None = None) -> float:
    """The uncalibrated estimate's worst measured under-estimate for (device, quantization); on cpu,
    with ``estimate_bytes``, plus the runtime term's spread between machines relative to that estimate
    (CPU_RUNTIME_SPREAD_BYTES)."""
    prior = ESTIMATE_UNDER_PRIOR.get((device, quant), max(ESTIMATE_UNDER_PRIOR.values()))
    if device == "cpu" and estimate_bytes:
        prior += CPU_RUNTIME_SPREAD_BYTES / estimate_bytes
    return prior


def over_prior(device: str, quant: str, estimate_bytes: int | None = None) -> float:
    """The uncalibrated estimate's worst measured over-estimate for (device, quantization) (ESTIMATE_OVER_PRIOR);
    on cpu, with ``estimate_bytes``, plus the runtime's spread between machines relative to it; at most
    MAX_OVER_PRIOR."""
    prior = ESTIMATE_OVER_PRIOR.get((device, quant), max(ESTIMATE_OVER_PRIOR.values()))
    if device == "cpu" and estimate_bytes:
        prior += CPU_RUNTIME_SPREAD_BYTES / estimate_bytes
    return min(prior, MAX_OVER_PRIOR)


def lighter_settings(model: Any) -> list[dict[str, Any]]:
    """The changes of the model settings ``model`` (a ModelConfig) that may lower a configuration's memory, each
    the fields it changes: another quantization, gradient checkpointing, and QLoRA's recipe (4-bit with
    checkpointing) where both are changes. Whether one does lower it is the estimate's to say (on a CPU,
    quantising raises it)."""
    out: list[dict[str, Any]] = [{"quantization": q} for q in ("none", "8bit", "4bit") if q != model.quantization]
    if not model.gradient_checkpointing:
        out.append({"gradient_checkpointing": True})
        if model.quantization != "4bit":
            out.append({"quantization": "4bit", "gradient_checkpointing": True})
    return out


def setting_label(change: dict[str, Any], on: str = "") -> str:
    """How the console names a change of lighter_settings, e.g. "quantization 4bit and gradient checkpointing on"."""
    quant = f"quantization {change['quantization']}" if "quantization" in change else ""
    if "gradient_checkpointing" not in change:
        return quant + on
    return f"{quant} and gradient checkpointing {on.strip() or 'on'}" if quant else "gradient checkpointing on"


def fit_alternatives(model_config: Any, trial: TrialConfig, budget_bytes: float, **kw) -> list[tuple[str, float, list]]:
    """Where nothing fits as configured: each of lighter_settings that lowers the estimate, as [(its label, its
    error band, its fit_table)], the one that fits the most tokens a step first (a table is empty where none
    fits)."""
    base = estimate_peak(model_config, trial, **kw).total_bytes
    found = []
    for change in lighter_settings(trial.model):
        other = _with_shape(trial, trial.training.batch_size, trial.data.max_seq_length, **change)
        if estimate_peak(model_config, other, **kw).total_bytes >= base:
            continue  # no way down (on a CPU, quantising; from 4-bit, 8-bit)
        margin = under_prior(kw.get("device", "cuda"), other.model.quantization)
        found.append((setting_label(change), margin, fit_table(model_config, other, budget_bytes, margin=margin, **kw)))
    most = lambda t: max((b * s for b, s in t), default=0)  # noqa: E731
    found.sort(key=lambda f: -most(f[2]))  # (stable)
    return found


def fit_plan(model_config: Any, trial: TrialConfig, budget_bytes: float, max_gpus: int = 64, **kw) -> list[str]:
    """Lines saying whether ``trial`` fits one GPU of ``budget_bytes`` (on a CPU: a peak-RSS budget) and, when
    it does not, what would: a quantised model, checkpointing, or (on CUDA) the fewest GPUs a sharded run needs. "fits" means the estimate
    plus its error band (:func:`under_prior`) is within the budget; "fits only if ..." when only the
    bare estimate is."""
    device = kw.get("device", "cuda")

    def g(b: float) -> str:  # GiB, to two decimals under 10 GiB (a CPU's 0.55 and 0.6 read apart)
        return f"{b / GIB:.2f}" if b < 10 * GIB else f"{b / GIB:.1f}"

    def verdict(t: TrialConfig, total: int) -> str:
        u = under_prior(device, t.model.quantization, total)
        if total * (1 + u) <= budget_bytes:
            return "fits"
        if total <= budget_bytes:
            return f"fits only if the estimate is not low: +{u:.0%} error band -> {g(total * (1 + u))} GiB"
        o = over_prior(device, t.model.quantization, total)
        if total * (1 - o) <= budget_bytes:  # as the study's gate: measured (probed) before it is ruled out
            return (f"does not fit unless the estimate is high (-{o:.0%}, the worst over-estimate measured -> "
                    f"{g(total * (1 - o))} GiB): a study probes it before ruling it out")
        return "does not fit"

    est = estimate_peak(model_config, trial, **kw)
    v = verdict(trial, est.total_bytes)
    gpu = device == "cuda"
    where = f"one GPU of {budget_bytes / GIB:g} GiB" if gpu else f"a budget of {budget_bytes / GIB:g} GiB (peak RSS on the CPU)"
    on = " on one GPU" if gpu else ""
    if v == "fits":
        return [f"fits {where}: {g(est.total_bytes)} GiB estimated"]
    lines = [(f"{where}: {g(est.total_bytes)} GiB estimated, {v} "
              f"(weights alone {g(est.breakdown.get('weights', 0))} GiB); alternatives:")]
    def variant(**model_fields) -> TrialConfig:  # this configuration with other model settings
        return _with_shape(trial, trial.training.batch_size, trial.data.max_seq_length, **model_fields)

    def alternative(label: str, **model_fields) -> bool:
        """One more line for a setting that lowers the estimate (on a CPU quantising raises it: not offered)."""
        t = variant(**model_fields)
        alt = estimate_peak(model_config, t, **kw)
        if alt.total_bytes >= est.total_bytes:
            return False
        lines.append(f"  {label}: {g(alt.total_bytes)} GiB ({verdict(t, alt.total_bytes)})")
        return lines[-1].endswith("(fits)")

    fits = []
    for change in lighter_settings(trial.model):
        if len(change) == 1 or not any(fits):  # QLoRA's recipe (both at once) where neither alone fits
            fits.append(alternative(setting_label(change, on if "quantization" in change else ""), **change))
    lines.append("  or a shorter max_seq_length / smaller batch: the table above gives the largest that fit")
    if not gpu:  # sharding spreads one run over GPUs; a CPU budget is one process's
        return lines
    u = under_prior(device, trial.model.quantization, est.total_bytes)

    def fewest(t: TrialConfig) -> int | None:
        return next((n for n in range(2, max_gpus + 1)
                     if sharded_estimate(model_config, t, n, **kw) * (1 + u) <= budget_bytes), None)

    n = fewest(trial)
    if n is not None:
        per = sharded_estimate(model_config, trial, n, **kw)
        lines.append(f"  sharded (FSDP / ZeRO-3, not moopt's one-GPU trials) over {n} GPUs: {g(per)} GiB per GPU")
        return lines
    if trial.model.gradient_checkpointing:
        lines.append(f"  sharded (FSDP / ZeRO-3) over up to {max_gpus} GPUs: does not fit (activations alone exceed it)")
        return lines
    t = variant(gradient_checkpointing=True)
    n = fewest(t)
    if n is None:
        lines.append(f"  sharded (FSDP / ZeRO-3) over up to {max_gpus} GPUs, even with gradient checkpointing: does not "
                     f"fit (activations alone exceed it)")
    else:
        per = sharded_estimate(model_config, t, n, **kw)
        lines.append(f"  sharded (FSDP / ZeRO-3, not moopt's one-GPU trials) over {n} GPUs, with gradient checkpointing "
                     f"(without it, activations alone exceed a GPU): {g(per)} GiB per GPU")
    return lines
