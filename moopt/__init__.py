"""moopt: multi-objective, memory-aware hyperparameter search for LoRA fine-tuning of Llama models.

The public API is small; heavy modules (torch, transformers, pymoo) load on first use, so
``import moopt`` and ``moopt --help`` stay instant.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "TrialConfig": "moopt.config",
    "ConfigError": "moopt.config",
    "load_trial_config": "moopt.config",
    "load_space": "moopt.space",
    "parse_objectives": "moopt.objectives",
    "Study": "moopt.study",
    "StudyConfig": "moopt.study",
    "TrialSpec": "moopt.trial",
    "run_trial": "moopt.trial",
    "estimate_peak": "moopt.memory",
    "load_study": "moopt.results",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'moopt' has no attribute {name!r}")
