"""The records that cross boundaries: what a trial is asked to do, and how it ended.

``TrialResult`` is the one trial-end record: the worker returns it (and writes it to the trial's
metrics.json), the study completes it (times, configuration) and journals it as the ``trial_end``
event, and ``moopt.journal.replay`` reads it back.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

from moopt.config import TrialConfig

# what a trial stopped by --time_budget_hours records as its error ("time budget reached at step k"): it is
# PRUNED, but evaluated on the whole validation set, as a COMPLETE trial is (moopt/report/results.py reads it)
TIME_BUDGET_CUT = "time budget reached"
NOT_TRAINED = "not trained: "  # the error of a configuration the memory gate ruled out before it ran


class TrialState(StrEnum):
    """How a trial ended. A ``str``: journals, CSV and f-strings carry the bare value ("COMPLETE")."""

    COMPLETE = "COMPLETE"  # trained to its end and evaluated
    PRUNED = "PRUNED"  # stopped early: by a rung decision (``pruned_at_step``) or the time budget
    FAIL = "FAIL"  # crashed, killed or stalled: no usable metrics
    INFEASIBLE = "INFEASIBLE"  # over the memory constraint (measured, predicted) or out of memory


# in a TrialResult's backend_reason: --kernels auto moved the trial from Triton to torch (moopt.train.recipe)
FALLBACK = "--kernels auto: triton failed"


@dataclass
class TrialSpec:
    number: int
    config: TrialConfig
    base_model: str  # a local folder (already resolved by moopt.train.models.resolve_model)
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
    # the validation set is cut to this many tokens, whatever the trial's own max_seq_length (0: that one), so
    # that trials searching max_seq_length are scored on the same tokens (the study: the space's longest)
    eval_max_seq_length: int = 0
    hub_id: str | None = None  # the hub repository base_model was downloaded from, and its commit: the adapters
    hub_revision: str | None = None  # name them (base_model_name_or_path, revision), as PEFT's do

    @property
    def model_name(self) -> str:
        """What the adapters' base_model_name_or_path and the console name: the hub id, else the local folder."""
        return self.hub_id or self.base_model

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


_PRUNED_AT = re.compile(r"pruned at step (\d+)")


@dataclass
class TrialResult:
    number: int
    state: TrialState
    metrics: dict[str, float] = field(default_factory=dict)  # eval_loss, eval_accuracy, peak_memory_gb (GiB), ...
    error: str | None = None  # human-readable: why it failed or stopped ("pruned at step 5 ...")
    steps: int = 0  # optimizer steps done
    total_steps: int = 0  # optimizer steps planned
    train_tokens: int = 0  # real (non-pad) tokens seen in training
    eval_tokens: int = 0  # tokens run forward in evaluations (rungs and final; test set excluded)
    train_seconds: float = 0.0  # in optimizer steps (evaluations, rung ones included, are eval_seconds)
    tokens_per_s: float | None = None  # train_tokens / train_seconds (evaluations excluded)
    backend: str | None = None  # which LoRA kernel path ran (at the end, after any fallback)
    backend_reason: str | None = None  # why that path: the --kernels choice, or the Triton failure (FALLBACK)
    dtype: str | None = None  # what the base model ran in (model.dtype, "auto" resolved on the device)
    attention: str | None = None  # what the trial ran: eager, sdpa, or "eager N%+sdpa" (moopt.train.recipe.BatchAttention)
    pruned_at_step: int | None = None  # a rung decision stopped it after this optimizer step
    prune_reason: str | None = None  # the pruner's reason for that decision (set by the study)
    oom: bool = False  # it ran out of memory (CUDA OOM, or the worker SIGKILLed, as the OOM killer does)
    setup_seconds: float = 0.0  # from the trial's start in its worker to its first step: model, LoRA, data
    eval_seconds: float = 0.0  # rung, validation and test evaluations
    warm: bool = False  # the base model came loaded from the worker's previous trial (moopt.train.warm)
    # -- set by the study when it journals the end -------------------------------------------------
    datetime_start: str | None = None  # ISO local time, milliseconds
    datetime_complete: str | None = None
    duration_s: float | None = None  # wall seconds from start to end, as the study saw them
    config: dict[str, Any] | None = None  # the trial's TrialConfig as a dict
    epochs: float | None = None  # training.num_train_epochs of that configuration
    taken_from: str | None = None  # "runs/hpo trial 4": an earlier study's result of the same configuration, not
    # trained again (--warm_start; moopt.study.outdir.reusable_trials)
    shared_gpu: bool = False  # other trials of the study used its GPU while it ran (with Ray: it had a share of one)
    peak_from: str | None = None  # where an untrained trial's peak_memory_gb came from: "measured" (a probe,
    # or an earlier run of it) or "estimate"; None: the trial's own training measured it
    budget_gb: float | None = None  # the --memory_constraint the gate ruled an untrained trial out under (a --resume
    # that raises it decides the configuration again)

    def __post_init__(self) -> None:
        self.state = TrialState(self.state)

    @property
    def pruned_by_rung(self) -> bool:
        return self.state == TrialState.PRUNED and self.pruned_at_step is not None

    # -- the journal's trial_end event ---------------------------------------------------------------
    def to_event(self) -> dict[str, Any]:
        return {"type": "trial_end", **asdict(self)}

    @classmethod
    def from_event(cls, ev: dict[str, Any]) -> "TrialResult":
        """A ``trial_end`` event (or a worker's result dict). Journals written before ``pruned_at_step``
        existed said it only in the error text, "pruned at step N ...": it is read from there once."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in ev.items() if k in known}
        if "pruned_at_step" not in ev and d.get("state") == TrialState.PRUNED:
            m = _PRUNED_AT.match(str(d.get("error") or ""))
            d["pruned_at_step"] = int(m.group(1)) if m else None
        return cls(**d)

    # read access by key, for scripts that read journal ends as the dicts they once were
    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.__dataclass_fields__ else default
