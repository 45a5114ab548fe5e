"""What --pruning_factor saves: the same study with and without pruning, side by side.

For each seed, two real studies (same model, data, space, seed, trial count) run through the CLI:
one without pruning, one with ``--pruning_factor ETA``. Compute is counted three ways:

- ``compute_tokens`` (the headline): training tokens + evaluation tokens / 2, i.e. training-token
  FLOP equivalents. A LoRA step on a frozen base costs ~2 forwards (forward + dX backward, no dW), an
  evaluation token one forward; so the rung evaluations that pruning adds are charged to it;
- ``train_steps``: optimizer steps of all trials;
- ``trial_seconds``: wall time of all trials, including process start, model load and evaluations
  (on short CPU trials these fixed costs are a large share; on long trials they vanish).

Quality is the hypervolume of each study's COMPLETE front:

- ``hv_base``: reference point = the base model's own (eval_loss, eval_accuracy), i.e. the region of
  improvement over not fine-tuning at all (the headline figure);
- ``hv_union``: both fronts normalised to [0, 1] over the union of the two studies' COMPLETE trials,
  reference 1.1 (strict: a slightly worse best point can cost tens of percent).

Default: the tiny random Llama of the tests on its colour task (CPU, seconds a trial). ``--real`` runs
the demo's study (scripts/demo.sh): SmolLM2-135M-Instruct on data/train.jsonl (or its first
``--train-rows`` rows) with data/val.jsonl and config/demo_search_space.yaml (~30-60 s a trial on 2 cores).

    python benchmarks/bench_pruning.py --seeds 3 --trials 12
    python benchmarks/bench_pruning.py --real --seeds 4 --trials 12
    python benchmarks/bench_pruning.py --real --seeds 8 --workdir W --reuse-baselines   # pruned studies only

``--workdir`` keeps the studies; with ``--reuse-baselines`` a finished no-pruning study already there
(same seed and trial count) is read instead of rerun. Only do that while the no-pruning code path is
unchanged (a study without pruning is deterministic on CPU: same seed, same trials, same values); the
CSV marks such rows ``reused``. ``--reuse-studies`` reads every finished study there, pruned ones too
(to summarise a run that was stopped part-way, with the code that ran it). ``--summarize`` re-summarises
an existing CSV.

Writes benchmarks/results/pruning_{tiny,smollm2[_<rows>rows]}_cpu.csv (or ``--out``; benchmarks/common.py's
schema: a row per seed, arm (provider no_pruning / eta_<eta>) and figure: hv_base, hv_union,
compute_tokens, train_steps, trial_seconds, ...; params reused), the summary as .json and a PNG next to it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, ROOT, hv, pyplot  # noqa: E402
from demo_study import SPACE as DEMO_SPACE  # noqa: E402
from demo_study import read_studies, summarize, write_studies  # noqa: E402

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


def run_study(model, train, val, out: Path, space: Path, trials: int, seed: int, eta: float | None,
              baseline: bool = False) -> None:
    from click.testing import CliRunner

    from moopt.cli import main

    args = ["optimize", "--base_model", str(model), "--train_file", str(train), "--validation_file", str(val),
            "--output_dir", str(out), "--search_space", str(space), "--num_trials", str(trials), "--seed", str(seed),
            "--optimization_objective", "multi:eval_loss,eval_accuracy", "--overwrite"]
    if not baseline:
        args.append("--no-baseline")
    if eta:
        args += ["--pruning_factor", str(eta)]
    r = CliRunner().invoke(main, args)
    if r.exit_code != 0:
        raise RuntimeError(r.output)


def study_front(out: Path):
    """(F of COMPLETE trials in minimisation form, objectives, table, base model's F or None)."""
    from moopt.report.table import load_study

    d = load_study(out)
    t = d.table
    cols = [f"values_{n}" for n in d.objectives.names]
    ok = t[t.state == "COMPLETE"].dropna(subset=cols)
    F = np.array([d.objectives.to_minimize(dict(zip(d.objectives.names, r))) for r in ok[cols].to_numpy()])
    base = None
    if d.baseline and d.baseline.get("state") == "COMPLETE":
        base = np.array(d.objectives.to_minimize(d.baseline["metrics"]), dtype=float)
    return F, t, base


def plot(rows: list[dict], path: Path) -> None:
    """Per seed: both studies' compute, and the hypervolume pruning lost."""
    plt = pyplot()
    seeds = sorted({r["seed"] for r in rows})
    get = {(r["seed"], r["provider"] == "no_pruning"): r for r in rows}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.arange(len(seeds))
    for off, base, lab in ((-0.2, True, "no pruning"), (0.2, False, "pruning")):
        a1.bar(x + off, [get[s, base]["compute_tokens"] / 1e3 for s in seeds], 0.4, label=lab)
    loss = [100 * (1 - get[s, False]["hv_base"] / get[s, True]["hv_base"]) for s in seeds]
    a2.bar(x, loss, 0.6, color=["tab:red" if v > 2 else "tab:green" for v in loss])
    a2.axhline(2.0, color="k", ls="--", lw=0.8, label="2% target")
    a2.axhline(float(np.median(loss)), color="tab:blue", lw=1, label=f"median {np.median(loss):.1f}%")
    saved = 100 * (1 - sum(get[s, False]["compute_tokens"] for s in seeds) / sum(get[s, True]["compute_tokens"] for s in seeds))
    for ax, title in ((a1, f"compute, k training-token equivalents (all trials): {saved:.1f}% saved"),
                      (a2, "hypervolume lost by pruning, % (reference: base model)")):
        ax.set_xticks(x, [str(s) for s in seeds])
        ax.set_xlabel("seed")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--append", action="store_true", help="add these seeds' rows to the CSV and summarise all")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--eta", type=float, default=2.0)
    ap.add_argument("--real", action="store_true", help="SmolLM2-135M on the bundled data (see module doc)")
    ap.add_argument("--train-rows", type=int, default=None, help="--real: first N rows of data/train.jsonl (default all)")
    ap.add_argument("--summarize", action="store_true", help="only re-summarise the existing CSV")
    ap.add_argument("--workdir", default=None, help="keep the studies here (default: a temporary folder)")
    ap.add_argument("--reuse-studies", action="store_true",
                    help="read every finished study already in --workdir (pruned ones too) instead of rerunning it")
    ap.add_argument("--reuse-baselines", action="store_true",
                    help="read a finished no-pruning study already in --workdir instead of rerunning it")
    ap.add_argument("--out", default=None, help="CSV (default benchmarks/results/pruning_{tiny,smollm2}[_t<trials>]_cpu.csv)")
    a = ap.parse_args()
    name = (("smollm2" + (f"_{a.train_rows}rows" if a.train_rows else "")) if a.real else "tiny") + (
        f"_t{a.trials}" if a.trials != 12 else "")  # another trial count never lands in (or --append to) the 12-trial file
    out_csv = Path(a.out or RESULTS / f"pruning_{name}_cpu.csv")

    if a.summarize:
        if not out_csv.is_file():
            print(f"error: {out_csv}: no results to summarise (run the benchmark first)", file=sys.stderr)
            return 2
        summarize(read_studies(out_csv), out_csv, plot_fn=plot)
        return 0
    tmp = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="bench_pruning_"))
    tmp.mkdir(parents=True, exist_ok=True)
    if a.real:
        from moopt.train.models import resolve_model

        model = resolve_model("smollm2-135m")
        train = ROOT / "data" / "train.jsonl"
        if a.train_rows:
            rows_ = train.read_text().splitlines()[: a.train_rows]
            train = tmp / "train.jsonl"
            train.write_text("\n".join(rows_) + "\n")
        val, space = ROOT / "data" / "val.jsonl", DEMO_SPACE
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import build_tiny_llama, write_color_data

        model = build_tiny_llama(tmp / "tiny")
        train, val = write_color_data(tmp / "train.jsonl", 96, 0), write_color_data(tmp / "val.jsonl", 32, 1)
        space = tmp / "space.yaml"
        space.write_text(SPACE)

    rows = []
    t0 = time.time()
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        outs, reused = {}, set()
        for label, eta in (("no_pruning", None), (f"eta_{a.eta:g}", a.eta)):
            outs[label] = tmp / f"s{seed}_{label}"
            if (a.reuse_studies or (eta is None and a.reuse_baselines)) and finished(outs[label], a.trials, eta is None):
                reused.add(label)
                continue
            run_study(model, train, val, outs[label], space, a.trials, seed, eta, baseline=eta is None)
        fronts = {k: study_front(v) for k, v in outs.items()}
        base_ref = fronts["no_pruning"][2]
        allF = np.vstack([f[0] for f in fronts.values() if len(f[0])])
        lo, hi = allF.min(axis=0), allF.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        for label, (F, t, _) in fronts.items():
            steps = float(t.steps.fillna(0).sum())
            train_tok, eval_tok = float(t.train_tokens.fillna(0).sum()), float(t.eval_tokens.fillna(0).sum())
            secs = float(pd_seconds(t))
            rows.append({"problem": "smollm2-135m" if a.real else "tiny", "provider": label, "device": "cpu", "seed": seed,
                         "n_trials": a.trials,
                         "hv_base": hv(F, base_ref) if base_ref is not None else float("nan"),
                         "hv_union": hv((F - lo) / span, np.full(F.shape[1] if len(F) else 2, 1.1)),
                         "best_eval_loss": float(F[:, 0].min()) if len(F) else float("nan"),
                         "compute_tokens": train_tok + eval_tok / 2, "train_tokens": train_tok,
                         "eval_tokens": eval_tok, "train_steps": steps, "trial_seconds": secs,
                         "n_pruned": int((t.state == "PRUNED").sum()), "n_complete": int((t.state == "COMPLETE").sum()),
                         "reused": label in reused})
            r = rows[-1]
            print(f"seed {seed} {label:>12}: HV(base) {r['hv_base']:.4f}  HV(union) {r['hv_union']:.4f}  best loss "
                  f"{r['best_eval_loss']:.4f}  compute {r['compute_tokens']:.0f} tok  steps {steps:.0f}  trial s {secs:.0f}  "
                  f"pruned {r['n_pruned']}", flush=True)
    if a.append and out_csv.is_file():
        old = [r for r in read_studies(out_csv) if r["seed"] not in {r["seed"] for r in rows}]
        rows = sorted(old + rows, key=lambda r: r["seed"])  # stable: provider order kept
    write_studies(rows, out_csv)
    summarize(rows, out_csv, plot_fn=plot)
    print(f"{time.time() - t0:.0f} s")
    print(f"wrote {out_csv} (+ .png, .json)")
    if not a.workdir:  # a study folder per seed and arm; --workdir keeps them (and --reuse-studies reads them)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def finished(out: Path, trials: int, baseline: bool = True) -> bool:
    """A study of ``trials`` finished trials (and, with ``baseline``, its base-model evaluation) is in ``out``."""
    import pandas as pd

    f = out / "trials_summary.csv"
    return f.is_file() and (not baseline or (out / "baseline.json").is_file()) and len(pd.read_csv(f)) == trials


def pd_seconds(t) -> float:
    import pandas as pd

    return float(pd.to_timedelta(t.duration.astype(str), errors="coerce").dt.total_seconds().fillna(0).sum())


if __name__ == "__main__":
    sys.exit(main())
