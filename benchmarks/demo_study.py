"""The demo study (SmolLM2-135M on the bundled data, config/demo_search_space.yaml) with and without
pruning: what bench_pruning, bench_pruning_sim and bench_parallel_sim share.

- the trial table's surrogate (``Oracle``): a random forest over (encoded configuration, rung) ->
  (log eval_loss, logit eval_accuracy), fit on ``benchmarks/data/smollm2_demo_trials.csv`` (1,155 rows of
  53 real studies' trials, collected from bench_pruning's study folders with
  ``bench_pruning_sim.py --collect``); a trial's deviation from the forest's mean is a real trial's
  out-of-bag residuals at all four levels, one drawn per (configuration, study seed);
- ``SimExecutor``: stands in for the Study's executor, a trial's rungs and end from the oracle;
- ``study_record``: a finished study's figures (compute, fronts); ``summarize``: savings and hypervolume
  losses over the seeds, printed and written next to the CSV (.json, .png);
- ``PRUNING_WHATS``: the CSV rows (benchmarks/common.py's schema) of a study.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from common import ROOT, bootstrap_ci, finite, long, per_seed_text, read_rows, wide, write_rows

if TYPE_CHECKING:
    import pandas as pd

DATA = ROOT / "benchmarks" / "data" / "smollm2_demo_trials.csv"
SPACE = ROOT / "config" / "demo_search_space.yaml"
N_TRAIN, N_VAL, N_RUNG = 300, 60, 16  # the bundled data's rows and the rungs' subset (as the real studies)
RUNG_FRACTIONS = (1 / 8, 1 / 4, 1 / 2)  # eta = 2; level 3 = the trial's end
PARAMS = ("learning_rate", "batch_size", "num_train_epochs", "warmup_ratio", "weight_decay", "lr_scheduler_type",
          "r", "alpha", "dropout", "target_modules")
CALL_PARAMS = ("trial", "pruned_step", "total_steps", "reason", "stopper", "end_from")  # bench_prune_calls' per pruned trial
# a study's figures, one CSV row each (what: unit); hv_base: hypervolume of the COMPLETE front against the
# base model's values, hv_union: both studies' fronts normalised over their union, reference 1.1
PRUNING_WHATS = {"hv_base": "HV", "hv_union": "normalised HV", "hv_calls": "HV", "best_eval_loss": "loss",
                 "compute_tokens": "tokens", "train_tokens": "tokens", "eval_tokens": "tokens", "train_steps": "count",
                 "trial_seconds": "s", "n_pruned": "count", "n_complete": "count", "n_wrong_calls": "count"}


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


# -- the comparison ----------------------------------------------------------------------------------
def study_record(oracle: Oracle, finished: dict, seed: int, trials: int, label: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """The study's figures (a record of ``PRUNING_WHATS``), its COMPLETE trials' final objectives, and the ends its PRUNED trials would
    have reached (the oracle knows them: same configuration, same seed) with one row per such trial."""
    ends = list(finished.values())
    F = np.array([[e["metrics"]["eval_loss"], -e["metrics"]["eval_accuracy"]] for e in ends if e["state"] == "COMPLETE"])
    would = [oracle(_flat(e["config"]), 3, seed) for e in ends if e["state"] == "PRUNED"]
    W = np.array([[m["eval_loss"], -m["eval_accuracy"]] for m in would]).reshape(-1, 2)
    train_tok = float(sum(e["train_tokens"] for e in ends))
    eval_tok = float(sum(e["eval_tokens"] for e in ends))
    return ({"problem": "smollm2-135m surrogate", "provider": label, "device": "sim", "seed": seed, "n_trials": trials,
             "best_eval_loss": float(F[:, 0].min()), "compute_tokens": train_tok + eval_tok / 2, "train_tokens": train_tok,
             "eval_tokens": eval_tok, "train_steps": float(sum(e["steps"] for e in ends)), "trial_seconds": 0.0,
             "n_pruned": sum(e["state"] == "PRUNED" for e in ends), "n_complete": len(F)}, F, W)


def summarize(rows: list[dict], out_csv: Path, plot_fn, extra=None) -> dict:
    """Print and write (.json, .png) the savings and hypervolume losses over all seeds in ``rows`` (one
    record per study, as ``common.wide`` reads them); ``extra(rows)``, when given, prints and returns more
    figures for the JSON."""
    plot_fn(rows, out_csv.with_suffix(".png"))
    base = [r for r in rows if r["provider"] == "no_pruning"]
    pr = [r for r in rows if r["provider"] != "no_pruning"]

    def saved(key):
        total = sum(r[key] for r in base)
        return 100 * (1 - sum(r[key] for r in pr) / total) if total > 0 else float("nan")

    per_seed = [1 - p["compute_tokens"] / b["compute_tokens"] for p, b in zip(pr, base)]
    summary = {"seeds": len(base), "trials": int(base[0]["n_trials"]), "eta": pr[0]["provider"].removeprefix("eta_"),
               "compute_saved_pct": saved("compute_tokens"),
               "median_compute_saved_pct": 100 * float(np.median(per_seed)),
               "steps_saved_pct": saved("train_steps"), "trial_seconds_saved_pct": saved("trial_seconds")}
    for key in ("hv_base", "hv_union"):
        losses = [1 - p[key] / b[key] for p, b in zip(pr, base) if b[key] > 0]
        summary[f"median_{key}_loss_pct"] = 100 * float(np.median(losses)) if losses else float("nan")
        summary[f"mean_{key}_loss_pct"] = 100 * float(np.mean(losses)) if losses else float("nan")
        for stat in ("mean", "median"):  # bootstrap 95% interval over seeds
            summary[f"{stat}_{key}_loss_ci95_pct"] = bootstrap_ci(100 * np.array(losses), getattr(np, stat))
        # the typical study with pruning vs the typical one without (not paired by seed)
        P, B = np.array([p[key] for p in pr]), np.array([b[key] for b in base])
        summary[f"{key}_loss_of_medians_pct"] = 100 * (1 - np.median(P) / np.median(B))
        summary[f"{key}_loss_of_medians_ci95_pct"] = bootstrap_ci(
            np.arange(len(P)), lambda idx, axis, P=P, B=B: 100 * (1 - np.median(P[idx], axis=axis) / np.median(B[idx], axis=axis)))
        print(f"{key}: per-seed loss " + per_seed_text(losses, "{:+.1f}%"))
    print(f"\n{len(base)} seeds x {summary['trials']} trials, eta {summary['eta']}")
    print("compute saved by pruning, per seed: " + per_seed_text(per_seed, "{:.0f}%"))
    print(f"compute saved by pruning: {summary['compute_saved_pct']:.1f}% of training-token equivalents "
          f"(median per seed {summary['median_compute_saved_pct']:.1f}%), {summary['steps_saved_pct']:.1f}% of "
          "optimizer steps" + (f", {summary['trial_seconds_saved_pct']:.1f}% of trial seconds"
                               if np.isfinite(summary["trial_seconds_saved_pct"]) else ""))
    ci = {k: "[{:.1f}, {:.1f}]".format(*summary[f"{k}_ci95_pct"])
          for k in ("median_hv_base_loss", "mean_hv_base_loss", "hv_base_loss_of_medians")}
    print(f"hypervolume loss (vs base model): median per seed {summary['median_hv_base_loss_pct']:.1f}% "
          f"(95% CI {ci['median_hv_base_loss']}), mean {summary['mean_hv_base_loss_pct']:.1f}% ({ci['mean_hv_base_loss']}), "
          f"median study vs median study {summary['hv_base_loss_of_medians_pct']:.1f}% ({ci['hv_base_loss_of_medians']}); "
          f"union-normalised median {summary['median_hv_union_loss_pct']:.1f}%")
    if extra is not None:
        summary.update(extra(rows))
    out_csv.with_suffix(".json").write_text(json.dumps(finite(summary), indent=1))
    return summary


def write_studies(records: list[dict], path: Path) -> Path:
    """Studies' records (``study_record``'s, bench_pruning's) as rows of benchmarks/common.py's schema."""
    keys = {k: k for k in ("problem", "provider", "device", "seed", "n_trials")}
    return write_rows(long(records, PRUNING_WHATS, keys, params=("reused",)), path)


def read_studies(path: Path) -> list[dict]:
    """The records ``write_studies`` wrote, in their order."""
    return wide(read_rows(path))


def write_calls(rows: list[dict], path: Path) -> Path:
    """bench_prune_calls' per-trial records (study, CALL_PARAMS, final_*, dominated_by_*, hv_gain_pct) as rows of the schema."""
    whats = {k: ("pct" if k == "hv_gain_pct" else "bool" if k.startswith("dominated") else "minimised")
             for r in rows for k in r if k not in ("study", *CALL_PARAMS)}
    rows = [{**r, "provider": "moopt"} for r in rows]  # moopt's rung pruner made the calls
    return write_rows(long(rows, whats, {"problem": "study", "provider": "provider"}, params=CALL_PARAMS), path)


def read_calls(path: Path):
    """``write_calls``' rows back as one record per pruned trial (a DataFrame, columns as written)."""
    import pandas as pd

    return pd.DataFrame(wide(read_rows(path))).rename(columns={"problem": "study"}).drop(columns=["provider", "device"])
