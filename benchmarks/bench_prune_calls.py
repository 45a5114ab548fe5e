"""Were the pruning calls right? Rerun pruned trials to their end and look.

For each pruned trial of the given studies (by default those stopped by the dominance bound, "cannot
catch trial N"; ``--all``: every trial pruned at a rung), the same configuration is trained again to
its end, with the study's model, data and seed, no rungs. The call was right if that final point
adds nothing to the study's front:

- ``dominated_by_stopper``: the completed trial named in the reason dominates the final point (the
  bound's own claim);
- ``dominated_by_front``: some COMPLETE trial of the study dominates it;
- ``hv_gain_pct``: how much the study's hypervolume (reference: the base model's values, as
  bench_pruning's ``hv_base``) would have grown had the trial run to its end (0 for a right call).

``--twins``: no retraining; a pruned trial's end is read from the trial of the same configuration in
the same seed's study without pruning (bench_pruning's ``sK_no_pruning`` next to ``sK_eta_2``): CPU
trials are deterministic, so that is the end it would have reached. The two studies propose the same
configurations until the first pruned trial is told to the engine, so this covers the early trials,
rank-rule stops included, at no cost; pruned trials without a twin are skipped, or with
``--rerun-rest`` retrained.

With ``--all --twins --rerun-rest`` every pruned trial's end is known, so each study's hypervolume
loss against its twin splits as bench_pruning_sim splits it: **the calls' cost**, what all the pruned
trials' ends together would have added to the study's front (``calls_cost_pct``), and **the path**,
the rest, from where the two searches went once they diverged (``path_pct``); written to
``<out>_studies.csv``.

    python benchmarks/bench_prune_calls.py W/s0_eta_2 W/s1_eta_2 ... [--all] [--twins [--rerun-rest]] [--baseline W/s0_no_pruning/baseline.json]

Writes ``--out`` (default benchmarks/results/prune_calls_smollm2_cpu.csv; benchmarks/common.py's schema: per
pruned trial, problem = its study, params trial, pruned_step, total_steps, reason, stopper, end_from;
figures final_<objective> (minimisation form), dominated_by_stopper / dominated_by_front (1 or 0, empty
without a stopper) and hv_gain_pct) and, with the split, ``<out>_studies.csv`` (loss_pct, calls_cost_pct,
path_pct, n_pruned per study) and its PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, hv, long, pyplot, write_rows  # noqa: E402
from demo_study import read_calls, write_calls  # noqa: E402, F401  (read_calls: how the CSV reads back)

STUDY_WHATS = {"loss_pct": "pct", "calls_cost_pct": "pct", "path_pct": "pct", "n_pruned": "count"}
from moopt.search.pareto import dominates  # noqa: E402


def read_study(study: Path) -> tuple[dict, dict[int, dict], dict[int, dict]]:
    """(journal header, trial_start by number, trial_end by number), as the study's --resume reads them."""
    from moopt.journal import replay

    rec = replay(study)
    return rec.header, rec.starts, rec.ends


def rerun(start: dict, header: dict, work: Path) -> dict:
    """The trial's configuration trained to its end (no rungs): its final metrics."""
    from moopt.config import TrialConfig
    from moopt.records import TrialSpec
    from moopt.train.recipe import run_trial

    fp = header["fingerprint"]
    spec = TrialSpec(number=start["number"], config=TrialConfig.from_dict(start["config"]), base_model=fp["base_model"],
                     train_file=fp["train_file"], validation_file=fp["validation_file"],
                     output_dir=str(work / f"trial_{start['number']}"), seed=fp["seed"], save_adapter=False)
    res = run_trial(spec)
    if res.state != "COMPLETE":
        raise RuntimeError(f"trial {start['number']} rerun ended {res.state}: {res.error}")
    return res.metrics


def twin_of(study: Path) -> Path:
    """bench_pruning's layout: W/sK_eta_2 was run with pruning, W/sK_no_pruning (same seed) without."""
    return study.parent / (study.name.rsplit("_eta_", 1)[0] + "_no_pruning")


