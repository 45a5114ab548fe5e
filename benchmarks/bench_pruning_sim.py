"""Pruning on a surrogate of the demo study: the same comparison as bench_pruning.py, over many seeds.

bench_pruning.py runs the demo study (SmolLM2-135M, 12 trials) with and without pruning, ~16 min a
seed on 2 cores, so it gets ~13 seeds. Past the first few trials the two studies take different
paths through the space, and the hypervolume of a 12-trial study varies by ~8% from seed to seed, so
13 seeds cannot tell a 2% loss from a 4% one (bootstrap 95% interval of the mean: about +-2.4 points).

Here the trials are not trained: a tabular surrogate of the demo study, fit on the trials that real
studies trained (``benchmarks/data/smollm2_demo_trials.csv``, collected from bench_pruning's study
folders with ``--collect``), gives each configuration its metrics at the three rungs (1/8, 1/4, 1/2 of
its steps, on the rungs' 16 validation examples) and at its end (all 60). Everything else is moopt's
own: the ``Study`` loop, the engine (NSGA-II + its surrogate pre-selection), the rung pruner, the
journal, with a simulated executor in place of the worker processes. So a seed costs ~2 s, and the
comparison runs over hundreds of seeds, in the same units as bench_pruning (compute in training-token
equivalents, hypervolume of the COMPLETE front against the base model).

The surrogate: one random forest over (encoded configuration, rung) -> (log eval_loss, logit
eval_accuracy); a trial's deviation from the forest's mean is a real trial's out-of-bag residuals at
all four levels, one drawn per (configuration, study seed): luck carries over from the rungs to the end
only as much as it did in real trials, and the same configuration in the same seed gives the same
values in both studies, as real CPU trials do (see Oracle).

The committed table holds 1,155 rows of 53 real studies (362 trial ends, 779 rung evaluations, the base
model's values): the folders of bench_pruning's runs behind benchmarks/results/pruning_smollm2_*_cpu.*,
named there ``pruning_bound`` (the dominance bound, seeds 0-13 as far as run then), ``pruning_real``
(surrogate projection; and the no-pruning studies of seeds 0-9), ``pruning_min16_eta`` (16-example
rungs, no projection) and ``pruning_real_old_eta`` (32-example rungs: only their trial ends are used).

    python benchmarks/bench_pruning_sim.py --collect W1 W2 ...   # refresh the trial table
    python benchmarks/bench_pruning_sim.py --seeds 400          # the comparison (~10 min)
    python benchmarks/bench_pruning_sim.py --seeds 200 --rank-only   # without the dominance bound
    python benchmarks/bench_pruning_sim.py --seeds 200 --bound-any-length   # the bound before BOUND_SAME_BUDGET

It is a model, not the real thing: compare its savings and its per-seed losses with bench_pruning's
real runs (the plot marks them under its histograms) before reading its hypervolume figures.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import queue
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
DATA = ROOT / "benchmarks" / "data" / "smollm2_demo_trials.csv"
SPACE = ROOT / "config" / "demo_search_space.yaml"
# bench_pruning --real's runs marked under the histograms: 12 trials per study (run before BOUND_SAME_BUDGET,
# which the simulation finds makes no difference at 12 trials) and 30 (--trials 30 --out ..._t30_cpu.csv, the current rule)
REAL_CSVS = [ROOT / "benchmarks" / "results" / f for f in ("pruning_smollm2_cpu.csv", "pruning_smollm2_t30_cpu.csv")]
N_TRAIN, N_VAL, N_RUNG = 300, 60, 16  # the bundled data's rows and the rungs' subset (as the real studies)
RUNG_FRACTIONS = (1 / 8, 1 / 4, 1 / 2)  # eta = 2; level 3 = the trial's end
PARAMS = ("learning_rate", "batch_size", "num_train_epochs", "warmup_ratio", "weight_decay", "lr_scheduler_type",
          "r", "alpha", "dropout", "target_modules")


# -- the trial table ---------------------------------------------------------------------------------
def collect(dirs: list[str]) -> pd.DataFrame:
    """One row per (trial, level) from studies' journals: each rung evaluation (levels 0-2, only from
    studies whose rungs read 16 examples) and each COMPLETE trial's end (level 3)."""
    import pandas as pd

    from moopt.journal import replay

    rows, seen = [], set()
    for d in sorted({str(Path(p).resolve()) for w in dirs for p in _study_dirs(Path(w))}):
        if d in seen:
            continue
        seen.add(d)
        rec = replay(d)
        seed = rec.header.get("fingerprint", {}).get("seed")
        errors = " ".join(str(e.get("error") or "") for e in rec.ends.values())
        rung_ok = f"rungs' {N_RUNG} of {N_VAL}" in errors
        for n, end in rec.finished.items():
            base = {"study": Path(d).parent.name + "/" + Path(d).name, "seed": seed, "number": n,
                    **_flat(end["config"]), "total_steps": end.get("total_steps")}
            if rung_ok:
                for r in rec.rungs:
                    if r["number"] == n:
                        rows.append({**base, "level": r["rung"], "step": r["step"], "eval_loss": r["metrics"]["eval_loss"],
                                     "eval_accuracy": r["metrics"]["eval_accuracy"]})
            if end["state"] == "COMPLETE":
                rows.append({**base, "level": 3, "step": end["steps"], "eval_loss": end["metrics"]["eval_loss"],
                             "eval_accuracy": end["metrics"]["eval_accuracy"], "train_tokens": end["train_tokens"]})
        base_file = Path(d) / "baseline.json"
        if base_file.is_file():
            b = json.loads(base_file.read_text())
            if b.get("state") == "COMPLETE":
                rows.append({"study": Path(d).parent.name + "/" + Path(d).name, "seed": seed, "number": -1, "level": -1,
                             "eval_loss": b["metrics"]["eval_loss"], "eval_accuracy": b["metrics"]["eval_accuracy"]})
    return pd.DataFrame(rows)


