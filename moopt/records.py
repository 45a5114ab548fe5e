"""The records that cross boundaries: what a trial is asked to do, and how it ended."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from moopt.config import TrialConfig

STATES = ("COMPLETE", "PRUNED", "FAIL", "INFEASIBLE")


@dataclass
class TrialSpec:
    number: int
    config: TrialConfig
    base_model: str  # a local folder (already resolved by moopt.models.resolve_model)
    train_file: str
    validation_file: str
    output_dir: str  # this trial's folder: trial_results/trial_N
    seed: int = 42
    kernels: str = "auto"  # auto | triton | torch
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    rung_fractions: tuple[float, ...] = ()  # fractions of the optimizer steps where pruning may stop us
    deadline: float | None = None  # unix time; past it the trial stops and reports what it has
    save_adapter: bool = True
    baseline: bool = False  # evaluate the base model only (no LoRA, no training)
    test_file: str | None = None  # held-out set evaluated after training (moopt train), as test_* metrics

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = self.config.to_dict()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrialSpec":
        d = dict(d)
        d["config"] = TrialConfig.from_dict(d["config"])
        d["rung_fractions"] = tuple(d.get("rung_fractions") or ())
        return cls(**d)


@dataclass
class TrialResult:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | INFEASIBLE
    metrics: dict[str, float] = field(default_factory=dict)  # eval_loss, eval_accuracy, ...
    error: str | None = None
    steps: int = 0  # optimizer steps done
    total_steps: int = 0  # optimizer steps planned
    train_tokens: int = 0  # real (non-pad) tokens seen in training
    eval_tokens: int = 0  # tokens run forward in evaluations (rungs and final; test set excluded)
    train_seconds: float = 0.0
    backend: str | None = None  # which LoRA kernel path ran (at the end, after any fallback)
    backend_reason: str | None = None  # why that path: the --kernels choice, or the Triton failure
