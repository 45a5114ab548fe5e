"""A study: NSGA-II proposes, the executor trains, the journal remembers, the report explains.

Order of events for each trial (what makes ``--resume`` after ``kill -9`` exact; ``Scheduler.start``
and ``Scheduler.finish``):
1. the individual's trial number is checkpointed with the engine (engine.pkl, moopt.study.checkpoint);
2. ``trial_start`` is journaled, then the executor starts the worker;
3. on return, ``trial_end`` (a :class:`~moopt.records.TrialResult`) is journaled (fsynced), then the
   result is told to the engine and the checkpoint saved.
A replay therefore knows every finished trial; trials started but not ended are re-queued under
the same number; the checkpoint says which individual each number belongs to.

With several slots, a slot that frees up while the rest of its generation still runs does not wait
for it: the engine adds individuals to the pending generation (``Engine.extend``, chosen with every
result told so far) and they are told with it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
from rich.markup import escape

from moopt.config import TrialConfig, lr_note, whole
from moopt.console import numbered, plural
from moopt.errors import FULL_DISK_ERRNOS, FULL_DISK_TEXTS
from moopt.journal import BASELINE, JOURNAL, RESUME_SETTINGS, Journal, StudyRecord, read_baseline, replay
from moopt.model_files import model_digest
from moopt.records import FALLBACK, NOT_TRAINED, TIME_BUDGET_CUT, TrialResult, TrialSpec, TrialState
from moopt.search.engine import FAILED_F, Engine
from moopt.search.objectives import Objectives
from moopt.search.pruner import RungPruner, rung_fractions
from moopt.search.space import SearchSpace
from moopt.study.checkpoint import ENGINE_FILE, Checkpoint
from moopt.study.lock import StudyLock
from moopt.study.outdir import (  # noqa: F401  (re-exported: the CLI and tests import them from here)
    OUR_FILES,
    REPLACED,
    RESULT_FILES,
    check_output_dir,
    config_key,
    data_digest,
    discard_study,
    drop_replaced,
    kernel_path,
    prepare_output_dir,
    restore_study,
    reusable_trials,
    space_to_yaml,
    study_fingerprint,
    training_code,
    training_code_changes,
    warm_start_configs,
)
from moopt.study.progress import fmt_duration
from moopt.study.writer import BackgroundWriter


@dataclass(frozen=True)
class StudyConfig:
    base_model: str  # as given on the command line (alias, folder, .gguf, hub id)
    model_path: str  # resolved local folder
    train_file: str
    validation_file: str
    output_dir: str
    num_trials: int
    objectives: Objectives
    space: SearchSpace
    seed: int = 42
    parallel_trials: int = 1
    pruning_factor: float | None = None  # eta of successive halving; None disables pruning
    time_budget_hours: float | None = None
    memory_constraint_gb: float | None = None  # GiB
    kernels: str = "auto"
    resume: bool = False
    overwrite: bool = False
    baseline: bool = True  # evaluate the base model first, for comparison
    warm_start: str | None = None  # an earlier study's output_dir whose best trials seed generation 1
    executor: str = "local"  # local | ray
    ray_address: str | None = None  # with executor=ray: auto | host:port | None (start a local instance)
    stall_timeout_s: float | None = None  # --stall_timeout, seconds: None = auto (moopt.study.watchdog), 0 = never kill
    model_revision: str | None = None  # the hub commit a hub id resolved to (journaled; --resume loads that commit)
    warm_workers: bool = True  # a worker keeps its base model for the next trial (moopt.study.executor.LocalExecutor)
    keep_adapters: str = "all"  # all | pareto | best: which finished trials keep their adapter (moopt.study.adapters)
    options: dict | None = None  # the command's options, journaled: --resume fills in those not given (cli.resume_defaults)


FEW_STEPS = 10  # optimizer steps under which a trial is noted at the start to train too little (few_steps_note)


class Stopped(Exception):
    """The study was stopped (SIGTERM, Ctrl-C) with trials still to run; what finished is written."""

    def __init__(self, why: str, finished: int = 0, total: int = 0, running: list[int] | None = None):
        super().__init__(why)
        self.finished, self.total, self.running = finished, total, running or []


def _on_sigterm_raise() -> dict:
    """SIGTERM raises Stopped in the main thread (so the study can end its trials and write what finished), and so
    does SIGHUP (the terminal or ssh session closed; it killed the study with no word and results a trial behind)
    unless it is ignored (nohup); returns the handlers it replaced, to put back ({} off the main thread)."""
    def handler(signum, frame):
        raise Stopped(f"stopped by {signal.Signals(signum).name}")

    previous = {}
    try:
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, handler)
        if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, handler)
    except ValueError:  # not the main thread
        pass
    return previous


class DurationSample(NamedTuple):
    """A finished trial's timing, from which :meth:`Study.fits_time` predicts the next trial's duration."""

    tokens_per_epoch: float  # training tokens of one epoch (the data after truncation)
    tokens_per_s: float
    overhead_s: float  # the trial's wall time outside training
    batch: int  # micro-batch size
    kind: tuple  # (quantization, gradient checkpointing, packing): what else moves tokens/s most
    targets: int = 1  # LoRA target modules per layer
    r: int = 8  # LoRA rank
    steps: int = 0  # optimizer steps the tokens/s was measured over (a trial pruned early: a few, the first slower)
    max_seq_length: int = 0  # what tokens_per_epoch was truncated to
    warm: bool = False  # the trial took its base model loaded from a warm worker (its overhead has no load)


# Study.tokens_per_s: log tokens/s fitted, per kind, to log(micro-batch), log(LoRA targets) and log(r) by
# ridge regression toward SPEED_PRIOR (tokens/s ~ batch^0.5; targets and rank not moving it), each trial
# weighted min(1, steps / SPEED_FULL_WEIGHT_STEPS). benchmarks/bench_time_prediction.py, 61 COMPLETE trials of
# 31 CPU studies (time-to-quality runs on the demo space, the guide's commands), each predicted from the
# trials finished before it: median |log error| 0.105, p90 0.244, mean signed +0.028, against 0.213, 0.484
# and +0.118 (12% optimistic: trials cut by the budget) for the batch-only power law it replaced.
SPEED_PRIOR = np.array([0.0, 0.5, 0.0, 0.0])  # intercept (free), log batch, log targets, log r
SPEED_RIDGE = 1.0
SPEED_FULL_WEIGHT_STEPS = 20


def _speed_key(cfg: TrialConfig) -> tuple[int, tuple[str, bool, bool]]:
    """(micro-batch size, DurationSample.kind) of a trial configuration. Packing is in the kind: tokens/s counts real
    tokens, which packed rows hold 2.6x as many of as padded ones on long-tailed data (README, packing)."""
    return int(cfg.training.batch_size), (str(cfg.model.quantization), bool(cfg.model.gradient_checkpointing),
                                          bool(cfg.data.packing))


def _speed_features(batch: int, targets: int, r: int) -> np.ndarray:
    return np.array([1.0, math.log(max(batch, 1)), math.log(max(targets, 1)), math.log(max(r, 1))])


class Study:
    """One study: its configuration, its pruner, the hooks the executor calls, and the steps each
    trial goes through (journaled). ``run`` drives it with a :class:`Scheduler`.

    ``executor``: a callable ``(on_progress=, on_rung=, stall=) -> executor`` (moopt.study.executor's
    contract); default LocalExecutor, or RayExecutor with ``cfg.executor == "ray"``. ``write_results``:
    ``(output_dir, quiet=False) -> dict``, called after each trial (quiet) and at the end; default
    moopt.report.results.write_results. ``fill_free_slots``: a slot that frees up while the rest of its
    generation runs takes an extra individual of it (False: it waits for the generation's last trial;
    benchmarks/bench_parallel_sim.py compares the two)."""

    def __init__(self, cfg: StudyConfig, console=None, executor: Callable[..., Any] | None = None,
                 write_results: Callable[..., dict] | None = None, fill_free_slots: bool = True):
        from moopt.console import study_console

        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.console = console or study_console()  # lines never cut at 80 columns; a closed pipe stops nothing
        self.executor_factory = executor
        self.write_results = write_results
        self.fill_free_slots = fill_free_slots
        self.lock = threading.Lock()
        self.pruner = RungPruner(cfg.pruning_factor or 0, ideal=cfg.objectives.ideal(), describe=cfg.objectives.describe)
        self.rung_stops: dict[int, tuple[int, str]] = {}  # trial -> (step, why) of the rung decision that stopped it
        self.progress_view = None
        self.journal: Journal | None = None  # open while the study runs
        self.any_trial_started = False
        self.writer: BackgroundWriter | None = None  # rewrites the results after each trial while the study runs
        self.eval_length = 0  # the validation's max_seq_length, shared by every trial (set by run: seq_range)
        self.memory_limit_gb = cfg.memory_constraint_gb  # or, on GPUs without it, what the largest one holds (Scheduler)
        self._digest: dict[str, str] | None = None

    # -- helpers -------------------------------------------------------------------------------
    def trial_dir(self, number: int) -> Path:
        return self.out / "trial_results" / f"trial_{number}"

    def decide_rung(self, number: int, step: int, metrics: dict[str, float], rung: int) -> bool:
        """Called by the executor at each rung of a trial; journaled before the answer counts."""
        with self.lock:
            go, why = self.pruner.judge(rung, number, self.cfg.objectives.to_minimize(metrics), step)
            self.journal.append({"type": "rung", "number": number, "rung": rung, "step": step, "metrics": metrics,
                                 "decision": "continue" if go else "prune", "reason": why})
            if not go:
                self.rung_stops[number] = (step, why)
            return go

    def on_progress(self, number: int, event: dict) -> None:
        """A worker's phase / progress / heartbeat event (from an executor thread)."""
        with self.lock:
            if self.progress_view is not None:
                self.progress_view.event(number, event)

    def stall_policy(self):
        from moopt.study.watchdog import StallPolicy

        return StallPolicy(timeout_s=self.cfg.stall_timeout_s)

    def make_executor(self):
        """The executor of this run, its hooks wired to this study."""
        factory = self.executor_factory
        if factory is None and self.cfg.executor == "ray":
            from moopt.study.ray_executor import RayExecutor

            factory = functools.partial(RayExecutor, address=self.cfg.ray_address, steady_heap=bool(self.peak_rss_measured()))
        elif factory is None:
            from moopt.study.executor import LocalExecutor

            factory = functools.partial(LocalExecutor, warm=self.warm_workers(), steady_heap=bool(self.peak_rss_measured()))
        return factory(on_progress=self.on_progress, on_rung=self.decide_rung, stall=self.stall_policy())

    def warm_workers(self) -> bool:
        """Whether a worker keeps its base model for the next trial (``cfg.warm_workers``), except under
        ``--memory_constraint`` on a CPU, where the budget is the trial process's peak RSS. A warm
        worker's RSS after a trial depends on the trials before it (glibc's heap, oneDNN's primitive
        cache): over nine SmolLM2 trials in bf16 it held 0.74 -> 1.04 GiB after ``free_memory``, and a
        trial peaked up to 0.3 GiB above the same configuration in a fresh process (1.66 against 1.37 GiB
        at 32 x 20 tokens). Those peaks are the worker's history, not the configuration's; calibrated on
        them (and on warm peaks without the model's load), the gate erred by 5-16% and trained 6 of 47
        trials over the budget (benchmarks/bench_memory_gate.py, docs/RESULTS.md). A fresh process per
        trial measures what the estimate and the probe model. On a GPU workers stay warm: the budget is the
        caching allocator's peak since the trial began (plus the context), and ``torch.cuda.empty_cache``
        gives a trial's blocks back (not yet measured on a GPU). The same holds where ``peak_memory_gb`` is
        an objective: the search would otherwise rank configurations by the order they ran in."""
        if not self.cfg.warm_workers:
            return False
        if why := self.peak_rss_measured():
            self.console.print(f"Note: {why} on a CPU: a fresh process per trial, so that each trial's "
                               "peak RSS is its own (a warm worker's grows with the trials before it), "
                               "with malloc's mmap threshold fixed so that it repeats (1-7% of tokens/s)")
            return False
        return True

    def peak_rss_measured(self) -> str | None:
        """Why the trials' peak RSS matters (``--memory_constraint``, or ``peak_memory_gb`` as an objective)
        when they run on the CPU; None on a GPU or when it does not matter. Those trials run in a fresh
        process each (:meth:`warm_workers`) with glibc's malloc thresholds fixed
        (moopt.memory.rss.steady_heap), so that a configuration's peak does not depend on the order its
        tensors were freed in."""
        from moopt.study.placement import _gpu_capacities

        why = ("--memory_constraint" if self.cfg.memory_constraint_gb
               else "peak_memory_gb as an objective" if "peak_memory_gb" in self.cfg.objectives.names else None)
        return why if why and not _gpu_capacities() else None

    def prepare_model(self) -> None:
        """Cache moopt's own converted base model (the bundled SmolLM2) in each dtype the space trains in, here
        once, so no trial converts it at load (``moopt.train.models.prepare_dtype_copy``); other folders are
        loaded as they are."""
        from moopt.config import resolve_dtype
        from moopt.study.placement import _gpu_capacities
        from moopt.train.models import prepare_dtype_copy

        device = "cuda" if _gpu_capacities() else "cpu"
        values = next((p.values for p in self.cfg.space.params if p.name == "model.dtype"), [self.cfg.space.fixed.model.dtype])
        for dtype in sorted({resolve_dtype(str(v), device) for v in values}):
            prepare_dtype_copy(self.cfg.model_path, dtype)

    def seq_range(self) -> tuple[int, int]:
        """The shortest and longest max_seq_length of the space. Every trial (and the base model) is evaluated on
        the validation set cut at the longest (``TrialSpec.eval_max_seq_length``): a trial searching a shorter
        one is scored on the same tokens as the others, not on a shorter cut of them."""
        p = next((p for p in self.cfg.space.params if p.name == "data.max_seq_length"), None)
        if p is None:
            return (int(self.cfg.space.fixed.data.max_seq_length),) * 2
        if p.type == "categorical":
            return int(min(p.values)), int(max(p.values))
        return int(p.low), int(p.decode(p.pymoo_var().bounds[1]))

    def few_steps_note(self, n_train: int) -> str | None:
        """Where the space's largest effective batch (batch_size x gradient_accumulation_steps) over its fewest epochs
        leaves a trial fewer than FEW_STEPS optimizer steps on ``n_train`` examples: such a trial barely moves from
        the base model (the guide's comprehensive space on the bundled 300 examples drew 32 x 4: 3 steps)."""
        space = self.cfg.space

        def most(name: str, least: bool = False) -> float:
            p = next((q for q in space.params if q.name == name), None)
            if p is None:
                section, key = name.split(".")
                return float(getattr(getattr(space.fixed, section), key))
            values = [float(v) for v in p.values] if p.type == "categorical" else [float(p.low), float(p.high)]
            return min(values) if least else max(values)

        batch = int(most("training.batch_size") * most("training.gradient_accumulation_steps"))
        epochs = most("training.num_train_epochs", least=True)
        steps = int(math.ceil(n_train / batch) * epochs) if batch else 0
        if not n_train or steps >= FEW_STEPS:
            return None
        return (f"with the space's largest effective batch ({batch}: batch_size x gradient_accumulation_steps) and "
                f"{plural(epochs, 'epoch')}, a trial on the {n_train} training examples takes {plural(steps, 'optimizer step')}: too "
                "few to move far from the base model; " + ("more epochs train more" if math.ceil(n_train / batch) >= FEW_STEPS
                                                           else "on data this small, smaller batches or more epochs train more"))

    def check_data(self) -> None:
        """Sequences are cut to max_seq_length on the right, so an example whose prompt fills it keeps no
        completion token: trials leave it out (moopt.train.data.tokenize_file). Said here once, with how many;
        a data file none of whose examples keeps one (training: at the space's longest max_seq_length;
        validation: at the length it is evaluated at, the same) is refused: its trials would train on nothing,
        or be scored on nothing (a loss of 0). A large file is checked on a sample (``completion_starts``); the
        refusal is confirmed on every example. Validation records that also appear in the training file are
        said too (the objectives then reward memorising them)."""
        from moopt.train.data import forget_records

        try:
            self._check_data()
        finally:
            forget_records()  # the records the start's checks shared (moopt.train.data.keep_records): not held on

    def _check_data(self) -> None:
        from moopt.study.gate import data_notes, require_completions
        from moopt.train.data import formats_across, mixed_formats, repeated_records, shared_records

        if not Path(self.cfg.model_path).is_dir():  # a simulation's stand-in model (benchmarks, tests): no tokenizer
            return
        lo, hi = self.seq_range()
        checked = ((self.cfg.train_file, lo), (self.cfg.validation_file, hi))
        sizes = [require_completions(self.cfg.model_path, f, hi)[1] for f, _ in checked]  # every refusal before any note
        notes = [note for f, at in checked
                 for note in data_notes(self.cfg.model_path, f, at, hi, "training" if f == self.cfg.train_file else "validation")]
        notes += [note for f, _ in checked for note in (mixed_formats(f), formats_across(f)) if note]
        notes += [note for note in [repeated_records(self.cfg.train_file)] if note]
        shared, n_val = shared_records(self.cfg.train_file, self.cfg.validation_file)
        if shared:
            notes.append(f"{shared} of {n_val} examples of {self.cfg.validation_file} also appear in "
                         f"{self.cfg.train_file}: the objectives reward memorising them; a validation set held out from "
                         "training measures what a trial learnt")
        if note := self.few_steps_note(sizes[0]):
            notes.append(note)
        for note in notes:
            self.console.print(f"[yellow]Note:[/] {escape(note)}")
        # the report's data facts (moopt.report.html): the files this run read, their sizes and these notes
        self.journal.append({"type": "data", "train_file": str(self.cfg.train_file), "train_examples": sizes[0],
                             "validation_file": str(self.cfg.validation_file), "validation_examples": sizes[1],
                             "notes": notes})

    # -- running it ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the study to its end. Holds the study's lock throughout (a second process is refused).
        SIGTERM (a scheduler's pre-emption) or Ctrl-C ends the running trials, writes what finished
        and raises :class:`Stopped`; ``--resume`` reruns the trials that were running. A failure
        before the first trial starts leaves no half-written study behind."""
        fresh = self.cfg.overwrite or not (self.out / JOURNAL).is_file()
        existed = self.out.exists()
        lock = StudyLock(self.out)
        lock.acquire()
        self.any_trial_started = False
        self.restored_earlier = False  # an --overwrite stopped before its first trial: the earlier study is back
        self.sigint_was = None  # Ctrl-C's handler while a stop ends the trials and writes what finished
        self.baseline_kept = False  # this run evaluated the base model (COMPLETE)
        previous = _on_sigterm_raise()
        try:
            summary = self._run()
            drop_replaced(self.out)  # a study that ended with no trial started (a time budget spent on the base model,
            return summary  # every configuration ruled out, all taken over) replaced --overwrite's earlier one as well
        except BaseException as e:
            # a stop after the base model's evaluation keeps it (minutes on a large model; --resume starts from it),
            # unless an --overwrite's earlier study is to be put back
            kept = (isinstance(e, (KeyboardInterrupt, Stopped)) and self.baseline_kept
                    and not (self.out / REPLACED).is_dir())
            if fresh and not self.any_trial_started and not kept:
                discard_study(self.out, remove_dir=not existed)
                self.restored_earlier = restore_study(self.out)
            raise
        finally:
            for signum, was in previous.items():
                signal.signal(signum, was)
            if self.sigint_was is not None:
                signal.signal(signal.SIGINT, self.sigint_was)
            lock.release()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.write_results is None:
            from moopt.report.results import write_results

            self.write_results = write_results
        self.trimmed: list = []  # what --keep_adapters removed, after each write (moopt.study.adapters)
        prepare_output_dir(cfg)
        self.out.mkdir(parents=True, exist_ok=True)
        record = replay(self.out) if cfg.resume else None
        self.journal = Journal(self.out)
        # the validation length every trial shares (seq_range); a study begun before it was recorded keeps
        # evaluating each trial at its own max_seq_length (0), as its finished trials were
        self.eval_length = (record.header.get("eval_max_seq_length", 0) if record is not None and record.header
                            else self.seq_range()[1])
        if record is None or not record.header:
            from moopt.yamlio import write_yaml

            self.journal.append({"type": "study", "created": _now(), "fingerprint": study_fingerprint(cfg),
                                 "num_trials": cfg.num_trials, "objectives": list(cfg.objectives.names),
                                 "weights": list(cfg.objectives.weights), "base_model": cfg.base_model,
                                 "model_revision": cfg.model_revision, "memory_constraint_gb": cfg.memory_constraint_gb,
                                 "pruning_factor": cfg.pruning_factor, "eval_max_seq_length": self.eval_length,
                                 "options": cfg.options, "data_digest": self.data_digest(),
                                 "model_digest": model_digest(cfg.model_path),
                                 "training_code": training_code(), "kernels": cfg.kernels,
                                 # search_space.yaml as written: moopt report puts a lost one back from it, exactly
                                 "space_file": json.loads(json.dumps(space_to_yaml(cfg.space), default=str))})
            write_yaml(self.out / "search_space.yaml", space_to_yaml(cfg.space))
        else:  # resumed with other weights, budget, trial count or options: the results take this run's from now on
            now = json.loads(json.dumps({"weights": list(cfg.objectives.weights), "num_trials": cfg.num_trials,
                                         "memory_constraint_gb": cfg.memory_constraint_gb, "options": cfg.options}))
            changed = {k: v for k, v in now.items() if k in RESUME_SETTINGS and record.header.get(k) != v
                       and not (k == "options" and v is None)}
            if changed:
                self.journal.append({"type": "settings", "updated": _now(), **changed})
                said = {"weights": "--optimization_weights", "num_trials": "--num_trials",
                        "memory_constraint_gb": "--memory_constraint"}
                shown = [f"{said[k]} {_shown(v)} (was {_shown(record.header.get(k))})" for k, v in changed.items() if k in said]
                # the other options a resume changed (pruning, kernels, slots, ...): from now on the study's, so said;
                # not the ones shown above, nor files (their content is what the study checks: a copy may move)
                was = record.header.get("options") or {}
                quiet = ("num_trials", "optimization_weights", "memory_constraint", "base_model", "train_file",
                         "validation_file", "search_space", "seed", "optimization_objective")
                shown += [f"--{k} {_shown(v)} (was {_shown(was.get(k))})" for k, v in (changed.get("options") or {}).items()
                          if k not in quiet and k in was and was.get(k) != v]
                if shown:
                    self.console.print(f"Resumed with {'; '.join(shown)}: the results "
                                       "use this run's from now on", markup=False, highlight=False)
                from moopt.study.adapters import KEEP_CHOICES

                keep_was, keep = was.get("keep_adapters"), (changed.get("options") or {}).get("keep_adapters")
                if keep in KEEP_CHOICES and keep_was in KEEP_CHOICES and KEEP_CHOICES.index(keep) > KEEP_CHOICES.index(keep_was):
                    self.console.print(f"Note: --keep_adapters {keep} removes the adapters the earlier run kept under "
                                       f"--keep_adapters {keep_was} for the finished trials it does not keep "
                                       "(their configurations stay: moopt train --config trains any again)",
                                       markup=False, highlight=False)
        if record is not None and (note := record.damaged_note()):
            self.console.print(f"Note: {self.out / note}", markup=False, highlight=False)
        if record is not None and record.header:  # a moved copy of the data or the model (check_output_dir compared
            was, now = record.header.get("fingerprint") or {}, study_fingerprint(cfg)  # their content): from now on the
            moved = {k: now[k] for k in ("train_file", "validation_file", "base_model")  # study's, where best_config.yaml,
                     if was.get(k) is not None and was.get(k) != now[k]}  # the report and moopt train look for them
            if moved:
                self.journal.append({"type": "moved", "updated": _now(), **moved})
                self.console.print("Resumed from " + "; ".join(f"--{k} {v} (was {was[k]})" for k, v in moved.items())
                                   + f", the same content: the study names {'it' if len(moved) == 1 else 'them'} from now on",
                                   markup=False, highlight=False)
        for r in record.rungs if record else []:  # what finished trials showed at each rung
            if r["number"] in record.finished:
                self.pruner.record(r["rung"], r["number"], cfg.objectives.to_minimize(r["metrics"]), r.get("step"))
        for e in record.finished.values() if record else []:
            self.completed(e)

        self.prepare_model()
        self.check_data()
        sched = Scheduler(self, self.make_executor())
        sched.resume(record)
        self.writer = BackgroundWriter(self.results, self.out)
        try:
            if cfg.baseline and not self.baseline_done(record) and not self.take_baseline(sched.warm_same):
                self.run_baseline(sched.executor, sched.placer)  # (one that failed is tried again: it is cheap)
            sched.run()
        except (KeyboardInterrupt, Stopped) as e:
            try:  # a second Ctrl-C cut the stop short: the results a trial behind, its row missing, a traceback
                self.sigint_was = signal.signal(signal.SIGINT, signal.SIG_IGN)  # (put back when run() returns)
            except ValueError:  # not the main thread
                pass
            if self.any_trial_started:
                try:  # (after SIGHUP the terminal is gone: a write fails with EIO, and the stop must go on)
                    self.console.print("Stopping: ending the running trials and writing what finished ...",
                                       markup=False, highlight=False)
                except OSError:
                    pass
            sched.executor.kill_all()  # their trial_start has no trial_end: --resume reruns them
            self.journal.close()
            self.writer.close()
            if self.any_trial_started:
                self.results(self.out, quiet=True, stopped=True)
            raise Stopped(str(e) or "interrupted", finished=len(sched.finished), total=cfg.num_trials,
                          running=sorted(sched.running)) from None
        finally:
            self.progress_view = None
            sched.executor.close()
            self.writer.close()
        if sched.stop_note:
            taken = sum(bool(e.taken_from) for e in sched.finished.values())  # as the study line counts them
            self.console.print(f"[yellow]Study stopped early:[/] {escape(sched.stop_note)} ({len(sched.finished) - taken} of "
                               f"{cfg.num_trials} trials" + (f", +{taken} taken over" if taken else "") + ")")
            if sched.stop_note.startswith("time budget") and len(sched.finished) - taken < cfg.num_trials:
                self.console.print(f"  moopt optimize --output_dir {escape(str(self.out))} --resume --time_budget_hours H "
                                   "goes on with a budget of H hours from its start", markup=True, highlight=False)
        self.journal.append({"type": "ended", "at": _now(), "stop_note": sched.stop_note})  # not stopped: moopt report
        self.journal.close()
        try:  # every trial has ended: a Ctrl-C now would only cut the final write short (and once aborted the process,
            self.sigint_was = signal.signal(signal.SIGINT, signal.SIG_IGN)  # exit -6, a native thread still running)
        except ValueError:  # not the main thread
            pass
        return self.results(self.out, final=True)

    def results(self, out: Path, quiet: bool = True, final: bool = False, stopped: bool = False) -> dict[str, Any]:
        """Write the result files (quiet: while the study runs), then drop the adapters --keep_adapters does
        not keep; at the end, say what it removed. ``stopped``: the study was stopped (its running trials are
        INTERRUPTED in the files); at the end, a trial with no end is an earlier run's, interrupted, too."""
        summary = self.write_results(out, quiet=quiet and not final, stopped=stopped or final)
        if self.cfg.keep_adapters != "all":
            from moopt.study.adapters import describe, trim_adapters

            self.trimmed.append(trim_adapters(out, self.cfg.keep_adapters, final=final))
            line = describe(self.cfg.keep_adapters, self.trimmed) if final else None
            if line:
                self.console.print(line)
        return summary

    # -- per-trial steps (each journaled) ----------------------------------------------------------
    def params_of(self, x: dict) -> dict[str, Any]:
        """An individual's searched values as the journal's ``params`` (and trials_summary.csv) give them."""
        return {p.short: whole(p.name, _plain(p.decode(x[p.name]))) for p in self.cfg.space.params}  # 32, not 32.0

    def shown_params(self, x: dict) -> str:
        """An individual's searched values as the console names a trial's configuration: "lr=..., r=..."."""
        return ", ".join(f"{k}={_fmt(v, k)}" for k, v in self.params_of(x).items()) or "(no parameter searched)"

    def start_trial(self, executor, number: int, tcfg: TrialConfig, x: dict, slot, deadline) -> None:
        """Journal ``trial_start``, give the trial a clean folder, hand it to the executor."""
        cfg = self.cfg
        params = self.params_of(x)
        self.journal.append({"type": "trial_start", "number": number, "datetime_start": _now(),
                             "params": params, "config": tcfg.to_dict(), "device": slot.device,
                             "threads": slot.threads})  # on a CPU, the order of float sums: moopt train compares
        from moopt.yamlio import write_yaml

        d = self.trial_dir(number)
        shutil.rmtree(d, ignore_errors=True)  # a re-queued trial starts clean
        self.pruner.forget(number)
        write_yaml(d / "config.yaml", tcfg.to_yaml())
        self.console.print(f"Trial {number} started on {slot.device}: {self.shown_params(x)}")
        spec = TrialSpec(number=number, config=tcfg, base_model=cfg.model_path, train_file=os.path.abspath(cfg.train_file),
                         validation_file=os.path.abspath(cfg.validation_file), output_dir=str(d), seed=cfg.seed,
                         kernels=cfg.kernels, rung_fractions=rung_fractions(cfg.pruning_factor), deadline=deadline,
                         eval_max_seq_length=self.eval_length, **self.hub_source())
        if not self.any_trial_started:
            self.any_trial_started = True
            drop_replaced(self.out)  # --overwrite's earlier study: this one has begun
        executor.submit(spec, slot)

    def end_trial(self, res: TrialResult, trial: Running) -> TrialResult:
        """Complete the worker's result with what the study knows (memory constraint, the rung
        decision, times, configuration) and journal it as ``trial_end``."""
        cfg, m = self.cfg, res.metrics
        res.state = TrialState(res.state)
        if res.state == TrialState.COMPLETE and cfg.memory_constraint_gb and m.get("peak_memory_gb", 0) > cfg.memory_constraint_gb:
            res.state = TrialState.INFEASIBLE
            res.error = f"peak {m['peak_memory_gb']:.2f} GiB > --memory_constraint {cfg.memory_constraint_gb:g} GiB"
        if res.state == TrialState.PRUNED and res.number in self.rung_stops:  # stopped by our rung decision
            step, why = self.rung_stops.pop(res.number)
            res.pruned_at_step = step if res.pruned_at_step is None else res.pruned_at_step
            res.prune_reason = why
            res.error = f"{res.error}; {why}"
        res.datetime_start, res.datetime_complete = trial.start, _now()
        res.duration_s = time.time() - trial.t0
        res.config, res.epochs = trial.config.to_dict(), trial.config.training.num_train_epochs
        self.journal.append(res)
        self.sync_metrics_file(res)
        vals = "  ".join(f"{k}={m[k]:.4f}" for k in cfg.objectives.names if k in m)
        colour = {TrialState.COMPLETE: "green", TrialState.PRUNED: "yellow"}.get(res.state, "red")
        why = escape(res.error or "")
        self.console.print(f"Trial {res.number} [{colour}]{res.state}[/] in {res.duration_s:.0f}s"
                           + (f": {vals}" + (f" ({why})" if why else "") if vals else f": {why}" if why else ""))
        if FALLBACK in (res.backend_reason or ""):  # its speed and memory are the torch path's: say so
            self.console.print(f"  Trial {res.number} fell back to the torch path: {res.backend_reason}", markup=False,
                               highlight=False)
        return res

    def sync_metrics_file(self, res: TrialResult) -> None:
        """The trial's metrics.json (its curves, written by the worker with the fields only the study fills left
        empty: times, configuration, prune reason, take-over, a state the budget changed) takes the record the
        study journaled, so that it agrees with trials_summary.csv and the journal."""
        from dataclasses import asdict

        from moopt.yamlio import write_json

        path = self.trial_dir(res.number) / "metrics.json"
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):  # no file (a trial that crashed before writing it): nothing to align
            return
        write_json(path, {**m, **asdict(res)})

    def hub_source(self) -> dict[str, str | None]:
        """A TrialSpec's hub_id and hub_revision: the repository and commit a hub model came from (its adapters name
        them, as PEFT's do); None for a local model."""
        hub = self.cfg.model_revision is not None
        return {"hub_id": self.cfg.base_model if hub else None, "hub_revision": self.cfg.model_revision}

    def data_digest(self) -> dict[str, str]:
        """The train and validation files' SHA-256 (journaled: a later --warm_start takes over trials only on the
        same data)."""
        if self._digest is None:
            self._digest = {k: data_digest(getattr(self.cfg, k)) for k in ("train_file", "validation_file")}
        return self._digest

    def baseline_done(self, record: StudyRecord | None) -> bool:
        """Whether the study holds a COMPLETE evaluation of the base model (a baseline.json lost since is put back
        from the journal's copy)."""
        base = read_baseline(self.out, record if record is not None else StudyRecord())
        if not isinstance(base, dict) or base.get("state") != TrialState.COMPLETE:
            return False
        if not (self.out / BASELINE).is_file():
            from moopt.yamlio import write_json

            write_json(self.out / BASELINE, base)
        return True

    def keep_baseline(self, base: dict) -> None:
        """baseline.json, and the same in the journal (the study's record: a lost baseline.json is put back from it;
        without it, every score silently started from the worst trial instead)."""
        from moopt.yamlio import write_json

        write_json(self.out / BASELINE, base)
        self.journal.append({"type": "baseline", **base})

    def take_baseline(self, same: bool) -> bool:
        """The --warm_start study's base model evaluation, when it ran on the same model, validation data and
        length (``same``): copied, not run again. Whether it was."""
        if not same:
            return False
        base = read_baseline(self.cfg.warm_start)  # (its baseline.json lost: the journal's copy)
        if not isinstance(base, dict) or base.get("state") != TrialState.COMPLETE:
            return False
        self.keep_baseline({k: base.get(k) for k in ("state", "metrics", "error")})
        shown = "  ".join(f"{k}={v:.4f}" for k, v in (base.get("metrics") or {}).items() if k.startswith("eval_"))
        self.console.print(f"Base model (no fine-tuning; evaluated by {self.cfg.warm_start}, on the same model and "
                           f"validation data): {shown}", markup=False, highlight=False)
        return True

    def take_over(self, number: int, tcfg: TrialConfig, x: dict, source: tuple[int, TrialResult, list]) -> TrialResult:
        """The --warm_start study's result of the same configuration, as this study's trial ``number``: journaled
        (with its rung values) and its folder copied (adapter, curves, log); not trained again."""
        from dataclasses import replace

        old, end, rungs = source
        src = Path(self.cfg.warm_start) / "trial_results" / f"trial_{old}"
        params = self.params_of(x)
        now = _now()
        taken = f"{str(self.cfg.warm_start).rstrip('/')} trial {old}"
        self.journal.append({"type": "trial_start", "number": number, "datetime_start": now, "params": params,
                             "config": tcfg.to_dict(), "device": "none", "taken_from": taken})
        d = self.trial_dir(number)
        shutil.rmtree(d, ignore_errors=True)
        if src.is_dir():
            shutil.copytree(src, d)
        log = d / "log.txt"
        if log.is_file():
            log.write_text(f"[moopt] trial {number}: taken over from {taken} (the same configuration, not trained "
                           f"again); what follows is that trial's log\n" + log.read_text(errors="replace"))
        from moopt.yamlio import write_yaml

        write_yaml(d / "config.yaml", tcfg.to_yaml())
        for r in rungs:
            ev = {**r, "number": number}
            self.journal.append(ev)
            self.pruner.record(ev["rung"], number, self.cfg.objectives.to_minimize(ev["metrics"]), ev.get("step"))
        res = replace(end, number=number, datetime_start=now, datetime_complete=now, duration_s=0.0,
                      config=tcfg.to_dict(), taken_from=taken, warm=False)
        self.journal.append(res)
        self.sync_metrics_file(res)  # the copied file names this study's trial, and where it was taken from
        m = res.metrics
        vals = "  ".join(f"{k}={m[k]:.4f}" for k in self.cfg.objectives.names if k in m)
        self.console.print(f"Trial {number} [green]COMPLETE[/] (taken over from {taken}: the same configuration, "
                           f"not trained again): {vals}")
        return res

    def record_infeasible(self, number: int, tcfg: TrialConfig, x: dict, decision) -> TrialResult:
        """A configuration the memory gate rules out: journaled as INFEASIBLE, never trained."""
        params = self.params_of(x)
        now = _now()
        peak = decision.measured_gb if decision.measured_gb is not None else decision.predicted_gb
        self.journal.append({"type": "trial_start", "number": number, "datetime_start": now, "params": params,
                             "config": tcfg.to_dict(), "device": "none"})
        d = self.trial_dir(number)
        from moopt.yamlio import write_yaml

        write_yaml(d / "config.yaml", tcfg.to_yaml())
        end = TrialResult(number=number, state=TrialState.INFEASIBLE, metrics={"peak_memory_gb": peak},
                          error=f"{NOT_TRAINED}{decision.reason}", datetime_start=now, datetime_complete=_now(),
                          duration_s=0.0, config=tcfg.to_dict(), epochs=tcfg.training.num_train_epochs,
                          # its probe ran out of memory beside trials: decided again when proposed again (decide_again)
                          oom=decision.shared_oom, shared_gpu=decision.shared_oom,
                          peak_from="measured" if decision.measured_gb is not None else "estimate",
                          budget_gb=self.cfg.memory_constraint_gb)
        self.journal.append(end)
        self.console.print(f"Trial {number} [red]INFEASIBLE[/] (not trained): {escape(self.shown_params(x))}\n"
                           f"  {escape(decision.reason)}")
        return end

    def told_values(self, end: TrialResult) -> tuple[np.ndarray, float, np.ndarray]:
        """(F, G) for NSGA-II, and F for the engine's surrogate. Failures: G = 1 (infeasible, ranked
        behind every feasible trial). A trial pruned at a rung: NSGA-II gets its last rung's values; the
        surrogate their projection to the trial's end (RungPruner.projected)."""
        objs, m, c = self.cfg.objectives, end.metrics or {}, self.cfg.memory_constraint_gb
        have = all(k in m for k in objs.names)
        F = objs.to_minimize(m) if have else np.full(len(objs.names), FAILED_F)
        if end.state in (TrialState.COMPLETE, TrialState.PRUNED) and have:
            G = (m.get("peak_memory_gb", 0.0) - c) if c else -1.0
        elif end.state == TrialState.INFEASIBLE and self.memory_limit_gb and "peak_memory_gb" in m:
            # over by how much, and above 0 even where the gate ruled out a peak just under the budget (its spread or
            # error band): a larger peak is always "more infeasible" (it was 1e-3 for every one under the budget)
            peak, limit = m["peak_memory_gb"], self.memory_limit_gb
            G = max(peak - limit, 0.0) + 1e-3 * peak / limit
        else:
            G = 1.0
        return F, float(G), self.pruner.projected(end.number, F) if end.pruned_by_rung and have else F

    def completed(self, end: TrialResult) -> None:
        """A trial that ran to its end teaches the pruner how rung values turn into final ones."""
        m = end.metrics or {}
        if end.state == TrialState.COMPLETE and all(k in m for k in self.cfg.objectives.names):
            self.pruner.complete(end.number, self.cfg.objectives.to_minimize(m))

    def kernel_path(self, device: str) -> str:
        return kernel_path(self.cfg.kernels, device)

    def estimate_gb(self, tcfg: TrialConfig, device: str = "cuda") -> float:
        """Analytic peak-memory estimate of a trial, GiB (moopt.memory.estimate), from the model's config only."""
        from moopt.memory.estimate import estimate_peak, load_model_config

        if not hasattr(self, "_model_config"):
            self._model_config = load_model_config(self.cfg.model_path)
        return estimate_peak(self._model_config, tcfg, device=device, kernels=self.kernel_path(device)).total_gib

    config_key = staticmethod(config_key)

    @staticmethod
    def duration_sample(end: TrialResult) -> list[DurationSample]:
        """What a finished trial says of trial durations (for :meth:`fits_time`); none when it did not train."""
        tps, tokens, secs = end.tokens_per_s, end.train_tokens, end.train_seconds
        if not tps or not tokens or not end.total_steps:
            return []
        frac_done = end.steps / end.total_steps
        per_epoch = tokens / max(frac_done * end.epochs, 1e-9)
        cfg = TrialConfig.from_dict(end.config or {})
        batch, kind = _speed_key(cfg)
        return [DurationSample(per_epoch, tps, max(0.0, end.duration_s - secs), batch, kind, len(cfg.lora.target_modules),
                               int(cfg.lora.r), int(end.steps), int(cfg.data.max_seq_length), bool(end.warm))]

    @staticmethod
    def tokens_per_s(tcfg: TrialConfig, durations: list[DurationSample]) -> float:
        """A trial's training tokens/s, predicted from the finished trials' (``duration_sample``) of the same
        quantization and checkpointing where there are some (else all): log tokens/s regressed on the log
        micro-batch size, LoRA targets and rank, by ridge regression toward :data:`SPEED_PRIOR`, trials of
        few steps weighing less. On 2 CPU cores SmolLM2 trains at 28 tokens/s at batch 1 and 130 at batch 8,
        so the median of a study's trials (58) predicted a batch-1 trial of 5 epochs at half its real 16
        minutes, and it started with 8 left; the targets move it too (q,k,v,o 12% slower than q,v there)."""
        batch, kind = _speed_key(tcfg)
        same = [d for d in durations if d.kind == kind] or durations
        X = np.array([_speed_features(d.batch, d.targets, d.r) for d in same])
        y = np.log([d.tokens_per_s for d in same])
        w = np.array([min(1.0, max(d.steps, 1) / SPEED_FULL_WEIGHT_STEPS) for d in same])
        beta = SPEED_PRIOR.copy()
        beta[0] = np.average(y - X[:, 1:] @ SPEED_PRIOR[1:], weights=w)
        penalty = np.diag([1e-9] + [SPEED_RIDGE] * (len(beta) - 1))
        beta += np.linalg.solve(X.T @ (w[:, None] * X) + penalty, X.T @ (w * (y - X @ beta)))
        x = _speed_features(batch, len(tcfg.lora.target_modules), int(tcfg.lora.r))
        return float(np.exp(x @ beta))

    @staticmethod
    def fits_time(tcfg: TrialConfig, durations, deadline: float, cold: bool = False) -> bool:
        """Predicted duration: an epoch's training tokens (those of trials with the same ``max_seq_length``
        where there are some: truncation sets them) over the predicted tokens/s (:meth:`tokens_per_s`),
        plus the trials' overhead (the warm trials' once there are some: a warm worker's next trial loads no model,
        so the first trial's cold start no longer stands for every later one; ``cold``: this one starts a worker and
        loads the model, as the first after a --resume does: the cold trials' overhead). Can this trial end before
        the deadline?"""
        if not durations:
            return time.time() < deadline
        return time.time() + Study.predicted_seconds(tcfg, durations, cold) <= deadline

    @staticmethod
    def predicted_seconds(tcfg: TrialConfig, durations, cold: bool = False) -> float:
        """:meth:`fits_time`'s prediction of a trial's duration (``durations`` not empty)."""
        seq = int(tcfg.data.max_seq_length)
        per_epoch = float(np.median([d.tokens_per_epoch for d in durations if d.max_seq_length == seq]
                                    or [d.tokens_per_epoch for d in durations]))
        overhead = float(np.median([d.overhead_s for d in durations if d.warm != cold] or [d.overhead_s for d in durations]))
        return per_epoch * tcfg.training.num_train_epochs / Study.tokens_per_s(tcfg, durations) + overhead

    def run_baseline(self, executor=None, placer=None) -> None:
        """Evaluate the base model (no training) so the report can say how much tuning helped. On the
        study's own LocalExecutor when it has one (a warm worker then keeps the model for the first
        trial); with Ray, as a Ray task in a slot of ``placer`` (where trials run: this machine may be a head
        node without GPUs); else on a LocalExecutor of its own."""
        from moopt.study.executor import LocalExecutor, wait_for_any
        from moopt.study.placement import plan_slots

        self.console.print("Evaluating the base model on the validation set ...")
        tcfg = self.cfg.space.default_in_space()
        tcfg = TrialConfig.from_dict({"training": {"num_train_epochs": 1e-9}}, base=tcfg)
        d = self.out / "trial_results" / "baseline"
        spec = TrialSpec(number=-1, config=tcfg, base_model=self.cfg.model_path, train_file=os.path.abspath(self.cfg.train_file),
                         validation_file=os.path.abspath(self.cfg.validation_file), output_dir=str(d), seed=self.cfg.seed,
                         kernels=self.cfg.kernels, save_adapter=False, baseline=True, eval_max_seq_length=self.eval_length,
                         **self.hub_source())
        from moopt.study.progress import ProgressBoard, ProgressView

        on_cluster = placer is not None and callable(getattr(executor, "nodes", None))
        own = not isinstance(executor, LocalExecutor) and not on_cluster
        ex = LocalExecutor(on_progress=self.on_progress, stall=self.stall_policy()) if own else executor
        if on_cluster:
            slot = placer.place(-1)  # (nothing else runs yet: there is room)
        else:
            slot = plan_slots(self.cfg.parallel_trials)[0]  # a trial's slot, so the worker can take trial 0 warm
        try:
            with ProgressView(self.console, ProgressBoard(), study_line=False) as view:
                self.progress_view = view
                ex.submit(spec, slot)
                res = wait_for_any(ex, on_poll=view.tick)
                self.progress_view = None
        finally:
            if own:
                ex.close()
            if on_cluster:
                placer.release(-1)
        self.keep_baseline({"state": res.state, "metrics": res.metrics, "error": res.error})
        self.baseline_kept = res.state == TrialState.COMPLETE
        if res.state == TrialState.COMPLETE:
            shown = "  ".join(f"{k}={v:.4f}" for k, v in res.metrics.items() if k.startswith("eval_"))
            how = f", {res.dtype}" if res.dtype else ""  # model.dtype auto resolves by device and CPU
            self.console.print(f"Base model (no fine-tuning{how}): {shown}")
        else:
            self.console.print(f"[red]Base model evaluation failed:[/] {res.error}")

    def progress(self, finished, deadline: float | None, began: float | None = None):
        """The live progress view (moopt.study.progress): live on a terminal, plain lines in a log. ``began``: when
        the time budget's clock started (the base model's evaluation counts), what "elapsed" counts from."""
        from moopt.study.progress import ProgressBoard, ProgressView

        objectives = self.cfg.objectives
        score = rescore = None
        if objectives.multi:  # the best by the weights, as the summary picks it, once a trial's score is fixed

            from moopt.report.table import fixed_start

            baseline = read_baseline(self.out, StudyRecord())  # (this run's file: no replay of the journal)
            start = fixed_start(objectives, baseline, {"memory_constraint_gb": self.cfg.memory_constraint_gb})
            if start is not None:
                s0 = objectives.to_minimize(start)
                score = lambda m: float(objectives.score(objectives.to_minimize(m), s0)[0])  # noqa: E731
            else:  # an objective the base model has no value for (--no-baseline): the summary's start, which takes
                # the worst COMPLETE trial's value there, so every score moves as trials end
                import pandas as pd

                from moopt.report.table import score_start

                header = {"memory_constraint_gb": self.cfg.memory_constraint_gb}

                def rescore(ms: list[dict[str, float]]) -> list[float]:
                    table = pd.DataFrame([{f"values_{n}": m[n] for n in objectives.names} for m in ms])
                    at, _ = score_start(objectives, baseline, header, table.max(), table.min())
                    F = np.array([objectives.to_minimize(m) for m in ms], dtype=float)
                    return [float(x) for x in objectives.score(F, objectives.to_minimize(at))]
        board = ProgressBoard(total=self.cfg.num_trials, objective=objectives.names[0], deadline=deadline, began=began,
                              minimize=objectives.directions()[0] == "minimize", score=score, shown=objectives.names,
                              rescore=rescore, to_minimize=objectives.to_minimize if objectives.multi else None)
        budget = self.cfg.memory_constraint_gb
        for end in finished:
            if budget and end.state == TrialState.COMPLETE and (end.metrics or {}).get("peak_memory_gb", 0) > budget:
                end = replace(end, state=TrialState.INFEASIBLE)  # over a budget a --resume lowered: as the results judge it
            board.ended(end, earlier=True)
        return ProgressView(self.console, board)