def _study_dirs(w: Path):
    if (w / "journal.jsonl").is_file():
        yield w
    else:
        for p in sorted(w.iterdir()):
            if (p / "journal.jsonl").is_file():
                yield p


def _flat(config: dict) -> dict:
    t, lo = config["training"], config["lora"]
    return {"learning_rate": t["learning_rate"], "batch_size": t["batch_size"], "num_train_epochs": t["num_train_epochs"],
            "warmup_ratio": t["warmup_ratio"], "weight_decay": t["weight_decay"],
            "lr_scheduler_type": t["lr_scheduler_type"], "r": lo["r"], "alpha": lo["alpha"], "dropout": lo["dropout"],
            "target_modules": ",".join(lo["target_modules"])}


def features(df) -> np.ndarray:
    """Encoded configurations (+ the level as log2 of its fraction of the steps)."""
    frac = np.array([RUNG_FRACTIONS[int(v)] if v < 3 else 1.0 for v in df["level"]])
    return np.column_stack([
        np.log10(df["learning_rate"].astype(float)), np.log2(df["batch_size"].astype(float)),
        df["num_train_epochs"].astype(float), df["warmup_ratio"].astype(float), df["weight_decay"].astype(float),
        (df["lr_scheduler_type"] == "cosine").astype(float), np.log2(df["r"].astype(float)),
        np.log2(df["alpha"].astype(float)), df["dropout"].astype(float),
        (df["target_modules"].str.count(",") > 1).astype(float), np.log2(frac),
    ])


def _targets(loss, acc) -> np.ndarray:
    acc = np.clip(np.asarray(acc, dtype=float), 1e-3, 1 - 1e-3)
    return np.column_stack([np.log(np.asarray(loss, dtype=float)), np.log(acc / (1 - acc))])


