"""moopt: multi-objective, memory-aware hyperparameter search for LoRA fine-tuning of Llama models.

The public API is small; heavy modules (torch, transformers, pymoo) load on first use, so
``import moopt`` and ``moopt --help`` stay instant.
"""

from __future__ import annotations

__version__ = "0.1.0"


def _quiet_bitsandbytes_hub_kernel() -> None:
    """bitsandbytes' CPU backend (on CPUs with avx512_bf16) logs a warning when it is imported (quantised
    loading, the benchmarks' ``import peft``): "Failed to load CPU gemm_4bit_forward from
    kernels-community ... pip install kernels". That optional kernel would be downloaded from the Hub at
    run time, which moopt never does; bitsandbytes falls back to its own kernels. The warning was the
    first line of every study's console, so that one message is dropped; the logger's others pass."""
    import logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community"))


_quiet_bitsandbytes_hub_kernel()

_EXPORTS = {
    "TrialConfig": "moopt.config",
    "ConfigError": "moopt.errors",
    "load_trial_config": "moopt.config",
    "load_space": "moopt.search.space",
    "parse_objectives": "moopt.search.objectives",
    "Study": "moopt.study.scheduler",
    "StudyConfig": "moopt.study.scheduler",
    "TrialSpec": "moopt.records",
    "run_trial": "moopt.train.recipe",
    "estimate_peak": "moopt.memory.estimate",
    "load_study": "moopt.report.table",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'moopt' has no attribute {name!r}")
