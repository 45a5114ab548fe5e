"""moopt: multi-objective, memory-aware hyperparameter search for LoRA fine-tuning of Llama models.

The public API is small; heavy modules (torch, transformers, pymoo) load on first use, so
``import moopt`` and ``moopt --help`` stay instant.
"""

from __future__ import annotations

__version__ = "0.1.0"

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