class Oracle:
    """(configuration, level, study seed) -> (eval_loss, eval_accuracy), from the trial table.

    Mean: the forest's prediction. Deviation: the out-of-bag residuals, at all four levels, of one real
    trial drawn per (configuration, study seed), so a run's luck carries over from rung to end exactly as
    much as it did in the real trials (out-of-bag residual correlation rung -> end: 0.08-0.28 for the loss,
    0.19-0.50 for the accuracy; loss -> accuracy at one level: about -0.85). The pool is the trials that
    reached their end in studies with rungs (they have all four levels), residuals centred per level
    (such survivors were luckier than average at their rungs). A table without such trials: independent
    normal deviations per level, the residuals' robust spread."""

    def __init__(self, table, seed: int = 0):
        from sklearn.ensemble import RandomForestRegressor

        t = table[table.level >= 0]
        X, Y = features(t), _targets(t.eval_loss, t.eval_accuracy)
        self.forest = RandomForestRegressor(n_estimators=300, min_samples_leaf=2, max_features=0.7, oob_score=True,
                                            random_state=seed, n_jobs=1).fit(X, Y)
        res = Y - self.forest.oob_prediction_
        lv = t.level.to_numpy()
        # residual spread per level (robust: 1.4826 * MAD), per target
        self.sigma = {int(k): 1.4826 * np.median(np.abs(res[lv == k] - np.median(res[lv == k], axis=0)), axis=0)
                      for k in np.unique(lv)}
        by_trial: dict = {}
        for (study, number, level), r in zip(t[["study", "number", "level"]].itertuples(index=False, name=None), res):
            by_trial.setdefault((study, number), {})[int(level)] = r
        pool = [np.array([v[k] for k in range(4)]) for v in by_trial.values() if len(v) == 4]
        self.pool = np.array(pool) - np.mean(pool, axis=0) if pool else None  # (trials, level, target)
        self.base = table[table.level == -1][["eval_loss", "eval_accuracy"]].median().to_dict()
        fin = table[(table.level == 3) & table.train_tokens.notna()]
        self.tokens_per_epoch = float(np.median(fin.train_tokens / fin.num_train_epochs))
        self.cache: dict = {}

    def __call__(self, flat: dict, level: int, seed: int) -> dict[str, float]:
        key = (json.dumps(flat, sort_keys=True), seed)
        if key not in self.cache:  # all four levels of this run at once: one forest prediction
            import pandas as pd

            mu = self.forest.predict(features(pd.DataFrame([{**flat, "level": k} for k in range(4)])))
            h = hashlib.sha256(json.dumps([flat, seed], sort_keys=True).encode()).digest()
            run_seed = int.from_bytes(h[:8], "little")
            if self.pool is not None:
                dev = self.pool[np.random.default_rng(run_seed).integers(len(self.pool))]
            else:
                spread = [self.sigma.get(k, self.sigma[max(self.sigma)]) for k in range(4)]  # levels the table lacks: the end's
                dev = np.array([np.random.default_rng([run_seed, k]).standard_normal(2) * spread[k] for k in range(4)])
            y = mu + dev
            self.cache[key] = [{"eval_loss": float(np.exp(a)), "eval_accuracy": float(1 / (1 + np.exp(-b)))} for a, b in y]
        return self.cache[key][level]


# -- a simulated executor: the Study's loop, engine and pruner run as in a real study ----------------
def trial_plan(spec) -> tuple[dict, int, list[tuple[int, int, int]]]:
    """A simulated trial's flat configuration, its optimizer steps, and its rungs as (step, rung index,
    the oracle's level): the table knows the rungs at RUNG_FRACTIONS (eta = 2's); other rungs read the
    nearest one."""
    from moopt.train.data import n_micro_batches
    from moopt.train.recipe import rung_steps

    tc = spec.config.training
    total = n_micro_batches(N_TRAIN, tc.batch_size, tc.num_train_epochs)
    rungs = [(step, k, int(np.argmin([abs(math.log(spec.rung_fractions[k] / f)) for f in RUNG_FRACTIONS])))
             for step, k in sorted(rung_steps(total, spec.rung_fractions).items())]
    return _flat(spec.config.to_dict()), total, rungs