@dataclass
class Running:
    """A trial handed to the executor."""

    idx: int  # its individual's index in the engine's pending generation
    config: TrialConfig
    key: str  # Study.config_key(config): finished configurations are never trained twice
    slot: Any  # moopt.study.placement.Slot
    start: str  # datetime_start, ISO
    t0: float  # time.time() at the start


# proposals in a row that all decode to configurations tried already: past it the space counts as spent (the engine
# proposes only new encodings, but two encodings may decode to one configuration)
REUSE_LIMIT = 200


class Scheduler:
    """The study's loop, with its state in the open: NSGA-II individuals queue up, free slots start
    them, results come back in any order and are told to the engine.

    One trial, in order (``start`` then ``finish``):
      start:  checkpoint (number -> individual) -> journal trial_start -> executor.submit
      finish: journal trial_end -> tell the engine -> checkpoint -> write the results
    """

    def __init__(self, study: Study, executor):
        from moopt.study.placement import ClusterPlacer, DevicePlacer

        cfg = self.cfg = study.cfg
        self.study, self.executor = study, executor
        self.path = study.out / ENGINE_FILE
        self.ck: Checkpoint | None = None  # the engine and the trial number -> pending index map (resume makes it)
        self.queue: list[tuple[int, int]] = []  # (index in engine.pending, trial number or -1 for a new one)
        self.running: dict[int, Running] = {}
        self.finished: dict[int, TrialResult] = {}
        self.evaluated: dict[str, TrialResult] = {}  # config_key -> its trial's end
        self.known: dict[str, tuple[int, TrialResult, list]] = {}  # config_key -> a --warm_start study's result
        self.warm_same = False  # the --warm_start study ran on the same model, data, seed and validation length
        self.durations: list[DurationSample] = []  # of every finished trial
        self.n_started = 0  # finished or started trials, toward cfg.num_trials
        self.next_number = 0
        self.stop_note: str | None = None  # why no more trials start (time budget, space exhausted)
        self.reused_in_row = 0  # proposals in a row that were tried already (re-told, no trial): the space is spent
        self.began = time.time()  # the time budget counts from here, the base model's evaluation included
        self.deadline = self.began + cfg.time_budget_hours * 3600 if cfg.time_budget_hours else None
        # Ray's trials run where the cluster has room (this machine may be a head node without GPUs); local ones here
        nodes = getattr(executor, "nodes", None)
        if callable(nodes):
            live = nodes()
            gpu_gib = executor.gpu_memory() if any(r.get("GPU", 0) >= 1 for r in live) else []
            self.placer = ClusterPlacer(cfg.parallel_trials, live, gpu_gib)
        else:
            self.placer = DevicePlacer(cfg.parallel_trials)
        from moopt.study.placement import idle_gpus_note

        if cfg.executor != "ray" and (note := idle_gpus_note()):
            study.console.print(f"Note: {note}", markup=False, highlight=False)
        if {"eval_loss", "eval_perplexity"} <= set(cfg.objectives.names):
            study.console.print("Note: eval_perplexity is exp(eval_loss): the two rank every trial alike, so they add no "
                                "trade-off to the Pareto front (keep one, beside another objective)", markup=False,
                                highlight=False)
        quantized = {p.name: p.values for p in cfg.space.params}.get("model.quantization", (cfg.space.fixed.model.quantization,))
        if not self.placer.on_gpu and any(q != "none" for q in quantized) and cfg.executor != "ray":
            study.console.print("Note: model.quantization on a CPU: bitsandbytes' 4-bit and 8-bit layers work here but "
                                "cost memory instead of saving it (the checkpoint stays mapped beside them) and train "
                                "slower; they pay on a GPU", markup=False, highlight=False)
        lr = next((p for p in cfg.space.params if p.name == "training.learning_rate"), None)
        lrs = ([float(v) for v in lr.values] if lr.type == "categorical" else [float(lr.low), float(lr.high)]) if lr \
            else [float(cfg.space.fixed.training.learning_rate)]
        if note := lr_note(lrs):  # a typo (1e4 for 1e-4): trials "COMPLETE" on garbage
            study.console.print(f"Note: {note}", markup=False, highlight=False)
        n_space = cfg.space.n_configurations()
        if n_space < cfg.num_trials:
            study.console.print(f"Note: the search space holds {n_space:.0f} configuration{'s' if n_space != 1 else ''}, "
                                f"fewer than --num_trials {cfg.num_trials}: the study ends once each has been trained",
                                markup=False, highlight=False)
        if not self.placer.on_gpu and cfg.parallel_trials > self.placer.cores:
            study.console.print(f"Note: --parallel_trials {cfg.parallel_trials} on {self.placer.cores} CPU core(s): the trials "
                                "time-share the cores, one thread each, so more at once do not finish sooner, and each "
                                "holds its own copy of the model in memory", markup=False, highlight=False)
        self.gate = None
        budget_note = None
        if not cfg.memory_constraint_gb and self.placer.on_gpu and self.placer.gpus:
            # No --memory_constraint: the GPU's own memory is still a limit. A configuration whose estimate is
            # clearly over what the largest GPU holds (visible here, or with Ray in the cluster) is not trained (for
            # a 70B model, loading it only to run out of memory costs minutes); a borderline one is probed; the rest
            # train on the estimate (their OOM, should one come, is recorded and never repeated).
            cap = self.placer.largest_placeable()
            study.memory_limit_gb = cap * DevicePlacer.HEADROOM
            where = " in the cluster Ray can be asked for" if callable(nodes) else ""
            budget_note = f"{DevicePlacer.HEADROOM:.0%} of the largest GPU's {cap:.1f} GiB{where}, no --memory_constraint"
        elif cfg.memory_constraint_gb and self.placer.on_gpu and self.placer.gpus:
            # a budget above what the largest GPU holds: the GPU is the limit (trusting the budget would load a
            # configuration only to run out of memory)
            cap = self.placer.largest_placeable()
            if cfg.memory_constraint_gb > cap * DevicePlacer.HEADROOM:
                study.memory_limit_gb = cap * DevicePlacer.HEADROOM
                budget_note = (f"{DevicePlacer.HEADROOM:.0%} of the largest GPU's {cap:.1f} GiB, under --memory_constraint "
                               f"{cfg.memory_constraint_gb:g}")
        if self.placer.on_gpu and not self.placer.gpus:  # Ray, and NVML answered on none of its GPU nodes
            study.console.print("Note: the memory of the cluster's GPUs could not be read (NVML on its GPU nodes): each "
                                "trial asks Ray for a whole GPU" + ("" if cfg.memory_constraint_gb else
                                ", and no configuration is ruled out as too large for one (--memory_constraint sets "
                                "a limit)"), markup=False, highlight=False)
        if study.memory_limit_gb:
            from moopt.study.gate import MemoryGate

            device = "cuda" if self.placer.on_gpu else "cpu"
            self.gate = MemoryGate(cfg.model_path, device=device, train_file=cfg.train_file,
                                   kernels=study.kernel_path(device), constraint_gb=study.memory_limit_gb,
                                   probe_first=bool(cfg.memory_constraint_gb), budget_note=budget_note,
                                   runner=getattr(executor, "call", None),
                                   probe_device=self.ray_probe_room if callable(nodes) else self.placer.probe_device,
                                   probe_company=None if callable(nodes) else self.placer.on, seed=cfg.seed,
                                   runtime="ray" if cfg.executor == "ray" else "")
        self.waiting_for_probe: set[int] = set()  # individuals whose probe waits for a GPU (said once each)
        self.beside: dict[int, set[int]] = {}  # running trial -> the trials that shared its GPU meanwhile
        self.probes_beside: dict[int, set[int]] = {}  # running trial -> trials whose memory probe ran on its GPU
        self.view = None  # the progress view, while run() runs

    @property
    def engine(self) -> Engine:
        return self.ck.engine

    def decide_again(self, end: TrialResult) -> bool:
        """A trial that ran out of memory on a GPU it shared, or one the gate ruled out untrained under a lower
        --memory_constraint than a --resume set since (its estimate or probe is now under it): its configuration is
        not taken as evaluated, so that, proposed again, the gate decides it (a probe alone first)."""
        if end.oom and end.shared_gpu and self.gate is not None:
            return True
        budget, under = self.cfg.memory_constraint_gb, end.budget_gb
        return (end.state == TrialState.INFEASIBLE and str(end.error or "").startswith(NOT_TRAINED) and bool(budget)
                and under is not None and budget > under)

    def ray_probe_room(self, budget_gb: float, alone: bool = False) -> str | None:
        """With Ray, a probe asks for a whole GPU: "" (Ray picks it) when one is free or no trial of the study runs,
        else None (the gate says "wait": results go on being taken while the trials free one)."""
        room = getattr(self.executor, "probe_room", None)
        return "" if not self.running or room is None or room() else None

    # -- one trial ---------------------------------------------------------------------------------
    def start(self, idx: int, number: int, tcfg: TrialConfig, x: dict, key: str, slot) -> None:
        self.ck.assigned[number] = idx
        self.ck.save(self.path)
        self.running[number] = Running(idx, tcfg, key, slot, _now(), time.time())
        if self.view is not None:  # a number that ended before (decided again) shows its events again
            self.view.board.gone.discard(number)
        if slot.device.startswith("cuda:"):  # the trials that share its GPU while it runs
            beside = {n for n, r in self.running.items() if r.slot.device == slot.device and n != number}
            self.beside[number] = beside
            for n in beside:
                self.beside.setdefault(n, set()).add(number)
        self.study.start_trial(self.executor, number, tcfg, x, slot, self.deadline)
        self.n_started += 1

    def disk_full(self, res: TrialResult) -> str | None:
        """Whether a failed trial failed for a full disk: its error says so, or its worker died without a result and
        its log.txt says so, or says nothing (its error could not be written either) where the trial's folder has
        under 1 MiB free; "" or what was found, else None."""
        if any(m in str(res.error or "") for m in FULL_DISK_TEXTS):
            return ""
        if not str(res.error or "").startswith("worker exited with code"):
            return None
        folder = self.study.out / "trial_results" / f"trial_{res.number}"
        try:
            with open(folder / "log.txt", "rb") as f:
                f.seek(max(f.seek(0, os.SEEK_END) - 8192, 0))
                tail = f.read().decode(errors="replace")
        except OSError:
            tail = ""
        if tail.strip():  # it said why: the disk only where it says so
            return " (its log.txt says so)" if any(m in tail for m in FULL_DISK_TEXTS) else None
        try:
            free = shutil.disk_usage(folder if folder.is_dir() else self.study.out).free
        except OSError:
            return None
        return f" ({folder} has {free // 1024} KiB free, and its log.txt is empty)" if free < 2**20 else None

    def finish(self, res: TrialResult) -> None:
        if res.state == TrialState.FAIL and (full := self.disk_full(res)) is not None:
            # the disk, not the configuration: not told to NSGA-II as infeasible, not ended in the journal (--resume
            # trains it again); the study stops (a full disk stops the next write anyway)
            raise OSError(FULL_DISK_ERRNOS[0], f"trial {res.number} failed: {res.error}{full}")
        trial = self.running.pop(res.number)
        self.placer.release(res.number)
        beside = sorted(self.beside.pop(res.number, ()))
        probes = sorted(self.probes_beside.pop(res.number, ()))
        # Ray may have put a trial on a share of a GPU beside others (which, it does not say)
        shared = res.shared_gpu = bool(beside or probes) or (trial.slot.device == "cuda" and trial.slot.gpu_share < 1.0)
        if res.oom and shared and self.gate is not None:
            who = " and ".join(filter(None, [
                numbered("trial", beside) if beside else "",
                f"the memory probe of {numbered('trial', probes)}" if probes else ""]))
            who = f"{who} on {trial.slot.device}" if who else "other trials (a share of a GPU)"
            res.error = (f"{res.error}; it ran beside {who}, whose memory it may have lacked: not ruled out, "
                         "proposed again it is probed alone first")
        end = self.study.end_trial(res, trial)
        self.view.ended(end)
        if self.gate is not None:  # each measured peak calibrates the gate; an OOM is never repeated (alone)
            self.gate.observe(trial.config, int(end.metrics.get("peak_memory_gb", 0) * 2**30), oom=end.oom,
                              shared=shared, partial=end.steps < end.total_steps)
        self.study.completed(end)
        self.finished[res.number] = end
        if not self.decide_again(end):
            self.evaluated[trial.key] = end
        self.durations += self.study.duration_sample(end)
        self.engine.tell_one(trial.idx, *self.study.told_values(end))
        if self.engine.generation_done:
            self.ck.tell()
        self.ck.save(self.path)
        if self.study.writer is not None:  # trials_summary.csv, best_config.yaml, plots: in the background
            self.study.writer.request()
        else:
            self.study.results(self.study.out)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        """Until every trial has run (or a stop note says why not): fill the free slots, wait for a result."""
        from moopt.study.executor import wait_for_any

        with self.study.progress(self.finished.values(), self.deadline, self.began) as view:
            self.view = self.study.progress_view = view
            view.board.gone.add(-1)  # the base model's evaluation ended: a late event of it (Ray's) brings back no row
            while True:
                self.fill_slots()
                if not self.running:
                    return
                self.finish(wait_for_any(self.executor, deadline=self.deadline, on_poll=view.tick))

    def fill_slots(self) -> None:
        """Start trials while a slot is free, trials are left to run and nothing said stop."""
        while self.placer.free() > 0 and self.n_started < self.cfg.num_trials and self.stop_note is None:
            if not self.queue and not self.queue_more():
                return
            idx, number = self.queue.pop(0)
            if not self.admit(idx, number):
                return

    def queue_more(self) -> bool:
        """Queue more individuals: extra ones of the pending generation while the rest of it runs,
        else the next generation. False: none now (wait for a running trial, or the space is spent)."""
        engine = self.engine
        if engine.pending is not None and not engine.generation_done:
            more = []
            if self.study.fill_free_slots:
                more = engine.extend(min(self.placer.free(), self.cfg.num_trials - self.n_started))
            if not more:
                return False  # wait for a trial of this generation to end
            self.queue = [(len(engine.pending) - len(more) + i, -1) for i in range(len(more))]
            self.ck.save(self.path)
            return True
        if engine.pending is not None:
            self.ck.tell()
            self.ck.save(self.path)
        X = engine.ask() if self.reused_in_row < REUSE_LIMIT else []
        if not X:
            self.stop_note = "the search space has no new configurations left to propose"
            return False
        self.queue = [(i, -1) for i in range(len(X))]
        self.ck.save(self.path)
        return True

    def cold(self, tcfg: TrialConfig) -> bool:
        """Whether the trial would start a worker and load the base model (no idle warm worker holds it; unknown with
        Ray: warm, as the trials measured)."""
        ready = getattr(self.executor, "warm_ready", None)
        return ready is not None and not ready(tcfg)

    def time_left_note(self, tcfg: TrialConfig) -> str:
        """" (the shortest predicted s, s left)" for the stop note: what the budget lacked."""
        predicted = self.study.predicted_seconds(tcfg, self.durations, self.cold(tcfg)) if self.durations else None
        left = max(0.0, self.deadline - time.time())
        return f" (the next needs about {fmt_duration(predicted)}, {fmt_duration(left)} left)" if predicted else ""

    def admit(self, idx: int, number: int) -> bool:
        """Start pending individual ``idx`` (as trial ``number``, or the next new number if -1) unless
        it was evaluated already (told again, no trial), the time budget cannot fit it, or the memory
        gate rules it out (journaled INFEASIBLE). False: stop filling slots for now."""
        study = self.study
        x = dict(self.engine.pending[idx].X)
        tcfg = self.cfg.space.decode(x)
        key = study.config_key(tcfg)
        if key in self.evaluated:  # same configuration as a finished trial: reuse, no new trial
            self.engine.tell_one(idx, *study.told_values(self.evaluated[key]))
            self.reused_in_row += 1
            return True
        self.reused_in_row = 0
        if key in self.known:  # the --warm_start study trained it on the same model and data: its result, at once
            number = number if number >= 0 else self.new_number()
            end = study.take_over(number, tcfg, x, self.known.pop(key))
            self.view.ended(end, earlier=True)
            study.completed(end)
            self.finished[number] = self.evaluated[key] = end
            self.durations += study.duration_sample(end)
            self.engine.tell_one(idx, *study.told_values(end))
            self.ck.assigned[number] = idx
            self.ck.save(self.path)
            return True
        if self.deadline is not None and not study.fits_time(tcfg, self.durations, self.deadline, self.cold(tcfg)):
            # another queued individual of this generation that can still finish runs first; this one waits
            # behind it (time only runs out, so it never becomes able to finish)
            def fits(x) -> bool:
                t = self.cfg.space.decode(dict(x))
                return study.fits_time(t, self.durations, self.deadline, self.cold(t))

            for j, (other, _) in enumerate(self.queue):
                if fits(self.engine.pending[other].X):
                    self.queue.append((idx, number))
                    return self.admit(*self.queue.pop(j))
            # none of them can: one more for this generation that can (fewer epochs, a shorter sequence, ...): a
            # generation of long configurations ended a 10 h study whose last hours shorter ones would have used
            if self.durations and self.engine.extend(1, allowed=fits):
                self.queue.append((idx, number))
                return self.admit(len(self.engine.pending) - 1, -1)
            self.stop_note = ("time budget: none of the next configurations could finish before the deadline"
                              + self.time_left_note(tcfg)
                              if self.durations or self.n_started or time.time() < self.deadline else
                              "time budget: it ran out before the first trial could start (the set-up"
                              + (" and the base model's evaluation" if self.cfg.baseline else "") + " took it all)")
            return False
        decision = None
        if self.gate is not None:  # --memory_constraint (or the GPU's memory): never train what cannot fit
            shown = number if number >= 0 else self.next_number
            decision = self.gate.decide(tcfg, announce=lambda shape: study.console.print(
                f"Trial {shown}: measuring its peak memory ({shape[0]} x {shape[1]} tokens, a few steps in a fresh process): "
                f"{study.shown_params(x)} ...",
                markup=False, highlight=False))
            if decision.verdict == "wait":  # its probe needs a GPU the running trials leave no room on: the next
                # configurations wait behind it (trials started meanwhile could keep every GPU from emptying)
                if idx not in self.waiting_for_probe:
                    self.waiting_for_probe.add(idx)
                    study.console.print(f"Trial {shown}: {decision.reason.split('; shape')[0]}; it starts when "
                                        "running trials end", markup=False, highlight=False)
                self.queue.insert(0, (idx, number))
                return False
            self.waiting_for_probe.discard(idx)
            for n in decision.company:  # they ran beside the probe: an OOM of theirs meanwhile proves nothing alone
                self.probes_beside.setdefault(n, set()).add(shown)
            study.journal.append({"type": "memory_gate", "number": shown, **vars(decision)})
            # why it fits: measured, or (under --memory_constraint) trusted from the estimate outside its error band
            if decision.verdict == "fit" and (decision.probed or decision.measured_gb is not None
                                              or self.cfg.memory_constraint_gb):
                study.console.print(f"Trial {shown} fits: {decision.reason}", markup=False, highlight=False)
            if decision.verdict == "infeasible":
                number = number if number >= 0 else self.new_number()
                end = study.record_infeasible(number, tcfg, x, decision)
                self.view.ended(end)
                self.finished[number] = end
                if not self.decide_again(end):
                    self.evaluated[key] = end
                self.engine.tell_one(idx, *study.told_values(end))
                self.n_started += 1
                return True
        candidate = number if number >= 0 else self.next_number
        slot = self.placer.place(candidate, self.reserve_gb(tcfg, decision) if self.placer.on_gpu else None)
        if slot is None:  # no GPU has room for it now: wait for a running trial to end
            self.queue.insert(0, (idx, number))
            return False
        self.start(idx, number if number >= 0 else self.new_number(), tcfg, x, key, slot)
        return True

    def reserve_gb(self, tcfg: TrialConfig, decision=None) -> float:
        """GiB a trial reserves on its GPU: its analytic estimate at max_seq_length, or what the memory gate knows
        to be more (a probe's measured peak, the calibrated estimate). Placed by the estimate alone, a
        configuration that ran out of memory beside another trial, then measured alone over its estimate, would
        be packed beside one again, and run out again."""
        need = self.study.estimate_gb(tcfg)
        if decision is not None:
            need = max(need, decision.predicted_gb, decision.measured_gb or 0.0)
        return need

    def new_number(self) -> int:
        self.next_number += 1
        return self.next_number - 1

    # -- resume ------------------------------------------------------------------------------------
    def resume(self, record) -> None:
        """Restore the engine (or make a fresh one) and what the journal says finished; re-queue the
        pending individuals that have no result, under their trial number if they had one."""
        cfg, study = self.cfg, self.study
        self.finished = dict(record.finished) if record else {}
        seeds = warm_start_configs(cfg.warm_start) if cfg.warm_start else []
        known, differ = {}, None
        if cfg.warm_start:
            known, differ = reusable_trials(cfg, study.eval_length, study.data_digest(),
                                            "cuda" if self.placer.on_gpu else "cpu")
        restored = False
        if cfg.resume and self.path.is_file():
            try:
                self.ck, restored = Checkpoint.load(self.path), True
            except Exception as e:  # noqa: BLE001 (pickle raises many kinds: truncated, a class renamed by an upgrade)
                study.console.print(f"Note: {self.path} cannot be read ({type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
                                    "); the search goes on with a new engine, as without the file: the trials finished "
                                    "are kept (the journal holds them), and one it proposes again is not trained again",
                                    markup=False, highlight=False)
        if not restored:
            # the seeds this study takes over (moved into its space, the same configuration): free, on top of the design
            free = [i for i, s in enumerate(seeds) if study.config_key(cfg.space.decode(cfg.space.encode(s))) in known]
            self.ck = Checkpoint(Engine(cfg.space, len(cfg.objectives.names), cfg.num_trials, cfg.seed, cfg.parallel_trials,
                                        warm_start=seeds or None, free_seeds=free))
        engine = self.engine
        if engine.pending is not None:
            for idx in range(len(engine.pending)):
                num = self.ck.number_of(idx)
                if num is not None and num in self.finished:
                    engine.tell_one(idx, *study.told_values(self.finished[num]))
                elif idx not in engine.results:
                    self.queue.append((idx, -1 if num is None else num))
        self.evaluated = {study.config_key(TrialConfig.from_dict(e.config)): e for e in self.finished.values()
                          if e.config is not None and not self.decide_again(e)}
        if restored and record is not None:  # the budget may differ from what they were told with
            told = []
            for e in self.evaluated.values():
                try:
                    told.append((cfg.space.encode(TrialConfig.from_dict(e.config)), study.told_values(e)[1]))
                except (ValueError, KeyError, TypeError):  # a configuration outside this space: not in the engine
                    continue
            engine.reset_constraints(told)
        if cfg.warm_start:
            self.warm_same = not differ
            self.known = {k: v for k, v in known.items() if k not in self.evaluated}
            if record is None or not record.finished:
                study.console.print(
                    f"Warm start from {cfg.warm_start}: its best configurations seed the first generation; "
                    + (f"any this study proposes again is taken over with its result, not trained again ({len(known)} "
                       "COMPLETE trials on the same base model, data, seed, validation length, moopt training code, "
                       "kernels, device kind and dtype)"
                       if known else
                       f"each is trained again: not the same {differ}" if differ else
                       "none of its trials can be taken over (none COMPLETE on this kind of device in the same dtype)")
                    + _outside_text(cfg.space, [seeds[i] for i in getattr(engine, "seeded", range(min(len(seeds), engine.pop_size)))]),
                    markup=False, highlight=False)
            else:  # the engine comes from the study's checkpoint: its first generation was chosen when it began
                study.console.print(
                    f"Warm start from {cfg.warm_start} on a resumed study: its configurations do not seed this study "
                    "(its first generation was chosen when it began); " + (
                        f"any this study proposes again is taken over with its result ({len(self.known)} COMPLETE "
                        "trials that can be)" if self.known else "none of its trials can be taken over" + (f": not the same {differ}" if differ else "")),
                    markup=False, highlight=False)
        if record is not None and record.header:
            rerun = [n for n in record.running if n not in self.finished]
            taken = sum(bool(e.taken_from) for e in self.finished.values())
            room = max(cfg.num_trials - (len(self.finished) - taken), 0)  # a lower --num_trials: fewer (or none) run
            was = f"{numbered('trial', rerun)} {'was' if len(rerun) == 1 else 'were'} running"  # ("re-queued: 0" read
            again = ("" if not rerun else f"; {was}: run again from the start" if room >= len(rerun) else  # as none)
                     f"; {was}: not rerun, --num_trials is reached (INTERRUPTED in the results)" if not room else
                     f"; {was}: {room} of them run{'s' if room == 1 else ''} again (--num_trials {cfg.num_trials}), the "
                     "rest stay INTERRUPTED in the results")
            study.console.print(f"Resuming {study.out}: {len(self.finished) - taken} of {cfg.num_trials} trials finished and kept"
                                + (f" (and {taken} taken over from --warm_start)" if taken else "") + again)
            cut = sorted(n for n, e in self.finished.items() if e.state == TrialState.PRUNED and not e.taken_from
                         and str(e.error or "").startswith(TIME_BUDGET_CUT))
            if cut:  # a resume with more time does not train them on (the robustness review: the best configuration of
                # the study stayed at step 3 of 50, without a word)
                study.console.print(f"Note: {numbered('trial', cut)} {'was' if len(cut) == 1 else 'were'} cut by the earlier "
                                    f"run's time budget (PRUNED) and {'is' if len(cut) == 1 else 'are'} kept as "
                                    f"{'it is' if len(cut) == 1 else 'they are'}: moopt train --config "
                                    f"{study.out}/trial_results/trial_{cut[0]}/config.yaml trains "
                                    f"{'it' if len(cut) == 1 else f'trial {cut[0]}'} to the end",
                                    markup=False, highlight=False)
            began = record.header.get("training_code")  # (None: a study from before the record, nothing to compare)
            if record.finished and began is not None and (changed := training_code_changes(began)):
                study.console.print(f"Note: since this study began, not the same {changed}: the trials trained from "
                                    "now on may differ slightly from the same configurations trained before",
                                    markup=False, highlight=False)
        self.n_started = sum(not e.taken_from for e in self.finished.values())  # those taken over cost nothing
        self.next_number = max([*self.finished, *self.ck.assigned, -1]) + 1
        for e in self.finished.values():
            self.durations += study.duration_sample(e)


