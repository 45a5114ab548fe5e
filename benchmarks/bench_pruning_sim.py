"""Pruning on a surrogate of the demo study: the same comparison as bench_pruning.py, over many seeds.

bench_pruning.py runs the demo study (SmolLM2-135M, 12 trials) with and without pruning, ~16 min a
seed on 2 cores, so it gets ~13 seeds. Past the first few trials the two studies take different
paths through the space, and the hypervolume of a 12-trial study varies by ~8% from seed to seed, so
13 seeds cannot tell a 2% loss from a 4% one (bootstrap 95% interval of the mean: about +-2.4 points).

Here the trials are not trained: the surrogate of benchmarks/demo_study.py (``Oracle``, fit on the trials
real studies trained, ``benchmarks/data/smollm2_demo_trials.csv``) gives each configuration its metrics at
the three rungs (1/8, 1/4, 1/2 of its steps, on the rungs' 16 validation examples) and at its end (all 60).
Everything else is moopt's own: the ``Study`` loop, the engine (NSGA-II + its surrogate pre-selection),
the rung pruner, the journal, with a simulated executor in place of the worker processes. So a seed costs
~1.5 s, and the comparison runs over hundreds of seeds, in the same units as bench_pruning (compute in
training-token equivalents, hypervolume of the COMPLETE front against the base model).

    python benchmarks/bench_pruning_sim.py --seeds 200              # 12 trials (~5 min on 2 cores)
    python benchmarks/bench_pruning_sim.py --seeds 200 --trials 30
    python benchmarks/bench_pruning_sim.py --collect W1 W2 ...      # refresh the trial table from study folders
    python benchmarks/bench_pruning_sim.py --summarize [--out CSV]  # re-summarise (and re-plot) a CSV

Writes benchmarks/results/pruning_sim[_t<trials>]_cpu.csv (benchmarks/common.py's schema: a row per
seed, arm (provider no_pruning / eta_<eta>) and figure: hv_base, hv_union, hv_calls, compute_tokens, ...),
the summary as .json and the per-seed histograms as .png next to it. The rule's variants (rank rule
alone, the bound from 1/8, any length) and their figures: docs/PRUNING.md.

It is a model, not the real thing: compare its savings and its per-seed losses with bench_pruning's
real runs (the plot marks them under its histograms) before reading its hypervolume figures.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, ROOT, bootstrap_ci, hv, pyplot  # noqa: E402
from demo_study import (  # noqa: E402
    DATA,
    PARAMS,
    SPACE,
    Oracle,
    SimExecutor,
    collect,
    read_studies,
    study_record,
    summarize,
    write_studies,
)

# bench_pruning --real's runs marked under the histograms: 12 trials per study (run before the bound read
# only as-long trials, which the simulation finds makes no difference at 12 trials) and 30 (the current rule)
REAL_CSVS = [RESULTS / f for f in ("pruning_smollm2_cpu.csv", "pruning_smollm2_t30_cpu.csv")]


# -- a simulated study: moopt's Study with the simulated executor ------------------------------------
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



# -- the comparison ----------------------------------------------------------------------------------
def plot_sim(rows: list[dict], path: Path) -> None:
    """Histograms of compute saved and hypervolume lost per seed, the real runs' seeds (bench_pruning's
    CSV, when there, with as many trials per study) marked below them."""
    plt = pyplot()

    def per_seed(rs):
        get = {(r["seed"], r["provider"] == "no_pruning"): r for r in rs}
        seeds = sorted({r["seed"] for r in rs})
        return (np.array([100 * (1 - get[s, False]["compute_tokens"] / get[s, True]["compute_tokens"]) for s in seeds]),
                np.array([100 * (1 - get[s, False]["hv_base"] / get[s, True]["hv_base"]) for s in seeds]))

    saved, loss = per_seed(rows)
    n_sim = f"{len(saved)} simulated seeds, {rows[0]['n_trials']} trials each"
    trials = {r["n_trials"] for r in rows}
    same = [r for f in REAL_CSVS if f.is_file() for r in read_studies(f) if r["n_trials"] in trials]
    real = per_seed(same) if same else None
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--collect", nargs="+", metavar="DIR", help="rebuild the trial table from these study folders")
    ap.add_argument("--table", default=str(DATA), help="the trial table (default benchmarks/data/smollm2_demo_trials.csv)")
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--eta", type=float, default=2.0)
    ap.add_argument("--out", default=None, help="CSV (default benchmarks/results/pruning_sim[_t<trials>]_cpu.csv)")
    ap.add_argument("--append", action="store_true", help="add these seeds' rows to the CSV and summarise all")
    ap.add_argument("--summarize", action="store_true", help="only re-summarise (and re-plot) the existing CSV")
    a = ap.parse_args(argv)
    table_path = Path(a.table)
    import pandas as pd

    out_csv = Path(a.out or RESULTS / f"pruning_sim{f'_t{a.trials}' if a.trials != 12 else ''}_cpu.csv")
    if a.summarize:
        if not out_csv.is_file():
            print(f"error: {out_csv}: no results to summarise (run the benchmark first)", file=sys.stderr)
            return 2
        summarize(read_studies(out_csv), out_csv, plot_fn=plot_sim, extra=summarize_calls)
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
    rows, t0 = [], time.time()
    with tempfile.TemporaryDirectory(prefix="bench_pruning_sim_") as tmp:
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            got = {}
            for label, eta in (("no_pruning", None), (f"eta_{a.eta:g}", a.eta)):
                got[label] = study_record(oracle, run_sim_study(oracle, Path(tmp) / label, seed, a.trials, eta), seed,
                                          a.trials, label)
            allF = np.vstack([F for _, F, _ in got.values()])
            lo, hi = allF.min(axis=0), allF.max(axis=0)
            span = np.where(hi > lo, hi - lo, 1.0)
            for rec, F, W in got.values():
                rec["hv_base"], rec["hv_union"] = hv(F, ref), hv((F - lo) / span, np.full(2, 1.1))
                # the front had the pruned trials run on (the same path): what the calls themselves cost
                rec["hv_calls"] = hv(np.vstack([F, W]), ref)
                rec["n_wrong_calls"] = sum(hv(np.vstack([F, w[None]]), ref) > rec["hv_base"] * (1 + 1e-9) for w in W)
                rows.append(rec)
            if (seed - a.first_seed + 1) % 20 == 0:
                print(f"{seed - a.first_seed + 1}/{a.seeds} seeds, {time.time() - t0:.0f} s", flush=True)
    if a.append and out_csv.is_file():  # add these seeds to an earlier run's
        rows = [r for r in read_studies(out_csv) if r["seed"] not in {r["seed"] for r in rows}] + rows
    write_studies(rows, out_csv)
    base = [r for r in rows if r["provider"] == "no_pruning"]
    hvs = np.array([r["hv_base"] for r in base])
    print(f"simulated studies without pruning: hypervolume median {np.median(hvs):.3f}, spread (std) {hvs.std():.3f}; "
          f"best eval_loss median {np.median([r['best_eval_loss'] for r in base]):.3f}")
    summarize(rows, out_csv, plot_fn=plot_sim, extra=summarize_calls)
    print(f"{time.time() - t0:.0f} s; wrote {out_csv} (+ .png, .json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