class SimExecutor:
    """Stands in for moopt.study.executor.LocalExecutor: a trial's rungs and end come from the oracle."""

    oracle: Oracle = None
    seed: int = 0

    def __init__(self, on_progress=None, on_rung=None, **_):
        self.on_rung = on_rung
        self.results: queue.Queue = queue.Queue()

    def submit(self, spec, slot) -> None:
        from moopt.records import TrialResult

        tc = spec.config.training
        flat, total, rungs = trial_plan(spec)
        epoch_tokens, tok_per_ex = self.oracle.tokens_per_epoch, self.oracle.tokens_per_epoch / N_TRAIN
        res = TrialResult(number=spec.number, state="COMPLETE", total_steps=total, backend="sim")
        for step, k, level in rungs:
            m = self.oracle(flat, level, self.seed)
            res.eval_tokens += round(N_RUNG * tok_per_ex)
            if self.on_rung is not None and not self.on_rung(spec.number, step, m, k):
                res.state, res.metrics, res.steps = "PRUNED", m, step
                res.error = f"pruned at step {step} (metrics on the rungs' {N_RUNG} of {N_VAL} validation examples)"
                break
        if res.state == "COMPLETE":
            res.metrics, res.steps = self.oracle(flat, 3, self.seed), total
            res.eval_tokens += round(N_VAL * tok_per_ex)
        res.train_tokens = round(epoch_tokens * tc.num_train_epochs * res.steps / total)
        self.results.put(res)

    def next_result(self, timeout=None):
        try:
            return self.results.get(timeout=timeout)
        except queue.Empty:
            return None

    def running(self) -> int:
        return self.results.qsize()

    def close(self) -> None:
        pass

    def kill_all(self) -> None:
        pass


def run_sim_study(oracle: Oracle, out: Path, seed: int, trials: int, eta: float | None) -> dict:
    """One study through moopt's Study with the simulated executor; its finished trials' end events."""
    from rich.console import Console

    from moopt.journal import replay
    from moopt.search.objectives import parse_objectives
    from moopt.search.space import load_space
    from moopt.study.scheduler import Study, StudyConfig

    cfg = StudyConfig(base_model="sim", model_path="sim", train_file=str(ROOT / "data" / "train.jsonl"),
                      validation_file=str(ROOT / "data" / "val.jsonl"), output_dir=str(out), num_trials=trials,
                      objectives=parse_objectives("multi:eval_loss,eval_accuracy", None), space=load_space(SPACE),
                      seed=seed, pruning_factor=eta, overwrite=True, baseline=False)
    SimExecutor.oracle, SimExecutor.seed = oracle, seed
    Study(cfg, console=Console(file=io.StringIO()), executor=SimExecutor, write_results=lambda *a, **k: {}).run()
    return replay(out).finished