def twin_finals(study: Path) -> dict[str, dict]:
    """Final metrics of the COMPLETE trials of the study's twin without pruning, by configuration."""
    _, starts, ends = read_study(twin_of(study))
    return {json.dumps(starts[n]["config"], sort_keys=True): e["metrics"] for n, e in ends.items()
            if e["state"] == "COMPLETE" and n in starts}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("studies", nargs="+", type=Path, help="output folders of studies run with --pruning_factor")
    ap.add_argument("--all", action="store_true", help="every trial pruned at a rung, not only the bound's stops")
    ap.add_argument("--twins", action="store_true", help="read ends from the same seed's study without pruning, no retraining")
    ap.add_argument("--rerun-rest", action="store_true",
                    help="with --twins: retrain the pruned trials that have no twin (else they are skipped)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="baseline.json (the base model's values) for studies run with --no-baseline (default: their twin's)")
    ap.add_argument("--out", type=Path, default=RESULTS / "prune_calls_smollm2_cpu.csv")
    a = ap.parse_args(argv)
    if a.rerun_rest and not a.twins:
        print("error: --rerun-rest: only with --twins (without it every pruned trial is retrained)", file=sys.stderr)
        return 2
    for s in a.studies:
        if not (s / "journal.jsonl").is_file():
            print(f"error: {s}: no journal.jsonl (not a moopt study folder)", file=sys.stderr)
            return 2
        if a.twins and ("_eta_" not in s.name or not (twin_of(s) / "journal.jsonl").is_file()):
            print(f"error: {s}: --twins needs the same seed's study without pruning next to it ({twin_of(s).name})",
                  file=sys.stderr)
            return 2
    import pandas as pd

    from moopt.search.objectives import parse_objectives

    rows, studies, no_twin = [], [], 0
    with tempfile.TemporaryDirectory(prefix="prune_calls_") as tmp:
        for study in a.studies:
            header, starts, ends = read_study(study)
            names = header["objectives"]
            to_min = parse_objectives(("multi:" if len(names) > 1 else "") + ",".join(names), None).to_minimize
            complete = {n: to_min(e["metrics"]) for n, e in ends.items() if e["state"] == "COMPLETE"}
            bfile = next((f for f in (study / "baseline.json", twin_of(study) / "baseline.json") if f.is_file()), a.baseline)
            base = json.loads(bfile.read_text()) if bfile else None
            ref = to_min(base["metrics"]) if base and base.get("state") == "COMPLETE" else None
            front = np.array(list(complete.values()))
            h0 = hv(front, ref) if ref is not None and len(front) else float("nan")
            twins = twin_finals(study) if a.twins else {}
            finals, skipped = [], 0
            for n, e in sorted(ends.items()):
                why = str(e.get("error") or "")
                if e["state"] != "PRUNED" or not why.startswith("pruned at step"):
                    continue
                if not a.all and "cannot catch trial" not in why:
                    skipped += 1
                    continue
                stopper = int(why.split("cannot catch trial ")[1].split(":")[0]) if "cannot catch trial" in why else None
                key = json.dumps(starts[n]["config"], sort_keys=True)
                source = "twin" if key in twins else "rerun"
                if a.twins and key not in twins and not a.rerun_rest:
                    no_twin += 1
                    skipped += 1
                    continue
                final = to_min(twins[key]) if source == "twin" else to_min(rerun(starts[n], header, Path(tmp) / study.name))
                finals.append(final)
                gain = 100 * (hv(np.vstack([front, final]), ref) / h0 - 1) if h0 > 0 else float("nan")
                rows.append({"study": study.name, "trial": n, "pruned_step": e.get("steps"), "total_steps": e.get("total_steps"),
                             "reason": "bound" if stopper is not None else "rank", "stopper": stopper, "end_from": source,
                             **{f"final_{k}": float(v) for k, v in zip(names, final)},
                             "dominated_by_stopper": dominates(complete[stopper], final) if stopper is not None else None,
                             "dominated_by_front": any(dominates(f, final) for f in complete.values()),
                             "hv_gain_pct": gain})
                r = rows[-1]
                print(f"{study.name} trial {n} ({r['reason']}, step {r['pruned_step']}/{r['total_steps']}): final "
                      f"{np.round(final, 4).tolist()}; dominated by its stopper: {r['dominated_by_stopper']}, by the "
                      f"front: {r['dominated_by_front']}; hypervolume +{gain:.2f}% had it run on ({source})", flush=True)
            if a.twins and not skipped and ref is not None and len(front):
                studies.append(split_loss(study, front, h0, finals, ref, to_min))
    if no_twin:
        print(f"{no_twin} pruned trials have no twin (a configuration the study without pruning never ran): skipped")
    if not rows:
        print("no pruned trials of that kind in these studies")
        return 0
    df = pd.DataFrame(rows)
    write_calls(rows, a.out)
    right = df.dominated_by_front.mean()
    wrong = df[~df.dominated_by_front]
    others = (f"the {len(wrong)} others would have added {wrong.hv_gain_pct.median():.2f}% hypervolume (median), "
              f"{wrong.hv_gain_pct.max():.2f}% at most") if len(wrong) else "none would have added hypervolume"
    print(f"\n{len(df)} calls: {100 * right:.0f}% right (the final point is dominated by the study's front); {others}")
    print(f"wrote {a.out}")
    if studies:
        st = pd.DataFrame(studies)
        write_rows(long([{**s, "provider": "moopt"} for s in studies], STUDY_WHATS, {"problem": "study", "provider": "provider"}),
                   a.out.with_name(a.out.stem + "_studies.csv"))
        plot_split(st, a.out.with_name(a.out.stem + "_studies.png"))
        for r in studies:
            print(f"{r['study']}: hypervolume loss {r['loss_pct']:+.2f}% = calls' cost {r['calls_cost_pct']:+.2f}% "
                  f"+ path {r['path_pct']:+.2f}% ({r['n_pruned']} pruned trials' ends added)")
        print(f"{len(st)} studies: mean loss {st.loss_pct.mean():+.2f}% = calls' cost {st.calls_cost_pct.mean():+.2f}% "
              f"+ path {st.path_pct.mean():+.2f}%; wrote {a.out.with_name(a.out.stem + '_studies.csv')}")
    return 0


def plot_split(st, path: Path) -> None:
    """Per study: its hypervolume loss, stacked as the calls' cost and the path."""
    plt = pyplot()
    st = st.sort_values("loss_pct", ascending=False)
    x = np.arange(len(st))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(st) + 2), 3.6))
    calls, path_ = st.calls_cost_pct.to_numpy(), st.path_pct.to_numpy()
    ax.bar(x, calls, color="tab:red", label=f"the calls' cost (mean {calls.mean():.2f}%)")
    ax.bar(x, path_, bottom=np.where(path_ >= 0, calls, 0), color="tab:blue", label=f"the path (mean {path_.mean():.2f}%)")
    ax.plot(x, st.loss_pct, "k_", ms=14, mew=2, label=f"loss (mean {st.loss_pct.mean():.2f}%)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(x, [s.removesuffix("_eta_2") for s in st.study], rotation=45)
    ax.set_ylabel("hypervolume lost vs no pruning, %")
    ax.set_title("hypervolume lost by pruning, split: pruned trials' own ends vs where the search went", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def split_loss(study: Path, front: np.ndarray, h: float, finals: list[np.ndarray], ref: np.ndarray, to_min) -> dict:
    """The study's hypervolume loss against its twin without pruning, split into the calls' cost (what
    all its pruned trials' ends would have added to its front, of hypervolume ``h``) and the path (the rest)."""
    _, _, twin_ends = read_study(twin_of(study))
    twin_front = np.array([to_min(e["metrics"]) for e in twin_ends.values() if e["state"] == "COMPLETE"])
    h_twin = hv(twin_front, ref)
    h_plus = hv(np.vstack([front, *finals]), ref) if finals else h
    return {"study": study.name, "n_pruned": len(finals), "loss_pct": 100 * (1 - h / h_twin),
            "calls_cost_pct": 100 * (h_plus - h) / h_twin, "path_pct": 100 * (1 - h_plus / h_twin)}


if __name__ == "__main__":
    sys.exit(main())
