"""A study: NSGA-II proposes, the executor trains, the journal remembers, the report explains.

Order of events for each trial (what makes ``--resume`` after ``kill -9`` exact):
1. the engine assigns an individual a trial number and is checkpointed (engine.pkl);
2. ``trial_start`` is journaled, then the worker process starts;
3. on return, ``trial_end`` is journaled (fsynced), then the result is told to the engine.
A replay therefore knows every finished trial; trials started but not ended are re-queued under
the same number; the engine checkpoint says which individual each number belongs to.

With several slots, a slot that frees up while the rest of its generation still runs does not wait
for it: the engine adds individuals to the pending generation (``Engine.extend``, chosen with every
result told so far) and they are told with it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from moopt.config import TrialConfig
from moopt.errors import ConfigError
from moopt.journal import JOURNAL, Journal, replay
from moopt.records import TrialResult, TrialSpec
from moopt.search.engine import Engine
from moopt.search.objectives import Objectives
from moopt.search.pruner import RungPruner, rung_fractions
from moopt.search.space import SearchSpace
from moopt.study.lock import LOCK_FILE, StudyLock

ENGINE_FILE = "engine.pkl"
OUR_FILES = (JOURNAL, ENGINE_FILE, "best_config.yaml", "trials_summary.csv", "optimization_plot.png",
             "pareto_front.png", "search_space.yaml", "baseline.json", "study.json")
RESULT_FILES = ("param_importance.csv", "param_importance.png", "correlations.csv", "correlations.png",
                "learning_curves.png", "report.html")


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


def check_output_dir(cfg: StudyConfig) -> None:
    """Refuse to clobber an existing study unless --resume or --overwrite (writes nothing)."""
    out = Path(cfg.output_dir)
    StudyLock(out).check()  # a study running there: refused at once, whatever the flags
    holds_study = (out / JOURNAL).is_file()
    if holds_study and not (cfg.resume or cfg.overwrite):
        raise ConfigError(f"{out}: holds a study already; pass --resume to continue it or --overwrite to replace it")
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if cfg.resume and holds_study:
        header = replay(out).header
        mine = study_fingerprint(cfg)
        theirs = header.get("fingerprint", {})
        changed = [k for k in mine if theirs.get(k) != mine[k]]
        if changed:
            raise ConfigError(f"{out}: --resume needs the same study; these differ from the stored one: {changed}")


def prepare_output_dir(cfg: StudyConfig) -> None:
    check_output_dir(cfg)
    out = Path(cfg.output_dir)
    if cfg.overwrite and (out / JOURNAL).is_file():
        discard_study(out, remove_dir=False)


def discard_study(out: Path, remove_dir: bool) -> None:
    """Remove what a study writes (not the lock, which its owner holds); the folder too if we made it
    and nothing else is in it."""
    for name in (*OUR_FILES, *RESULT_FILES):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "trial_results", ignore_errors=True)
    if remove_dir and out.is_dir() and {p.name for p in out.iterdir()} <= {LOCK_FILE}:
        shutil.rmtree(out, ignore_errors=True)


class Stopped(Exception):
    """The study was stopped (SIGTERM, Ctrl-C) with trials still to run; what finished is written."""

    def __init__(self, why: str, finished: int = 0, total: int = 0, running: list[int] | None = None):
        super().__init__(why)
        self.finished, self.total, self.running = finished, total, running or []


def _on_sigterm_raise():
    """SIGTERM raises Stopped in the main thread (so the study can end its trials and write what
    finished); returns the handler it replaced, or None off the main thread."""
    def handler(signum, frame):
        raise Stopped("stopped by SIGTERM")

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def study_fingerprint(cfg: StudyConfig) -> dict[str, Any]:
    """What must not change across --resume (JSON-normalised, so it compares with the journal's)."""
    return json.loads(json.dumps({
        "objectives": list(cfg.objectives.names),
        "space": [(p.name, p.type, p.low, p.high, p.step, [list(v) if isinstance(v, tuple) else v for v in p.values]) for p in cfg.space.params],
        "fixed": cfg.space.fixed.to_dict(),
        "train_file": os.path.abspath(cfg.train_file),
        "validation_file": os.path.abspath(cfg.validation_file),
        "base_model": cfg.base_model,
        "seed": cfg.seed,
    }))


class Study:
    # a free slot takes an extra individual of the pending generation while the rest of it runs (False:
    # it waits for the generation's last trial, as before; benchmarks/bench_parallel_sim.py compares them)
    fill_free_slots = True

    def __init__(self, cfg: StudyConfig, console=None):
        from rich.console import Console

        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.console = console or Console(highlight=False, soft_wrap=True)  # a log line is never cut at 80 columns
        self.lock = threading.Lock()
        self.pruner = RungPruner(cfg.pruning_factor or 0, ideal=cfg.objectives.ideal())
        self.prune_reason: dict[int, str] = {}  # trial -> why its last rung stopped it
        self.progress_view = None

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
                self.prune_reason[number] = why
            return go

    def on_progress(self, number: int, event: dict) -> None:
        """A worker's phase / progress / heartbeat event (from an executor thread)."""
        with self.lock:
            if self.progress_view is not None:
                self.progress_view.event(number, event)

    def stall_policy(self):
        from moopt.study.watchdog import StallPolicy

        return StallPolicy(timeout_s=self.cfg.stall_timeout_s)

    # -- the main loop ---------------------------------------------------------------------------
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
        previous = _on_sigterm_raise()
        try:
            return self._run()
        except BaseException:
            if fresh and not self.any_trial_started:
                discard_study(self.out, remove_dir=not existed)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            lock.release()

    def _run(self) -> dict[str, Any]:
        from moopt.report.results import write_results
        from moopt.study.executor import LocalExecutor, wait_for_any
        from moopt.study.placement import DevicePlacer

        cfg = self.cfg
        prepare_output_dir(cfg)
        self.out.mkdir(parents=True, exist_ok=True)
        record = replay(self.out) if cfg.resume else None
        self.journal = Journal(self.out)
        if record is None or not record.header:
            from moopt.yamlio import write_yaml

            self.journal.append({"type": "study", "created": _now(), "fingerprint": study_fingerprint(cfg),
                                 "num_trials": cfg.num_trials, "objectives": list(cfg.objectives.names),
                                 "weights": list(cfg.objectives.weights), "base_model": cfg.base_model,
                                 "model_revision": cfg.model_revision, "memory_constraint_gb": cfg.memory_constraint_gb,
                                 "pruning_factor": cfg.pruning_factor})
            write_yaml(self.out / "search_space.yaml", space_to_yaml(cfg.space))
        for r in record.rungs if record else []:  # what finished trials showed at each rung
            if r["number"] in record.finished:
                self.pruner.record(r["rung"], r["number"], cfg.objectives.to_minimize(r["metrics"]), r.get("step"))
        for e in record.finished.values() if record else []:
            self.completed(e)

        deadline = time.time() + cfg.time_budget_hours * 3600 if cfg.time_budget_hours else None
        placer = DevicePlacer(cfg.parallel_trials)
        gate = None
        if cfg.memory_constraint_gb:
            from moopt.study.gate import MemoryGate

            gate = MemoryGate(cfg.model_path, device="cuda" if placer.on_gpu else "cpu", train_file=cfg.train_file,
                              kernels=self.kernel_path("cuda" if placer.on_gpu else "cpu"), constraint_gb=cfg.memory_constraint_gb)
        if cfg.executor == "ray":
            from moopt.study.ray_executor import RayExecutor

            executor = RayExecutor(on_progress=self.on_progress, on_rung=self.decide_rung, address=cfg.ray_address,
                                   stall=self.stall_policy())
        else:
            executor = LocalExecutor(on_progress=self.on_progress, on_rung=self.decide_rung, stall=self.stall_policy())
        engine_path = self.out / ENGINE_FILE

        # -- engine: fresh, or restored from its checkpoint --------------------------------------
        finished: dict[int, dict[str, Any]] = dict(record.finished) if record else {}
        if cfg.resume and engine_path.is_file():
            engine = Engine.load(engine_path)
            assigned: dict[int, int] = getattr(engine, "assigned", {})
        else:
            engine = Engine(cfg.space, len(cfg.objectives.names), cfg.num_trials, cfg.seed, cfg.parallel_trials,
                            warm_start=warm_start_configs(cfg.warm_start) if cfg.warm_start else None)
            assigned = {}
        engine.assigned = assigned  # trial number -> index in the pending generation
        queue: list[tuple[int, int]] = []  # (index in pending, trial number or -1 for new)
        if engine.pending is not None:
            for idx in range(len(engine.pending)):
                num = next((n for n, i in assigned.items() if i == idx), None)
                if num is not None and num in finished:
                    engine.tell_one(idx, *self.told_values(finished[num]))
                elif idx not in engine.results:
                    queue.append((idx, -1 if num is None else num))
        evaluated = {self.config_key(TrialConfig.from_dict(e["config"])): e for e in finished.values() if "config" in e}
        if record is not None and record.header:
            rerun = [n for n in record.running if n not in finished]
            self.console.print(f"Resuming {self.out}: {len(finished)} of {cfg.num_trials} trials finished and kept"
                               + (f"; re-queued (were running): {', '.join(map(str, rerun))}" if rerun else ""))

        if cfg.baseline and not (self.out / "baseline.json").is_file():
            self.run_baseline()

        n_started = len(finished)
        next_number = max([*finished, *assigned, -1]) + 1
        running: dict[int, dict[str, Any]] = {}
        stop_note = None
        durations: list[tuple[float, float, float]] = []  # (train tokens per epoch, tokens/s, overhead s)
        for e in finished.values():
            durations += self.duration_sample(e)

        try:
            with self.progress(finished.values(), deadline) as view:
                self.progress_view = view
                while True:
                    # fill free slots
                    while placer.free() > 0 and n_started < cfg.num_trials and stop_note is None:
                        if not queue:
                            if engine.pending is not None and not engine.generation_done:
                                # the rest of this generation runs: a free slot takes an extra individual
                                more = engine.extend(min(placer.free(), cfg.num_trials - n_started)) if self.fill_free_slots else []
                                if not more:
                                    break  # wait for a trial of this generation to end
                                queue = [(len(engine.pending) - len(more) + i, -1) for i in range(len(more))]
                                engine.save(engine_path)
                                continue
                            if engine.pending is not None:
                                engine.tell()
                                engine.assigned = {}
                                engine.save(engine_path)
                            X = engine.ask()
                            if not X:
                                stop_note = "the search space has no new configurations left to propose"
                                break
                            queue = [(i, -1) for i in range(len(X))]
                            engine.save(engine_path)
                        idx, number = queue.pop(0)
                        x = dict(engine.pending[idx].X)
                        tcfg = cfg.space.decode(x)
                        key = self.config_key(tcfg)
                        if key in evaluated:  # same configuration as a finished trial: reuse, no new trial
                            engine.tell_one(idx, *self.told_values(evaluated[key]))
                            continue
                        if deadline is not None and not self.fits_time(tcfg, durations, deadline):
                            stop_note = "time budget: the next trial could not finish before the deadline"
                            break
                        if gate is not None:  # --memory_constraint: never train what cannot fit
                            decision = gate.decide(tcfg)
                            self.journal.append({"type": "memory_gate", "number": number if number >= 0 else next_number,
                                                 **vars(decision)})
                            if decision.verdict == "infeasible":
                                if number < 0:
                                    number, next_number = next_number, next_number + 1
                                end = self.record_infeasible(number, tcfg, x, decision)
                                view.ended(end)
                                finished[number], evaluated[key] = end, end
                                engine.tell_one(idx, *self.told_values(end))
                                n_started += 1
                                continue
                        candidate = number if number >= 0 else next_number
                        slot = placer.place(candidate, self.estimate_gb(tcfg) if placer.on_gpu else None)
                        if slot is None:  # no GPU has room for it now: wait for a running trial to end
                            queue.insert(0, (idx, number))
                            break
                        if number < 0:
                            number, next_number = next_number, next_number + 1
                        engine.assigned[number] = idx
                        engine.save(engine_path)
                        running[number] = {"slot": slot, "idx": idx, "config": tcfg, "start": _now(), "t0": time.time(), "key": key}
                        self.start_trial(executor, number, tcfg, x, slot, deadline)
                        n_started += 1
                    if not running:
                        break
                    res = wait_for_any(executor, deadline=deadline, on_poll=view.tick)
                    info = running.pop(res.number)
                    placer.release(res.number)
                    end = self.end_trial(res, info)
                    view.ended(end)
                    if gate is not None:  # each measured peak calibrates the gate; an OOM is never repeated
                        gate.observe(info["config"], int((end.get("metrics") or {}).get("peak_memory_gb", 0) * 2**30),
                                     oom="out of memory" in str(end.get("error") or "").lower())
                    self.completed(end)
                    finished[res.number] = end
                    evaluated[info["key"]] = end
                    durations += self.duration_sample(end)
                    engine.tell_one(info["idx"], *self.told_values(end))
                    if engine.generation_done:
                        engine.tell()
                        engine.assigned = {}
                    engine.save(engine_path)
                    write_results(self.out, quiet=True)
        except (KeyboardInterrupt, Stopped) as e:
            executor.kill_all()  # their trial_start has no trial_end: --resume reruns them
            self.journal.close()
            if self.any_trial_started:
                write_results(self.out, quiet=True)
            raise Stopped(str(e) or "interrupted", finished=len(finished), total=cfg.num_trials,
                          running=sorted(running)) from None
        finally:
            self.progress_view = None
            executor.close()
        if stop_note:
            self.console.print(f"[yellow]Study stopped early:[/] {stop_note} ({len(finished)} of {cfg.num_trials} trials)")
        self.journal.close()
        return write_results(self.out)

    # -- per-trial steps -----------------------------------------------------------------------
    def kernel_path(self, device: str) -> str:
        if self.cfg.kernels != "auto":
            return self.cfg.kernels
        return "triton" if device == "cuda" else "torch"

    def record_infeasible(self, number: int, tcfg: TrialConfig, x: dict, decision) -> dict[str, Any]:
        """A configuration the memory gate rules out: journaled as INFEASIBLE, never trained."""
        params = {p.short: _plain(p.decode(x[p.name])) for p in self.cfg.space.params}
        now = _now()
        peak = decision.measured_gb if decision.measured_gb is not None else decision.predicted_gb
        self.journal.append({"type": "trial_start", "number": number, "datetime_start": now, "params": params,
                             "config": tcfg.to_dict(), "device": "none"})
        d = self.trial_dir(number)
        from moopt.yamlio import write_yaml

        write_yaml(d / "config.yaml", tcfg.to_dict())
        end = {"type": "trial_end", "number": number, "datetime_complete": _now(), "datetime_start": now,
               "duration_s": 0.0, "state": "INFEASIBLE", "metrics": {"peak_memory_gb": peak},
               "error": f"not trained: {decision.reason}", "steps": 0, "total_steps": 0, "train_tokens": 0,
               "eval_tokens": 0, "train_seconds": 0.0, "tokens_per_s": None, "backend": None, "config": tcfg.to_dict(),
               "epochs": tcfg.training.num_train_epochs}
        self.journal.append(end)
        self.console.print(f"Trial {number} [red]INFEASIBLE[/] (not trained): {decision.reason}")
        return end

    def estimate_gb(self, tcfg: TrialConfig, device: str = "cuda") -> float:
        """Analytic peak-memory estimate of a trial, GiB (moopt.memory.estimate), from the model's config only."""
        from moopt.memory.estimate import estimate_peak, load_model_config

        if not hasattr(self, "_model_config"):
            self._model_config = load_model_config(self.cfg.model_path)
        return estimate_peak(self._model_config, tcfg, device=device, kernels=self.kernel_path(device)).total_gib

    def start_trial(self, executor, number: int, tcfg: TrialConfig, x: dict, slot, deadline) -> None:
        cfg = self.cfg
        params = {p.short: _plain(p.decode(x[p.name])) for p in cfg.space.params}
        self.journal.append({"type": "trial_start", "number": number, "datetime_start": _now(),
                             "params": params, "config": tcfg.to_dict(), "device": slot.device})
        from moopt.yamlio import write_yaml

        d = self.trial_dir(number)
        shutil.rmtree(d, ignore_errors=True)  # a re-queued trial starts clean
        self.pruner.forget(number)
        write_yaml(d / "config.yaml", tcfg.to_dict())
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        self.console.print(f"Trial {number} started on {slot.device}: {shown or '(no parameter searched)'}")
        spec = TrialSpec(number=number, config=tcfg, base_model=cfg.model_path, train_file=os.path.abspath(cfg.train_file),
                         validation_file=os.path.abspath(cfg.validation_file), output_dir=str(d), seed=cfg.seed,
                         kernels=cfg.kernels, rung_fractions=rung_fractions(cfg.pruning_factor), deadline=deadline)
        self.any_trial_started = True
        executor.submit(spec, slot)

    def end_trial(self, res: TrialResult, info: dict) -> dict[str, Any]:
        cfg = self.cfg
        m = res.metrics
        if res.state == "COMPLETE" and cfg.memory_constraint_gb and m.get("peak_memory_gb", 0) > cfg.memory_constraint_gb:
            res.state = "INFEASIBLE"
            res.error = f"peak {m['peak_memory_gb']:.2f} GiB > --memory_constraint {cfg.memory_constraint_gb:g} GiB"
        if res.state == "PRUNED" and res.number in self.prune_reason and (res.error or "").startswith("pruned at step"):
            res.error = f"{res.error}; {self.prune_reason.pop(res.number)}"
        metrics_file = self.trial_dir(res.number) / "metrics.json"
        tokens_per_s = None
        if metrics_file.is_file():
            tokens_per_s = json.loads(metrics_file.read_text()).get("tokens_per_s")
        end = {"type": "trial_end", "number": res.number, "datetime_complete": _now(),
               "datetime_start": info["start"], "duration_s": time.time() - info["t0"], "state": res.state,
               "metrics": m, "error": res.error, "steps": res.steps, "total_steps": res.total_steps,
               "train_tokens": res.train_tokens, "eval_tokens": res.eval_tokens, "train_seconds": res.train_seconds,
               "tokens_per_s": tokens_per_s,
               "backend": res.backend, "backend_reason": res.backend_reason, "config": info["config"].to_dict(),
               "epochs": info["config"].training.num_train_epochs}
        self.journal.append(end)
        vals = "  ".join(f"{k}={m[k]:.4f}" for k in cfg.objectives.names if k in m)
        colour = {"COMPLETE": "green", "PRUNED": "yellow"}.get(res.state, "red")
        extra = f" ({res.error})" if res.error else ""
        self.console.print(f"Trial {res.number} [{colour}]{res.state}[/] in {end['duration_s']:.0f}s: {vals}{extra}")
        return end

    def told_values(self, end: dict[str, Any]) -> tuple[np.ndarray, float, np.ndarray]:
        """(F, G) for NSGA-II, and F for the engine's surrogate. Failures: G = 1 (infeasible, ranked
        behind every feasible trial). A pruned trial: NSGA-II gets its last rung's values; the
        surrogate their projection to the trial's end (RungPruner.projected)."""
        objs, m, c = self.cfg.objectives, end.get("metrics") or {}, self.cfg.memory_constraint_gb
        have = all(k in m for k in objs.names)
        F = objs.to_minimize(m) if have else np.full(len(objs.names), 1e9)
        if end["state"] in ("COMPLETE", "PRUNED") and have:
            G = (m.get("peak_memory_gb", 0.0) - c) if c else -1.0
        elif end["state"] == "INFEASIBLE" and c and "peak_memory_gb" in m:
            G = max(m["peak_memory_gb"] - c, 1e-3)
        else:
            G = 1.0
        by_rung = end["state"] == "PRUNED" and have and str(end.get("error") or "").startswith("pruned at step")
        return F, float(G), self.pruner.projected(end["number"], F) if by_rung else F

    def completed(self, end: dict[str, Any]) -> None:
        """A trial that ran to its end teaches the pruner how rung values turn into final ones."""
        m = end.get("metrics") or {}
        if end["state"] == "COMPLETE" and all(k in m for k in self.cfg.objectives.names):
            self.pruner.complete(end["number"], self.cfg.objectives.to_minimize(m))

    @staticmethod
    def config_key(cfg: TrialConfig) -> str:
        return json.dumps(cfg.to_dict(), sort_keys=True)

    @staticmethod
    def duration_sample(end: dict[str, Any]) -> list[tuple[float, float, float]]:
        tps, tokens, secs = end.get("tokens_per_s"), end.get("train_tokens"), end.get("train_seconds")
        if not tps or not tokens or not end.get("total_steps"):
            return []
        frac_done = end["steps"] / end["total_steps"]
        per_epoch = tokens / max(frac_done * end["epochs"], 1e-9)
        return [(per_epoch, tps, max(0.0, end["duration_s"] - secs))]

    @staticmethod
    def fits_time(tcfg: TrialConfig, durations, deadline: float) -> bool:
        """Predicted duration from measured tokens/s: can this trial end before the deadline?"""
        if not durations:
            return time.time() < deadline
        per_epoch = float(np.median([d[0] for d in durations]))
        tps = float(np.median([d[1] for d in durations]))
        overhead = float(np.median([d[2] for d in durations]))
        predicted = per_epoch * tcfg.training.num_train_epochs / tps + overhead
        return time.time() + predicted <= deadline

    def run_baseline(self) -> None:
        """Evaluate the base model (no training) so the report can say how much tuning helped."""
        from moopt.study.executor import LocalExecutor, wait_for_any
        from moopt.study.placement import plan_slots

        self.console.print("Evaluating the base model on the validation set ...")
        tcfg = self.cfg.space.default_in_space()
        tcfg = TrialConfig.from_dict({"training": {"num_train_epochs": 1e-9}}, base=tcfg)
        d = self.out / "trial_results" / "baseline"
        spec = TrialSpec(number=-1, config=tcfg, base_model=self.cfg.model_path, train_file=os.path.abspath(self.cfg.train_file),
                         validation_file=os.path.abspath(self.cfg.validation_file), output_dir=str(d), seed=self.cfg.seed,
                         kernels=self.cfg.kernels, save_adapter=False, baseline=True)
        from moopt.study.progress import ProgressBoard, ProgressView

        ex = LocalExecutor(on_progress=self.on_progress, stall=self.stall_policy())
        slot = plan_slots(1)[0]
        with ProgressView(self.console, ProgressBoard(), study_line=False) as view:
            self.progress_view = view
            ex.submit(spec, slot)
            res = wait_for_any(ex, on_poll=view.tick)
            self.progress_view = None
        from moopt.yamlio import write_json

        write_json(self.out / "baseline.json", {"state": res.state, "metrics": res.metrics, "error": res.error})
        if res.state == "COMPLETE":
            shown = "  ".join(f"{k}={v:.4f}" for k, v in res.metrics.items() if k.startswith("eval_"))
            self.console.print(f"Base model (no fine-tuning): {shown}")
        else:
            self.console.print(f"[red]Base model evaluation failed:[/] {res.error}")

    def progress(self, finished, deadline: float | None):
        """The live progress view (moopt.study.progress): live on a terminal, plain lines in a log."""
        from moopt.study.progress import ProgressBoard, ProgressView

        objective = self.cfg.objectives.names[0]
        board = ProgressBoard(total=self.cfg.num_trials, objective=objective, deadline=deadline,
                              minimize=self.cfg.objectives.directions()[0] == "minimize")
        for end in finished:
            board.ended(end)
        return ProgressView(self.console, board)


def warm_start_configs(output_dir: str, limit: int = 24) -> list[TrialConfig]:
    """An earlier study's best trials, best first: its Pareto front by weighted score, then the
    other COMPLETE trials by score."""
    from moopt.config import load_trial_config
    from moopt.report.table import load_study

    data = load_study(output_dir)
    t = data.table
    if not len(t) or "score" not in t:
        return []
    done = t[t.state == "COMPLETE"].sort_values(["pareto", "score"], ascending=[False, False])
    out = Path(output_dir) / "trial_results"
    return [load_trial_config(out / f"trial_{n}" / "config.yaml") for n in done.number[:limit]]


def space_to_yaml(space: SearchSpace) -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {}
    for p in space.params:
        section, key = p.name.split(".", 1)
        if p.type == "categorical":
            spec = {"type": p.type, "values": [list(v) if isinstance(v, tuple) else v for v in p.values]}
        else:
            spec = {"type": p.type, "min": p.low, "max": p.high} | ({"step": p.step} if p.type == "int" and p.step != 1 else {})
        out.setdefault(section, {})[key] = spec
    return out


def _now() -> str:
    return datetime.now().isoformat(timespec="milliseconds")


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return ",".join(v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