def _outside_text(space, seeds: list[TrialConfig]) -> str:
    """What the console adds when some of a --warm_start study's best configurations lie outside this study's space
    (another range, value or fixed setting): each seeds the nearest configuration in it, which is trained."""
    moved = [c for c in seeds if config_key(space.decode(space.encode(c))) != config_key(c)]
    if not moved:
        return ""
    return (f". {len(moved)} of the {len(seeds)} configurations it seeds lie outside this search space: each is moved "
            "to the nearest configuration in it, which is trained (not the same configuration)")


def _shown(v: Any) -> str:
    """A journaled setting as a command line gives it: weights ``0.7,0.3``, no budget ``none``."""
    if isinstance(v, list):
        return ",".join(f"{x:g}" for x in v)
    if v is None or isinstance(v, (bool, str)):
        return "none" if v is None else str(v).lower() if isinstance(v, bool) else v
    return f"{v:g}"


def _now() -> str:
    return datetime.now().isoformat(timespec="milliseconds")


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return ",".join(v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def _fmt(v: Any, name: str = "") -> str:
    """A searched value on the console: 3 significant digits; target modules by their alias (``attention``), as the
    summary's best configuration names them."""
    if name == "target_modules":
        from moopt.config import normalize_targets, target_alias

        try:
            return target_alias(normalize_targets(v)) or str(v)
        except Exception:  # noqa: BLE001 - shown as it is
            return str(v)
    return f"{v:.3g}" if isinstance(v, float) else str(v)
