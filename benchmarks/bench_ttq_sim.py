"""Time to quality on the demo-study surrogate: how much compute moopt needs to reach a random 10-trial
peer's best, over many seeds, for engine variants (first-population sizes, pruning factors) or commits.

bench_study.py's ``ttq`` part runs the real thing (SmolLM2 on 2 cores, ~9 min a seed), so it gets ~5
seeds. Here, as in bench_pruning_sim.py, the trials are not trained: the surrogate of
benchmarks/demo_study.py (``Oracle``, fit on real trials) gives each configuration its rung and final
metrics, and moopt's own Study loop, engine and pruner run on them. The peer is 10 random
configurations of the same space, each trained to its end (Optuna's TPE draws its first 10 trials at
random, so a 10-trial TPE study is a random one; its MedianPruner is not modelled, so the peer here pays
more than the real one). Compute is in training-token equivalents, as bench_pruning_sim counts it, plus
OVERHEAD_TOKENS per trial; the figure is moopt's compute until its first COMPLETE trial whose weighted
score (0.7 eval_loss, 0.3 eval_accuracy, from the base model's values) reaches the peer's best, over the
peer's compute.

    python -P benchmarks/bench_ttq_sim.py --variants pop10 pop6 pop4 --seeds 60   # ~2 s a seed and variant
    python -P benchmarks/bench_ttq_sim.py --variants pop10_eta0 pop10_eta3        # pruning off, eta 3

A variant ``pop<k>[_eta<e>]`` fixes the first population at k (``moopt.search.engine.population_size``)
and the pruning factor at e (0: none; default --eta). To compare commits, run this file against another
checkout's code: ``PYTHONPATH=<checkout> BENCH=<checkout>/benchmarks python -P benchmarks/bench_ttq_sim.py``.
Prints the median ratio, the share of seeds at or under 1/3 and the share reached within --trials;
writes a JSON of every seed's result (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.environ.get("BENCH", str(Path(__file__).resolve().parent)))
import bench_pruning_sim as BPS  # noqa: E402
from demo_study import DATA, SPACE, Oracle, _flat  # noqa: E402

OVERHEAD_TOKENS = 400  # ~2 s of a warm trial's time outside training and evaluation, at ~200 tokens/s


def parse_variant(v: str, eta: float) -> tuple[int, float | None]:
    parts = v.split("_")
    k = int(parts[0].removeprefix("pop"))
    for q in parts[1:]:
        if q.startswith("eta"):
            eta = float(q[3:])
    return k, (eta or None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=["pop10"])
    ap.add_argument("--seeds", type=int, default=60)
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=30, help="moopt's trials per study (it stops there if not reached)")
    ap.add_argument("--peer", type=int, default=10, help="the random peer's trials")
    ap.add_argument("--eta", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench_ttq_sim.json")
    a = ap.parse_args(argv)
    import pandas as pd

    import moopt.search.engine as E
    from moopt.search.objectives import parse_objectives
    from moopt.search.space import load_space

    oracle = Oracle(pd.read_csv(DATA))
    obj = parse_objectives("multi:eval_loss,eval_accuracy", "0.7,0.3")
    start = obj.to_minimize(oracle.base)
    space = load_space(SPACE)
    eval_tokens = 60 * oracle.tokens_per_epoch / 300 / 2  # the final evaluation (60 rows), at half a training token
    variants = {v: parse_variant(v, a.eta) for v in a.variants}
    res: dict[str, list[dict]] = {v: [] for v in variants}
    original, t0 = E.population_size, time.time()
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        draw = E.Engine(space, 2, a.peer, seed)
        draw.rng = np.random.default_rng(seed + 777)
        scores, peer_cost = [], 0.0
        for _ in range(a.peer):
            cfg = space.decode(draw.random_individual())
            m = oracle(_flat(cfg.to_dict()), 3, seed)
            scores.append(float(obj.score(obj.to_minimize(m), start)[0]))
            peer_cost += oracle.tokens_per_epoch * cfg.training.num_train_epochs + eval_tokens + OVERHEAD_TOKENS
        target = max(scores)
        for v, (k, eta) in variants.items():
            E.population_size = lambda n, p=1, k=k: k
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    fin = BPS.run_sim_study(oracle, Path(tmp) / "s", seed, a.trials, eta)
            finally:
                E.population_size = original
            cost, hit, best = 0.0, None, -np.inf
            for n in sorted(fin):
                e = fin[n]
                cost += e["train_tokens"] + e["eval_tokens"] / 2 + OVERHEAD_TOKENS
                if e["state"] == "COMPLETE":
                    sc = float(obj.score(obj.to_minimize(e["metrics"]), start)[0])
                    best = max(best, sc)
                    if hit is None and sc >= target:
                        hit = (n + 1, cost / peer_cost)
            res[v].append({"seed": seed, "target": target, "hit": hit, "best": best})
        done = seed - a.first_seed + 1
        if done % 10 == 0 or done == a.seeds:
            line = f"{done} seeds, {time.time() - t0:.0f} s"
            for v in variants:
                r = np.array([x["hit"][1] if x["hit"] else np.inf for x in res[v]])
                line += (f" | {v}: median {np.median(r):.3f}, <= 1/3 on {np.mean(r <= 1 / 3):.0%}, "
                         f"reached on {np.mean(np.isfinite(r)):.0%}")
            print(line, flush=True)
    a.out.write_text(json.dumps(res))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