@contextlib.contextmanager
def _patched(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


# -- the comparison ----------------------------------------------------------------------------------
def study_row(oracle: Oracle, finished: dict, seed: int, trials: int, label: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """The study's CSV row, its COMPLETE trials' final objectives, and the ends its PRUNED trials would
    have reached (the oracle knows them: same configuration, same seed) with one row per such trial."""
    ends = list(finished.values())
    F = np.array([[e["metrics"]["eval_loss"], -e["metrics"]["eval_accuracy"]] for e in ends if e["state"] == "COMPLETE"])
    would = [oracle(_flat(e["config"]), 3, seed) for e in ends if e["state"] == "PRUNED"]
    W = np.array([[m["eval_loss"], -m["eval_accuracy"]] for m in would]).reshape(-1, 2)
    train_tok = float(sum(e["train_tokens"] for e in ends))
    eval_tok = float(sum(e["eval_tokens"] for e in ends))
    return ({"what": "pruning_sim", "seed": seed, "trials": trials, "provider": label, "device": "sim", "model": "smollm2-135m surrogate",
             "best_eval_loss": float(F[:, 0].min()), "compute_tokens": train_tok + eval_tok / 2, "train_tokens": train_tok,
             "eval_tokens": eval_tok, "train_steps": float(sum(e["steps"] for e in ends)), "trial_seconds": 0.0,
             "n_pruned": sum(e["state"] == "PRUNED" for e in ends), "n_complete": len(F)}, F, W)


def plot_sim(rows: list[dict], path: Path) -> None:
    """Histograms of compute saved and hypervolume lost per seed, the real runs' seeds (bench_pruning's
    CSV, when there, with as many trials per study) marked below them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def per_seed(rs):
        get = {(r["seed"], r["provider"] == "no_pruning"): r for r in rs}
        seeds = sorted({r["seed"] for r in rs})
        return (np.array([100 * (1 - get[s, False]["compute_tokens"] / get[s, True]["compute_tokens"]) for s in seeds]),
                np.array([100 * (1 - get[s, False]["hv_base"] / get[s, True]["hv_base"]) for s in seeds]))

    saved, loss = per_seed(rows)
    n_sim = f"{len(saved)} simulated seeds, {rows[0]['trials']} trials each"
    real = None
    if any(f.is_file() for f in REAL_CSVS):
        import pandas as pd

        same = pd.concat([pd.read_csv(f) for f in REAL_CSVS if f.is_file()])
        same = same[same.trials.isin({r["trials"] for r in rows})]
        real = per_seed(same.to_dict("records")) if len(same) else None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    lo, hi = np.percentile(loss, [2, 98])
    clip = (min(lo, -2.0) - 1, max(hi, 4.0) + 1)
    for ax, vals, target, rng, title, k in (
            (axes[0], saved, 40, (0, 100), f"compute saved per seed, % ({n_sim})", 0),
            (axes[1], np.clip(loss, *clip), 2, clip, ("hypervolume lost per seed, % (vs base model; tails clipped "
             f"to [{clip[0]:.0f}, {clip[1]:.0f}])"), 1)):
        ax.hist(vals, bins=40, range=rng, color="tab:green" if k else "tab:blue", alpha=0.8)
        ax.axvline(target, color="k", ls="--", lw=0.8, label=f"{target}% target")
        raw = loss if k else saved
        ax.axvline(np.median(raw), color="tab:orange", lw=1.2, label=f"median {np.median(raw):.1f}%")
        if k:
            ax.axvline(np.clip(np.mean(raw), *clip), color="tab:red", lw=1.2, label=f"mean {np.mean(raw):.1f}%")
        if real is not None:
            ax.plot(np.clip(real[k], *rng), np.full(len(real[k]), -0.6), "|", color="k", ms=10,
                    label=f"real runs ({len(real[k])} seeds)")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("seeds")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def summarize_calls(rows: list[dict]) -> dict:
    """Split each seed's hypervolume loss in two: the pruning calls' own cost (the front the pruned study
    would have had, had its pruned trials run to their ends on the same path: hv_calls) and the rest,
    where the two searches went after they diverged. The first is the systematic part and has little
    seed-to-seed noise; the second is mostly noise around ~0. Printed, and returned for the JSON."""
    from bench_pruning import bootstrap_ci

    get = {(r["seed"], r["provider"] == "no_pruning"): r for r in rows}
    seeds = sorted(s for s, base in get if base and (s, False) in get)
    pr = [get[s, False] for s in seeds]
    if not pr or "hv_calls" not in pr[0] or not np.isfinite(float(pr[0]["hv_calls"])):
        return {}  # a CSV written before the split
    B = np.array([get[s, True]["hv_base"] for s in seeds])
    with_calls = np.array([p["hv_calls"] for p in pr])
    calls = 100 * (with_calls - np.array([p["hv_base"] for p in pr])) / B
    path = 100 * (1 - with_calls / B)
    out = {"mean_loss_from_calls_pct": float(calls.mean()), "mean_loss_from_calls_ci95_pct": bootstrap_ci(calls, np.mean),
           "mean_loss_from_path_pct": float(path.mean()), "mean_loss_from_path_ci95_pct": bootstrap_ci(path, np.mean),
           "pruned_trials": sum(int(p["n_pruned"]) for p in pr), "wrong_calls": sum(int(p["n_wrong_calls"]) for p in pr)}
    print("of the mean loss: {:.1f}% ([{:.1f}, {:.1f}]) from the pruning calls (their trials' ends would have added it), "
          "{:.1f}% ([{:.1f}, {:.1f}]) from where the searches went after they diverged; {} of {} pruned trials would have "
          "added hypervolume".format(calls.mean(), *out["mean_loss_from_calls_ci95_pct"], path.mean(),
                                     *out["mean_loss_from_path_ci95_pct"], out["wrong_calls"], out["pruned_trials"]))
    return out


def main(argv: list[str] | None = None) -> int:
    from bench_pruning import hv, summarize

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collect", nargs="+", metavar="DIR", help="rebuild the trial table from these study folders")
    ap.add_argument("--table", default=str(DATA), help="the trial table (default benchmarks/data/smollm2_demo_trials.csv)")
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--eta", type=float, default=2.0)
    ap.add_argument("--rank-only", action="store_true", help="the rank rule alone (no dominance bound), as before it")
    ap.add_argument("--bound-from", type=float, default=None, metavar="F",
                    help="the bound acts at rungs at >= F of the steps (default moopt.search.pruner.BOUND_MIN_FRACTION; "
                         "0.1: from the first rung, as before it)")
    ap.add_argument("--bound-min-completed", type=int, default=None, metavar="K",
                    help="the bound needs >= K completed trials with values at the rung (default "
                         "moopt.search.pruner.BOUND_MIN_COMPLETED)")
    ap.add_argument("--bound-any-length", action="store_true",
                    help="the bound reads every completed trial's curve, also shorter ones (as before "
                         "moopt.search.pruner.BOUND_SAME_BUDGET)")
    ap.add_argument("--out", default=None, help="CSV (default benchmarks/results/pruning_sim[_t<trials>][_<variant>]_cpu.csv)")
    ap.add_argument("--append", action="store_true", help="add these seeds' rows to the CSV and summarise all")
    ap.add_argument("--summarize", action="store_true", help="only re-summarise (and re-plot) the existing CSV")
    a = ap.parse_args(argv)
    table_path = Path(a.table)
    import pandas as pd

    if a.bound_min_completed is not None and a.bound_min_completed < 1:
        ap.error(f"--bound-min-completed {a.bound_min_completed}: must be >= 1")
    # The default name carries the variant, so a variant never overwrites the current rule's results.
    variant = ((f"_t{a.trials}" if a.trials != 12 else "") + ("_rank_only" if a.rank_only else "")
               + (f"_bound_min{a.bound_min_completed}" if a.bound_min_completed is not None else "")
               + (f"_bound_from_{a.bound_from:g}".replace(".", "_") if a.bound_from is not None else "")
               + ("_bound_any_length" if a.bound_any_length else ""))
    a.out = a.out or str(ROOT / "benchmarks" / "results" / f"pruning_sim{variant}_cpu.csv")

    if a.summarize:
        if not Path(a.out).is_file():
            print(f"error: {a.out}: no results to summarise (run the benchmark first)", file=sys.stderr)
            return 2
        summarize(pd.read_csv(a.out).to_dict("records"), Path(a.out), plot_fn=plot_sim, extra=summarize_calls)
        return 0
    if a.collect:
        missing = [d for d in a.collect if not Path(d).is_dir()]
        if missing:
            print(f"error: {missing[0]}: no such folder", file=sys.stderr)
            return 2
        table = collect(a.collect)
        if table.empty:
            print(f"error: {a.collect[0]}: no finished trials in these folders' journals", file=sys.stderr)
            return 2
        table_path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(table_path, index=False)
        print(f"wrote {table_path}: {len(table)} rows from {table.study.nunique()} studies "
              f"({(table.level == 3).sum()} trial ends, {table.level.between(0, 2).sum()} rung evaluations)")
        return 0
    if not table_path.is_file():
        print(f"error: {table_path}: no trial table (build it with --collect)", file=sys.stderr)
        return 2
    table = pd.read_csv(table_path)
    missing = sorted({"study", "number", "level", "eval_loss", "eval_accuracy", "train_tokens", *PARAMS} - set(table.columns))
    if missing or not (table.level == 3).any():
        print(f"error: {table_path}: not a trial table (missing columns {missing} or no trial ends); build it with --collect",
              file=sys.stderr)
        return 2
    if a.seeds < 1 or a.trials < 1:
        print("error: --seeds and --trials must be >= 1", file=sys.stderr)
        return 2
    oracle = Oracle(table)
    ref = np.array([oracle.base["eval_loss"], -oracle.base["eval_accuracy"]])
    print(f"surrogate: out-of-bag R^2 {oracle.forest.oob_score_:.3f}; residual spread (log loss, logit accuracy) at "
          "the end " + "/".join(f"{v:.3f}" for v in oracle.sigma[3]) + "; deviations drawn from "
          + (f"{len(oracle.pool)} real trials' residual curves" if oracle.pool is not None else "independent normals"))
    import moopt.search.pruner

    rows, t0 = [], time.time()
    # --rank-only: never enough completed trials for the bound, so it never fires
    with tempfile.TemporaryDirectory(prefix="bench_pruning_sim_") as tmp, \
            _patched(moopt.search.pruner, "BOUND_MIN_COMPLETED", 10**9 if a.rank_only else moopt.search.pruner.BOUND_MIN_COMPLETED
                     if a.bound_min_completed is None else a.bound_min_completed), \
            _patched(moopt.search.pruner, "BOUND_MIN_FRACTION", moopt.search.pruner.BOUND_MIN_FRACTION if a.bound_from is None else a.bound_from), \
            _patched(moopt.search.pruner, "BOUND_SAME_BUDGET", moopt.search.pruner.BOUND_SAME_BUDGET and not a.bound_any_length):
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            got = {}
            for label, eta in (("no_pruning", None), (f"eta_{a.eta:g}", a.eta)):
                got[label] = study_row(oracle, run_sim_study(oracle, Path(tmp) / label, seed, a.trials, eta), seed, a.trials, label)
            allF = np.vstack([F for _, F, _ in got.values()])
            lo, hi = allF.min(axis=0), allF.max(axis=0)
            span = np.where(hi > lo, hi - lo, 1.0)
            for row, F, W in got.values():
                row["hv_base"], row["hv_union"] = hv(F, ref), hv((F - lo) / span, np.full(2, 1.1))
                # the front had the pruned trials run on (the same path): what the calls themselves cost
                row["hv_calls"] = hv(np.vstack([F, W]), ref)
                row["n_wrong_calls"] = sum(hv(np.vstack([F, w[None]]), ref) > row["hv_base"] * (1 + 1e-9) for w in W)
                rows.append(row)
            if (seed - a.first_seed + 1) % 20 == 0:
                print(f"{seed - a.first_seed + 1}/{a.seeds} seeds, {time.time() - t0:.0f} s", flush=True)
    out_csv = Path(a.out)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    if a.append and out_csv.is_file():  # add these seeds to an earlier run's
        old = pd.read_csv(out_csv)
        rows = old[~old.seed.isin({r["seed"] for r in rows})].to_dict("records") + rows
    pd.DataFrame(rows).to_csv(out_csv, index=False)
    base = [r for r in rows if r["provider"] == "no_pruning"]
    hvs = np.array([r["hv_base"] for r in base])
    print(f"simulated studies without pruning: hypervolume median {np.median(hvs):.3f}, spread (std) {hvs.std():.3f}; "
          f"best eval_loss median {np.median([r['best_eval_loss'] for r in base]):.3f}")
    summarize(rows, out_csv, plot_fn=plot_sim, extra=summarize_calls)
    print(f"{time.time() - t0:.0f} s; wrote {out_csv} (+ .png, .json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
