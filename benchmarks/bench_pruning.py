"""What --pruning_factor saves: the same study with and without pruning, side by side.

For each seed, two real studies (same model, data, space, seed, trial count) run through the CLI:
one without pruning, one with ``--pruning_factor ETA``. Compute is the optimizer steps (and
training seconds) all trials spent; quality is the hypervolume of each study's feasible front,
both normalised over the union of the two studies' COMPLETE trials (reference point 1.1).

Default: the tiny random Llama of the tests on its colour task (CPU, ~5 s a trial). With
``--base_model smollm2-135m --train_file data/train.jsonl --validation_file data/val.jsonl`` it
runs on the real model (minutes a trial on CPU).

    python benchmarks/bench_pruning.py --seeds 3 --trials 12
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPACE = """
training:
  learning_rate: {type: log_uniform, min: 1e-4, max: 5e-2}
  batch_size: {type: categorical, values: [4, 8]}
  num_train_epochs: 4
lora:
  r: {type: categorical, values: [4, 8, 16]}
  alpha: {type: categorical, values: [8, 16, 32]}
  dropout: {type: uniform, min: 0.0, max: 0.1}
data:
  max_seq_length: 32
"""


def run_study(model, train, val, out: Path, space: Path, trials: int, seed: int, eta: float | None) -> None:
    from click.testing import CliRunner

    from moopt.cli import main

    args = ["optimize", "--base_model", str(model), "--train_file", str(train), "--validation_file", str(val),
            "--output_dir", str(out), "--search_space", str(space), "--num_trials", str(trials), "--seed", str(seed),
            "--optimization_objective", "multi:eval_loss,eval_accuracy", "--no-baseline", "--overwrite"]
    if eta:
        args += ["--pruning_factor", str(eta)]
    r = CliRunner().invoke(main, args)
    if r.exit_code != 0:
        raise RuntimeError(r.output)


def study_front(out: Path):
    from moopt.results import load_study

    d = load_study(out)
    t = d.table
    cols = [f"values_{n}" for n in d.objectives.names]
    ok = t[t.state == "COMPLETE"].dropna(subset=cols)
    F = np.array([d.objectives.to_minimize(dict(zip(d.objectives.names, r))) for r in ok[cols].to_numpy()])
    return F, float(t.steps.fillna(0).sum()), float(t.get("train_seconds", t.steps * 0).fillna(0).sum()), t


def hv(F: np.ndarray, lo: np.ndarray, span: np.ndarray) -> float:
    from pymoo.indicators.hv import HV

    if not len(F):
        return 0.0
    return float(HV(ref_point=np.full(F.shape[1], 1.1))((F - lo) / span))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--eta", type=float, default=2.0)
    ap.add_argument("--base_model", default=None)
    ap.add_argument("--train_file", default=None)
    ap.add_argument("--validation_file", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pruning_cpu.csv"))
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_pruning_"))
    if a.base_model is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import build_tiny_llama, write_color_data

        model = build_tiny_llama(tmp / "tiny")
        train, val = write_color_data(tmp / "train.jsonl", 96, 0), write_color_data(tmp / "val.jsonl", 32, 1)
    else:
        from moopt.models import resolve_model

        model, train, val = resolve_model(a.base_model), a.train_file, a.validation_file
    space = tmp / "space.yaml"
    space.write_text(SPACE)

    rows = []
    for seed in range(a.seeds):
        outs = {}
        for label, eta in (("no_pruning", None), (f"eta_{a.eta:g}", a.eta)):
            outs[label] = tmp / f"s{seed}_{label}"
            run_study(model, train, val, outs[label], space, a.trials, seed, eta)
        fronts = {k: study_front(v) for k, v in outs.items()}
        allF = np.vstack([f[0] for f in fronts.values() if len(f[0])])
        lo, hi = allF.min(axis=0), allF.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        for label, (F, steps, _, t) in fronts.items():
            rows.append({"what": "pruning", "config": f"trials={a.trials},seed={seed}", "provider": label,
                         "device": "cpu", "hypervolume": hv(F, lo, span), "train_steps": steps,
                         "n_pruned": int((t.state == "PRUNED").sum())})
            print(f"seed {seed} {label:>12}: HV {rows[-1]['hypervolume']:.4f}  steps {steps:.0f}  pruned {rows[-1]['n_pruned']}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    base = [r for r in rows if r["provider"] == "no_pruning"]
    pr = [r for r in rows if r["provider"] != "no_pruning"]
    saved = 1 - sum(r["train_steps"] for r in pr) / sum(r["train_steps"] for r in base)
    hv_loss = 1 - np.median([p["hypervolume"] / b["hypervolume"] for p, b in zip(pr, base) if b["hypervolume"] > 0])
    print(f"\ncompute saved by pruning (optimizer steps): {saved:.1%}")
    print(f"median hypervolume loss: {hv_loss:.1%}  (per seed: "
          + ", ".join(f"{1 - p['hypervolume'] / b['hypervolume']:.1%}" for p, b in zip(pr, base) if b["hypervolume"] > 0) + ")")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
