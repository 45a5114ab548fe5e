"""Typed configuration, parsed once at the edge.

A trial is described by a frozen :class:`TrialConfig` with four sections that mirror
``best_config.yaml`` and the search-space YAML: ``training``, ``lora``, ``data`` and ``model``.
Everything inside moopt takes these objects, never raw dicts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moopt.errors import ConfigError

# Module-name groups accepted for lora.target_modules, besides explicit lists.
TARGET_ALIASES: dict[str, tuple[str, ...]] = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qv": ("q_proj", "v_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
LLAMA_LINEARS = TARGET_ALIASES["all-linear"]
# Sibling projections that HF's LlamaAttention / LlamaMLP call with the identical hidden-state tensor.
SHARED_INPUT_SETS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
SCHEDULERS = ("linear", "cosine", "constant")
SAMPLING_STRATEGIES = ("random", "sequential", "length_grouped")
QUANTIZATIONS = ("none", "8bit", "4bit")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def target_alias(modules: Any) -> str | None:
    """The alias (``attention``, ``qv``, ...) a list of target modules is, in canonical order; None for none."""
    return next((k for k, mods in TARGET_ALIASES.items() if tuple(modules) == mods), None)


def normalize_targets(value: Any) -> tuple[str, ...]:
    """``"attention"`` / ``"q_proj,v_proj"`` / ``["q_proj", "v_proj"]`` -> sorted canonical tuple."""
    if isinstance(value, str):
        value = TARGET_ALIASES.get(value.replace("_", "-"), None) or [v.strip() for v in value.split(",")]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"lora.target_modules: expected a non-empty list of module names, got {value!r}")
    names = tuple(str(v) for v in value)
    unknown = [n for n in names if n not in LLAMA_LINEARS]
    if unknown:
        raise ConfigError(
            f"lora.target_modules: unknown module(s) {unknown}; choose from {list(LLAMA_LINEARS)} "
            f"or one of {list(TARGET_ALIASES)}"
        )
    return tuple(n for n in LLAMA_LINEARS if n in names)  # canonical order, no duplicates


LR_DIVERGES, LR_STILL = 0.1, 1e-7  # learning rates outside which a LoRA trial diverges or barely trains (noted)


def lr_note(lrs: list[float], verb: str = "reaches") -> str | None:
    """The note for learning rates outside [LR_STILL, LR_DIVERGES] (a typo: 1e4 for 1e-4 trains to a uniform guess
    with exit 0), else None."""
    if max(lrs) <= LR_DIVERGES and min(lrs) >= LR_STILL:
        return None
    return (f"training.learning_rate {verb + ' ' if verb else ''}{max(lrs) if max(lrs) > LR_DIVERGES else min(lrs):g}: LoRA trains at about "
            "1e-5 to 1e-2; above ~0.1 training diverges (the loss goes to ln(vocabulary size), a uniform guess, or NaN) "
            "and below 1e-7 it barely moves")


WHOLE = ("training.num_train_epochs", "lora.alpha")  # written as integers where whole: 2, not 2.0, as the user did


def whole(name: str, v: Any) -> Any:
    """``v`` as an int where ``name`` is one of WHOLE and ``v`` a whole float; else ``v``."""
    return int(v) if name in WHOLE and isinstance(v, float) and v.is_integer() else v


def shown_value(v: Any) -> str:
    """A configuration value as a difference names it: ``0.0002``, ``q_proj,v_proj``, ``cosine``."""
    return f"{v:g}" if isinstance(v, float) else ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


@dataclass(frozen=True)
class TrainingConfig:
    learning_rate: float = 2e-4  # peak LR after warmup
    batch_size: int = 8  # sequences per micro-batch
    num_train_epochs: float = 1.0  # passes over the training set (fractions allowed)
    warmup_ratio: float = 0.03  # fraction of optimizer steps spent warming up linearly
    weight_decay: float = 0.0  # AdamW decoupled weight decay (LoRA matrices only)
    lr_scheduler_type: str = "cosine"  # linear | cosine | constant (after warmup)
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0  # global gradient clipping; 0 disables
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16  # adapter rank
    alpha: float = 32.0  # scaling = alpha / r
    dropout: float = 0.05  # dropout on the adapter input
    target_modules: tuple[str, ...] = TARGET_ALIASES["attention"]


@dataclass(frozen=True)
class DataConfig:
    max_seq_length: int = 512  # tokens; longer examples are truncated (and counted)
    sampling_strategy: str = "random"  # random | sequential | length_grouped
    # each micro-batch's examples packed into as few rows as fit, none wider than its longest example (first-fit
    # decreasing), positions restarting and attention kept inside each example: the same examples and the
    # same loss per step as padded rows (up to numerics: exactly in fp32 without dropout), without the padding's
    # compute (evaluation is never packed)
    packing: bool = True


@dataclass(frozen=True)
class ModelConfig:
    quantization: str = "none"  # none | 8bit | 4bit (bitsandbytes: NF4 + double quant / LLM.int8)
    gradient_checkpointing: bool = False
    dtype: str = "auto"  # auto: bfloat16 on CUDA and on CPUs with native bf16, else float32 (resolve_dtype)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX tiles: oneDNN's bf16 GEMMs then run
    ~4x its fp32 ones; without them bf16 is emulated and slower than fp32)."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_dtype(dtype: str, device: str) -> str:
    """The dtype a trial with ``model.dtype`` really trains in on ``device`` ("cuda..." or "cpu").

    ``auto``: bfloat16 on CUDA; on a CPU, bfloat16 where it has native bf16 (cpu_has_native_bf16), else
    float32. The environment variable ``MOOPT_CPU_DTYPE`` (float32 or bfloat16) fixes the CPU's choice
    (the tests pin float32, so their numerics do not depend on the machine). LoRA weights and optimizer
    states stay fp32 masters in either dtype, and the loss is computed from fp32 logits.
    """
    if dtype != "auto":
        return dtype
    if str(device).startswith("cuda"):
        return "bfloat16"
    return cpu_dtype_override() or ("bfloat16" if cpu_has_native_bf16() else "float32")


# Attention on a CPU. PyTorch's SDPA runs bf16 attention there through its flash kernel, which on short
# rows is slower than transformers' eager path (two matmuls and a softmax); in fp32 it is not. Measured
# with benchmarks/bench_attention.py (SmolLM2-135M, moopt's train step, 2 threads, Intel Xeon with
# amx_bf16, 2026-12-03; results/attention_cpu.csv), eager / SDPA speed: bf16 1.14-1.36x up to 128 tokens
# a row, 0.88x at 256, 0.61x at 512; fp32 0.97-0.99x up to 128, 0.81-0.87x beyond. Eager keeps each
# layer's batch x heads x row^2 softmax (fp32, and its bf16 copy) for backward, which moopt.memory.estimate counts.
EAGER_MAX_TOKENS = 128


def attention_implementation(device: str, dtype: str, row_tokens: int) -> str:
    """transformers' ``attn_implementation`` for a trial that trains in ``dtype`` on ``device`` with rows
    of at most ``row_tokens`` tokens: "eager" for bf16 on a CPU with rows up to EAGER_MAX_TOKENS, else "sdpa"."""
    if str(device) == "cpu" and dtype == "bfloat16" and row_tokens <= EAGER_MAX_TOKENS:
        return "eager"
    return "sdpa"


def cpu_dtype_override() -> str | None:
    """``MOOPT_CPU_DTYPE`` when it fixes the CPU's dtype (float32 or bfloat16); None when unset or auto.
    The commands call it before anything is written, so a wrong value is one line and exit code 2."""
    env = os.environ.get("MOOPT_CPU_DTYPE", "auto")
    if env not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f"MOOPT_CPU_DTYPE: must be one of ['auto', 'float32', 'bfloat16'], got {env!r}")
    return None if env == "auto" else env


SECTIONS: dict[str, type] = {
    "training": TrainingConfig,
    "lora": LoraConfig,
    "data": DataConfig,
    "model": ModelConfig,
}


@dataclass(frozen=True)
class TrialConfig:
    training: TrainingConfig = field(default_factory=TrainingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    # -- flat views used by the engine and the results table --------------------------------
    def flat(self) -> dict[str, Any]:
        """``{"training.learning_rate": 2e-4, ...}``; target_modules as a comma-joined string."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            for f in dataclasses.fields(getattr(self, name)):
                v = getattr(getattr(self, name), f.name)
                out[f"{name}.{f.name}"] = ",".join(v) if isinstance(v, tuple) else v
        return out

    def to_dict(self) -> dict[str, dict[str, Any]]:
        d = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        d["lora"]["target_modules"] = list(self.lora.target_modules)
        return d

    def to_yaml(self) -> dict[str, dict[str, Any]]:
        """:meth:`to_dict` as a person reads it in a config.yaml: whole epochs and alpha as integers (2, not 2.0)."""
        return as_written(self.to_dict())

    @classmethod
    def from_flat(cls, values: dict[str, Any], base: "TrialConfig | None" = None) -> "TrialConfig":
        base = base or cls()
        per: dict[str, dict[str, Any]] = {n: {} for n in SECTIONS}
        for key, v in values.items():
            section, name = key.split(".", 1)
            per[section][name] = v
        return cls.from_dict(per, base=base, source="<search>")

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], base: "TrialConfig | None" = None, source: str = "<config>"
    ) -> "TrialConfig":
        """Build from ``{"training": {...}, "lora": {...}, ...}``; unknown keys are errors."""
        base = base or cls()
        errors: list[str] = []
        sections = {}
        for name, klass in SECTIONS.items():
            given = data.get(name) or {}
            if not isinstance(given, dict):
                errors.append(f"{source}: {name}: expected a mapping, got {type(given).__name__}")
                given = {}
            known = {f.name: f for f in dataclasses.fields(klass)}
            kwargs = {}
            for key, value in given.items():
                if key not in known:
                    errors.append(f"{source}: {name}.{key}: unknown key; known keys: {sorted(known)}")
                    continue
                try:
                    kwargs[key] = coerce(name, key, value, known[key].type)
                except ConfigError as e:
                    errors.append(f"{source}: {e}")
            sections[name] = dataclasses.replace(getattr(base, name), **kwargs)
        for key in data:
            if key not in SECTIONS:
                errors.append(f"{source}: {key}: unknown section; known sections: {list(SECTIONS)}")
        if errors:
            raise ConfigError("\n".join(errors))  # one line each (cli.fail)
        cfg = cls(**sections)
        check_trial(cfg, source)
        return cfg


