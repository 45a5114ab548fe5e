"""The guide's "coarse search -> refined search" against one straight search of the same number of trainings.

    python benchmarks/bench_refine.py            # 9 tabular tables + ZDT1/ZDT2 x 40 seeds (~10 min on 2 cores)
    python benchmarks/bench_refine.py --quick    # smoke test: 2 problems x 3 seeds

Per problem and seed, with bench_hpo's problems (the same SearchSpace path the study takes, the same noise):

- ``straight``: moopt's engine, N trials (N = 30 by default);
- ``refined``: moopt's engine for N/2 trials, then `moopt.report.refine.refine` on them (exactly what a study
  writes as refined_space.yaml, scored as the study scores: the weighted progress from the worst trial to the
  best seen, 0.7 x objective 1 + 0.3 x objective 2), then a new engine over the refined space warm-started
  with the coarse trials' best (`--warm_start`), for N/2 more trials. A configuration the coarse half already
  evaluated is taken over, not evaluated again (the study's take-over), so both arms evaluate N configurations.

The measure is what a user of the weights gets: the best weighted score among the N trials, with every trial
at its configuration's expected value (the table's mean over its repeats), the objectives scaled per problem by
the best and worst expected values any run of either arm saw. No range end is widened here (``edges=[]``): a
table has no configuration past its ends. Fewer than 20 COMPLETE coarse trials: no parameter is fixed.

Writes benchmarks/results/refine_cpu.csv (common.py's schema: what = best_weighted_score; provider = the arm)
and prints the median per problem, the median over problems of the per-seed difference (refined - straight) with
its 95% bootstrap interval, and how often the refined arm is ahead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hpo import PROBLEMS, Problem, Run, run_moopt  # noqa: E402
from common import RESULTS, read_rows, write_rows  # noqa: E402

from moopt.report.refine import refine  # noqa: E402
from moopt.search.space import parse_space  # noqa: E402
from moopt.study.outdir import space_to_yaml  # noqa: E402

WEIGHTS = (0.7, 0.3)
ARMS = ("straight", "refined")
DEFAULT_PROBLEMS = ["hpolib", "hpolib-protein", "hpolib-naval", "nb201", "nb201-c100", "hpobench", "hpobench-segment",
                    "hpobench-kc1", "hpobench-australian", "zdt1", "zdt2"]


def study_data(prob: Problem, run: Run):
    """What refine() reads of a study: its table (params, state, the weighted score) and best trial."""
    import pandas as pd

    F = np.array(run.F)
    lo, hi = F.min(axis=0), F.max(axis=0)
    Z = (F - lo) / np.where(hi > lo, hi - lo, 1.0)  # the study's score: progress from the worst to the best seen
    score = 1.0 - Z @ np.array(WEIGHTS[:prob.n_obj] if prob.n_obj == 2 else [1 / prob.n_obj] * prob.n_obj)
    rows = []
    for n, (cfg, s) in enumerate(zip(run.configs, score)):
        flat = cfg.flat()
        rows.append({"number": n, "state": "COMPLETE", "score": float(s),
                     **{f"params_{name.split('.', 1)[1]}": flat[name] for name in prob.fields}})
    table = pd.DataFrame(rows)
    names = tuple(f"f{i}" for i in range(prob.n_obj))
    return SimpleNamespace(table=table, best=int(table.number[table.score.idxmax()]), header={},
                           objectives=SimpleNamespace(multi=True, names=names))


def run_arms(prob: Problem, n: int, seed: int) -> dict[str, list[np.ndarray]]:
    """Each arm's N configurations at their expected F (the drawn values guide each engine, as a study's are),
    and whether the refine step changed the space."""
    prob.reseed(seed)
    out = {"straight": run_moopt(prob, n, seed).Fm}
    prob.reseed(seed)
    cache: dict = {}
    coarse = run_moopt(prob, n // 2, seed, cache=cache)
    data = study_data(prob, coarse)
    r = refine(data, space_to_yaml(prob.space), [])
    space = parse_space(r.space, source="<refined>") if r is not None else prob.space
    order = data.table.sort_values("score", ascending=False).number
    refined = run_moopt(prob, n - n // 2, seed + 10_000, space=space, cache=cache,
                        warm_start=[coarse.configs[i] for i in order])
    out["refined"] = coarse.Fm + refined.Fm
    out["changed"] = r is not None
    return out


def bench(problems: list[str], seeds: int, n: int, log=print) -> list[dict]:
    rows = []
    for name in problems:
        t0 = time.perf_counter()
        prob = PROBLEMS[name]()
        runs = {s: run_arms(prob, n, s) for s in range(seeds)}
        every = np.vstack([f for r in runs.values() for arm in ARMS for f in r[arm]])
        lo, hi = every.min(axis=0), every.max(axis=0)
        w = np.array(WEIGHTS if prob.n_obj == 2 else [1 / prob.n_obj] * prob.n_obj)
        for s, r in runs.items():
            for arm in ARMS:
                Z = (np.array(r[arm]) - lo) / np.where(hi > lo, hi - lo, 1.0)
                best = float((1.0 - Z @ w).max())
                rows.append({"what": "best_weighted_score", "problem": name, "provider": arm, "device": "cpu",
                             "value": round(best, 6), "unit": "score (0 worst .. 1 best seen)", "seed": s,
                             "n_trials": n, "params": {"refined_space_changed": int(r["changed"])}})
        log(f"{name}: {seeds} seeds in {time.perf_counter() - t0:.1f} s")
    return rows


def summary(rows: list[dict]) -> str:
    by: dict = {}
    for r in rows:
        if r["what"] == "best_weighted_score":
            by.setdefault(r["problem"], {}).setdefault(r["provider"], {})[int(r["seed"])] = float(r["value"])
    arms = [a for a in ARMS if any(a in v for v in by.values())]
    lines = [f"{'problem':<22}" + "".join(f"{a:>20}" for a in arms) + "   ahead/behind straight"]
    diffs: dict = {a: [] for a in arms[1:]}
    for p, got in by.items():
        seeds = sorted(set.intersection(*(set(got[a]) for a in arms)))
        cells, counts = [], []
        for a in arms[1:]:
            d = [got[a][s] - got["straight"][s] for s in seeds]
            diffs[a].append(d)
            counts.append(f"{sum(x > 1e-12 for x in d)}/{sum(x < -1e-12 for x in d)}")
        cells = "".join(f"{statistics.median(got[a].values()):>20.4f}" for a in arms)
        lines.append(f"{p:<22}{cells}   {'  '.join(counts)}")
    rng = np.random.default_rng(0)
    for a, ds in diffs.items():
        med = statistics.median(statistics.mean(d) for d in ds)
        boots = [statistics.median(float(np.mean(rng.choice(d, len(d)))) for d in ds) for _ in range(2000)]
        lines.append(f"{a} - straight, median over problems of the mean per-seed difference: {med:+.4f} "
                     f"(95% bootstrap {np.percentile(boots, 2.5):+.4f} .. {np.percentile(boots, 97.5):+.4f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: hpolib and nb201, 3 seeds")
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS))
    parser.add_argument("--seeds", type=int, help="default 40 (quick: 3)")
    parser.add_argument("--trials", type=int, default=30, help="trainings per arm (the refined arm: half coarse)")
    parser.add_argument("--out", type=Path, help="folder for refine_cpu.csv (default benchmarks/results/; quick: a temporary one)")
    args = parser.parse_args(argv)
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench_refine_")) if args.quick else RESULTS)
    problems = args.problems or (["hpolib", "nb201"] if args.quick else DEFAULT_PROBLEMS)
    rows = bench(problems, args.seeds or (3 if args.quick else 40), args.trials)
    write_rows(rows, out / "refine_cpu.csv")
    print(summary(read_rows(out / "refine_cpu.csv")))
    print(f"wrote {out / 'refine_cpu.csv'}")


if __name__ == "__main__":
    main()
