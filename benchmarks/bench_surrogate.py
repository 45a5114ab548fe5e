"""Does the engine's surrogate know where to go next on real LoRA trials? Trees alone against trees plus
the LoRA-feature trend (moopt/search/engine.py, TREND_RIDGE), on the finished trials of real studies.

The table is ``benchmarks/data/smollm2_demo_trials.csv`` (SmolLM2-135M on the bundled data, the demo space),
its finished trials (level 3). For each draw, n trials picked at random are the training set, the rest the
candidates; the engine's own ``_forest`` (the objectives' model, on the engine's encoding and LoRA features)
is fitted on the n and predicts the rest; its best-predicted candidate is the pick. Reported per objective
(eval_loss, -eval_accuracy), n and model, averaged over the draws:

- ``beat_best``: share of draws whose pick is better than every one of the n trials it was fitted on
  (what a study's next trial needs to do: go past the best seen);
- ``pick_pct``: share of the candidates better than the pick (0 = the pick was the best of the rest);
- ``spearman``: rank correlation of the predictions with the candidates' real values.

    python benchmarks/bench_surrogate.py            # 300 draws per n, about 1 minute
    python benchmarks/bench_surrogate.py --draws 30 # smoke

Writes benchmarks/results/surrogate_smollm2_cpu.csv (benchmarks/common.py's schema: problem = objective,
provider = trees or trees+trend, n_trials = n, params draws) and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, ROOT, long, write_rows  # noqa: E402

TABLE = ROOT / "benchmarks" / "data" / "smollm2_demo_trials.csv"
SPACE = ROOT / "config" / "demo_search_space.yaml"
MODELS = ("trees", "trees+trend")  # TREND_RIDGE None (trees only), and the engine's
WHATS = {"beat_best": "fraction", "pick_pct": "fraction", "spearman": "rho"}


def encoded(table: Path, space_file: Path):
    """(the engine, its feature matrix of the finished trials, eval_loss, eval_accuracy)."""
    import pandas as pd

    from moopt.config import TrialConfig
    from moopt.search.engine import Engine
    from moopt.search.space import load_space

    t = pd.read_csv(table)
    t = t[t.level == t.level.max()].reset_index(drop=True)
    space = load_space(space_file)
    eng = Engine(space, 2, 10, 0)
    V = []
    for _, r in t.iterrows():
        x = {p.name: (tuple(r[p.short].split(",")) if p.short == "target_modules" else r[p.short]) for p in space.params}
        V.append(eng._vec(space.encode(TrialConfig.from_flat(x, base=space.fixed))))
    return eng, eng._features(np.array(V)), t.eval_loss.to_numpy(), t.eval_accuracy.to_numpy()


@contextlib.contextmanager
def trend_ridge(value):
    """The engine's TREND_RIDGE set to ``value`` (None: trees only), put back after."""
    import moopt.search.engine as engine

    saved, engine.TREND_RIDGE = engine.TREND_RIDGE, value
    try:
        yield
    finally:
        engine.TREND_RIDGE = saved


def run(draws: int, sizes: list[int]) -> list[dict]:
    from scipy.stats import spearmanr

    import moopt.search.engine as engine

    eng, F, loss, acc = encoded(TABLE, SPACE)
    n_feat = F.shape[1] - len(eng.problem.vars)
    ridge = {"trees": None, "trees+trend": engine.TREND_RIDGE}
    records = []
    for objective, y in (("eval_loss", loss), ("-eval_accuracy", -acc)):
        for n in sizes:
            rng = np.random.default_rng(n)
            out = {m: {k: [] for k in WHATS} for m in MODELS}
            for d in range(draws):
                idx = rng.permutation(len(y))
                tr, te = idx[:n], idx[n:]
                lo, hi = y[tr].min(), y[tr].max()
                Z = (y - lo) / (hi - lo if hi > lo else 1.0)  # as _select normalises the objectives
                for m in MODELS:
                    eng.sg_rng = np.random.default_rng(d)  # the same trees' seeds for both models
                    with trend_ridge(ridge[m]):
                        p = eng._forest(F[tr], Z[tr], F[te], trend=n_feat)[0]
                    j = int(np.argmin(p))
                    out[m]["beat_best"].append(float(Z[te][j] < Z[tr].min()))
                    out[m]["pick_pct"].append(float((Z[te] < Z[te][j]).mean()))
                    out[m]["spearman"].append(float(spearmanr(p, Z[te])[0]) if np.ptp(p) > 0 else np.nan)
            for m, v in out.items():
                rec = {"problem": objective, "provider": m, "n_trials": n, "draws": draws, "trials": len(y)}
                rec.update({k: float(np.nanmean(x)) for k, x in v.items()})
                records.append(rec)
                print(f"{objective:15s} n={n:2d} {m:12s} " + "  ".join(f"{k} {rec[k]:.3f}" for k in WHATS), flush=True)
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=300)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 6, 10])
    ap.add_argument("--out", type=Path, default=RESULTS / "surrogate_smollm2_cpu.csv")
    args = ap.parse_args()
    records = run(args.draws, args.sizes)
    rows = long(records, WHATS, {"problem": "problem", "provider": "provider", "n_trials": "n_trials"},
                params=("draws", "trials"))
    for r in rows:
        r["device"] = "cpu"
    print(f"wrote {write_rows(rows, args.out)}")


if __name__ == "__main__":
    main()