def as_written(cfg: dict[str, Any]) -> dict[str, Any]:
    """A configuration dict with whole epochs and alpha as integers (2, not 2.0), as every config.yaml and
    best_config.yaml writes them (the journal keeps the floats it was given)."""
    import copy

    cfg = copy.deepcopy(cfg)
    for key in WHOLE:
        section, name = key.split(".")
        if name in cfg.get(section, {}):
            cfg[section][name] = whole(key, cfg[section][name])
    return cfg


def coerce(section: str, key: str, value: Any, typ: Any) -> Any:
    """Coerce one YAML value to the field's type (``"1e-6"`` -> 1e-6, as PyYAML leaves it a str)."""
    typ = str(typ)
    where = f"{section}.{key}"
    if key == "target_modules":
        return normalize_targets(value)
    if typ == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "yes", "1"):
            return True
        if str(value).lower() in ("false", "no", "0"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if typ in ("int", "float"):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            num = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(num):  # .inf, .nan, 1e400
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        if typ == "int":
            if num != int(num):
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
            return int(num)
        return num
    return str(value)


def check_trial(cfg: TrialConfig, source: str = "<config>") -> None:
    """Range checks that hold for every trial, reported together."""
    t, lo, d, m = cfg.training, cfg.lora, cfg.data, cfg.model
    rules = [
        (t.learning_rate > 0, "training.learning_rate", "must be > 0", t.learning_rate),
        (t.batch_size >= 1, "training.batch_size", "must be >= 1", t.batch_size),
        (t.num_train_epochs > 0, "training.num_train_epochs", "must be > 0", t.num_train_epochs),
        (0 <= t.warmup_ratio < 1, "training.warmup_ratio", "must be in [0, 1)", t.warmup_ratio),
        (t.weight_decay >= 0, "training.weight_decay", "must be >= 0", t.weight_decay),
        (t.lr_scheduler_type in SCHEDULERS, "training.lr_scheduler_type", f"must be one of {list(SCHEDULERS)}", t.lr_scheduler_type),
        (t.gradient_accumulation_steps >= 1, "training.gradient_accumulation_steps", "must be >= 1", t.gradient_accumulation_steps),
        (t.max_grad_norm >= 0, "training.max_grad_norm", "must be >= 0", t.max_grad_norm),
        (0 <= t.adam_beta1 < 1, "training.adam_beta1", "must be in [0, 1)", t.adam_beta1),  # torch.optim.AdamW's rules
        (0 <= t.adam_beta2 < 1, "training.adam_beta2", "must be in [0, 1)", t.adam_beta2),
        (t.adam_epsilon >= 0, "training.adam_epsilon", "must be >= 0", t.adam_epsilon),
        (lo.r >= 1, "lora.r", "must be >= 1", lo.r),
        (lo.alpha > 0, "lora.alpha", "must be > 0", lo.alpha),
        (0 <= lo.dropout < 1, "lora.dropout", "must be in [0, 1)", lo.dropout),
        (d.max_seq_length >= 8, "data.max_seq_length", "must be >= 8", d.max_seq_length),
        (d.sampling_strategy in SAMPLING_STRATEGIES, "data.sampling_strategy", f"must be one of {list(SAMPLING_STRATEGIES)}", d.sampling_strategy),
        (m.quantization in QUANTIZATIONS, "model.quantization", f"must be one of {list(QUANTIZATIONS)}", m.quantization),
        (m.dtype in DTYPES, "model.dtype", f"must be one of {list(DTYPES)}", m.dtype),
    ]
    errors = [f"{source}: {key}: {rule}, got {value!r}" for ok, key, rule, value in rules if not ok]
    if errors:
        raise ConfigError("\n".join(errors))  # one line each (cli.fail)


def absent_keys(path: str | Path) -> list[tuple[str, str]]:
    """(``section.key``, moopt's default as shown) for each setting a configuration file does not give: for a study's
    file (which gives every one), a line lost in an edit, trained at the default without a word."""
    from moopt.yamlio import read_yaml_mapping

    data = read_yaml_mapping(path)
    return [(k, str(v).lower() if isinstance(v, bool) else shown_value(v)) for k, v in TrialConfig().flat().items()
            if k.split(".", 1)[1] not in (data.get(k.split(".", 1)[0]) or {})]


def load_trial_config(path: str | Path) -> TrialConfig:
    """Read a ``best_config.yaml``-style file (sections training/lora/data[/model])."""
    from moopt.yamlio import read_yaml_mapping

    data = read_yaml_mapping(path)
    if not data:  # a failed copy or the wrong file: not "every default"
        raise ConfigError(f"{path}: empty (no training, lora or data section); --config takes one configuration, such "
                          "as a study's best_config.yaml")
    ranges = [f"{section}.{key}" for section, fields in data.items() if isinstance(fields, dict)
              for key, v in fields.items() if isinstance(v, dict) and "type" in v]
    if ranges:  # a search space given where one configuration is expected
        raise ConfigError(f"{path}: {', '.join(ranges[:3])}{' ...' if len(ranges) > 3 else ''} "
                          f"{'is a search range' if len(ranges) == 1 else 'are search ranges'} ({{type: ...}}): this is a "
                          "search space; --config takes one configuration, such as a study's best_config.yaml or a "
                          "trial's trial_results/trial_N/config.yaml")
    model_keys = [k for k in ("model_type", "architectures", "hidden_size", "num_hidden_layers") if k in data]
    if model_keys and not any(k in SECTIONS for k in data):  # a model's config.json
        raise ConfigError(f"{path}: {', '.join(model_keys)}: this is a model's config.json; give its folder as "
                          "--base_model. --config takes one configuration, such as a study's best_config.yaml")
    return TrialConfig.from_dict(data, source=str(path))
