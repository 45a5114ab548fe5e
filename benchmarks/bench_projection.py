"""How far were pruned trials' projections from their real ends?

A pruned trial tells NSGA-II its last rung's values; the engine's surrogate learns its projection to
the end instead (``RungPruner.projected``: the gap to the ideal scaled as the completed trial with the
closest gap at that rung shrank from there, ``nearest_ratio``). This replays each study's journal through a ``RungPruner`` to get the projection each
pruned trial was given, and compares it with the trial's real end, read by bench_prune_calls (``--all
--twins --rerun-rest``: the unpruned twin's end, else the trial retrained).

Two other rules are scored beside it, on the same replayed state: ``none`` (the rung values as
measured) and ``median`` (the gap scaled by the median ratio over all completed
trials).

    python benchmarks/bench_prune_calls.py W/s*_eta_2 --all --twins --rerun-rest --out C.csv
    python benchmarks/bench_projection.py C.csv W [--out benchmarks/results/projection_smollm2_cpu.csv]

Writes ``--out`` in benchmarks/common.py's schema: per pruned trial (problem = its study; params trial,
fraction of its steps, completed trials then) its rung, projected (rule code), median-rule and real-end
eval_loss and eval_accuracy, and the log ratios of each to the real end's eval_loss.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, long, write_rows  # noqa: E402
from demo_study import read_calls  # noqa: E402


def replay_projections(study: Path, trials: set[int], eta: float) -> dict[int, tuple[np.ndarray, dict, int]]:
    """For each pruned trial in ``trials``: (its last rung's F, {rule: its projection by that rule},
    completed trials known then), in minimisation form (eval_loss, -eval_accuracy); rule ``code`` is
    the projection the code gives it now."""
    from moopt.search.objectives import parse_objectives
    from moopt.search.pruner import RungPruner, median_ratio

    objectives = parse_objectives("multi:eval_loss,eval_accuracy", None)
    pruner, last, out = RungPruner(eta, objectives.ideal()), {}, {}
    for line in (study / "journal.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e.get("type") == "rung":
            last[e["number"]] = objectives.to_minimize(e["metrics"])
            pruner.record(e["rung"], e["number"], last[e["number"]])
        elif e.get("type") == "trial_end" and e["state"] == "COMPLETE":
            pruner.complete(e["number"], objectives.to_minimize(e["metrics"]))
        elif e.get("type") == "trial_end" and e["state"] == "PRUNED" and e["number"] in trials:
            F = last[e["number"]]
            out[e["number"]] = (F, {"code": pruner.projected(e["number"], F), "none": F,
                                    "median": pruner.projected(e["number"], F, ratio=median_ratio)}, len(pruner.finals))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("calls", type=Path, help="bench_prune_calls' per-trial CSV (run with --all --twins --rerun-rest)")
    ap.add_argument("workdir", type=Path, help="the folder holding the studies named in it")
    ap.add_argument("--eta", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "projection_smollm2_cpu.csv")
    a = ap.parse_args(argv)
    import pandas as pd

    if not a.calls.is_file():
        print(f"error: {a.calls}: no such file (run bench_prune_calls.py first)", file=sys.stderr)
        return 2
    calls = read_calls(a.calls)
    missing = [s for s in calls.study.unique() if not (a.workdir / s / "journal.jsonl").is_file()]
    if missing:
        print(f"error: {a.workdir}: no study folder for {missing[0]} (named in {a.calls})", file=sys.stderr)
        return 2
    rows = []
    for study, g in calls.groupby("study", sort=False):
        got = replay_projections(a.workdir / study, set(g.trial), a.eta)
        for r in g.itertuples():
            F, P, done = got[r.trial]
            rows.append({"study": study, "trial": r.trial, "fraction": r.pruned_step / r.total_steps, "completed_then": done,
                         "rung_eval_loss": F[0], "projected_eval_loss": P["code"][0], "median_eval_loss": P["median"][0],
                         "end_eval_loss": r.final_eval_loss, "rung_eval_accuracy": -F[1],
                         "projected_eval_accuracy": -P["code"][1], "median_eval_accuracy": -P["median"][1],
                         "end_eval_accuracy": -r.final_eval_accuracy})
    d = pd.DataFrame(rows)
    d["log_ratio_projected"] = np.log(d.projected_eval_loss / d.end_eval_loss)
    d["log_ratio_rung"] = np.log(d.rung_eval_loss / d.end_eval_loss)
    d["log_ratio_median"] = np.log(d.median_eval_loss / d.end_eval_loss)
    whats = {c: "loss" if c.endswith("eval_loss") else "accuracy" if c.endswith("eval_accuracy") else "log ratio"
             for c in d.columns if c not in ("study", "trial", "fraction", "completed_then")}
    write_rows(long([{**r, "provider": "moopt"} for r in d.to_dict("records")], whats, {"problem": "study", "provider": "provider"},
                    params=("trial", "fraction", "completed_then")), a.out)
    from scipy.stats import spearmanr

    print(f"{len(d)} pruned trials of {d.study.nunique()} studies; eval_loss, log(value / real end) (0 = exact, < 0 optimistic):")
    for label, g in d.groupby(pd.cut(d.fraction, [0, 0.15, 0.3, 0.6, 1.0]), observed=True):
        print(f"  pruned at {label} of its steps, {len(g)} trials: projection median {g.log_ratio_projected.median():+.2f} "
              f"(IQR {g.log_ratio_projected.quantile(0.25):+.2f} to {g.log_ratio_projected.quantile(0.75):+.2f}), "
              f"rung value {g.log_ratio_rung.median():+.2f}, median rule {g.log_ratio_median.median():+.2f} "
              f"(error {g.log_ratio_projected.abs().median():.2f} vs the median rule's {g.log_ratio_median.abs().median():.2f})")
    print("eval_loss by rule: median log(value / real end) (bias), median |log ratio| (error), Spearman with the real ends")
    for rule, col in (("code (nearest)", "projected"), ("none (the rung value)", "rung"), ("median (median ratio)", "median")):
        lr = d[f"log_ratio_{col}"]
        print(f"  {rule}: bias {lr.median():+.2f}, error {lr.abs().median():.2f}, "
              f"Spearman {spearmanr(d[f'{col}_eval_loss'], d.end_eval_loss)[0]:.3f}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
