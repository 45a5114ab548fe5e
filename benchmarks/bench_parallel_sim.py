"""--parallel_trials on a surrogate of the demo study: free slots take extra configurations, or wait.

With pruning, the trials of one generation end at very different times (pruned at 1/8 of its steps a
trial ends in seconds, a full 2-epoch one minutes later). A study that waits for a generation's last
trial before asking the next one leaves the other slots idle meanwhile; moopt's study instead gives
the free slot an extra individual of the pending generation, chosen by the engine's surrogate with every
result told so far, and tells it with the generation (``Engine.extend``, ``Study.fill_free_slots``).
That changes which configurations are tried, so this benchmark weighs both sides, paired by seed, in
one run:

- the study's wall time (virtual) and the slots' utilisation (trial time / (slots x wall time));
- the compute (training-token equivalents) its trials spent;
- the hypervolume of the COMPLETE front against the base model (as bench_pruning), and the best eval_loss.

The trials are bench_pruning_sim's: the surrogate of the demo study in benchmarks/demo_study.py (``Oracle``,
fit on 53 real studies' trials) gives each configuration's metrics at its rungs and its end; moopt's own Study loop, engine and
pruner run as in a real study. Here the simulated executor also keeps a virtual clock: a trial takes
``OVERHEAD_S`` (process start, model load) + its training tokens / ``TOKENS_PER_S`` + its evaluation tokens
/ (2 x ``TOKENS_PER_S``), as the real demo trials did on 2 cores with 2 slots (trial 1 of a real study:
5,165 training and 1,849 evaluation tokens in 45 s; a trial pruned at its first rung: 11 s); rung
evaluations and trial ends reach the study in the order of that clock, so the pruner sees the rung
arrivals a parallel study sees.

    python benchmarks/bench_parallel_sim.py --seeds 200              # 12 trials, 2 slots, eta 2 (~15 min)
    python benchmarks/bench_parallel_sim.py --seeds 100 --trials 30
    python benchmarks/bench_parallel_sim.py --summarize [--out CSV]  # re-summarise (and re-plot) a CSV

Writes benchmarks/results/parallel_sim[_t<trials>]_cpu.csv (benchmarks/common.py's schema: a row per seed,
arm (provider wait / fill) and figure: hv_base, wall_s, utilisation, ...; params slots and eta) and a PNG.
"""

from __future__ import annotations

import argparse
import heapq
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, ROOT, hv, long, pyplot, read_rows, wide, write_rows  # noqa: E402
from demo_study import DATA, N_RUNG, N_TRAIN, N_VAL, SPACE, Oracle, SimExecutor, study_record, trial_plan  # noqa: E402

OVERHEAD_S = 6.0  # process start and model load per trial
TOKENS_PER_S = 130.0  # training tokens per second of one of 2 slots on 2 cores (real: 100-140)
# a study's figures, one CSV row each (what: unit)
WHATS = {"hv_base": "HV", "best_eval_loss": "loss", "compute_tokens": "tokens", "n_pruned": "count",
         "n_complete": "count", "wall_s": "s", "trial_s": "s", "utilisation": "fraction"}


class ClockSimExecutor(SimExecutor):
    """bench_pruning_sim's simulated trials (its SimExecutor) on a virtual clock: rungs and ends arrive
    in time order."""

    def __init__(self, on_progress=None, on_rung=None, **_):
        super().__init__(on_progress=on_progress, on_rung=on_rung)
        self.now = 0.0
        self.events: list[tuple[float, int, int, int]] = []  # (time, order, trial number, rung index or -1 = end)
        self.trials: dict[int, dict] = {}
        self.order = 0
        self.log: list[tuple[int, float, float]] = []  # (number, start, end)
        ClockSimExecutor.last = self

    def submit(self, spec, slot) -> None:
        flat, total, rungs = trial_plan(spec)
        tok_per_step = self.oracle.tokens_per_epoch * spec.config.training.num_train_epochs / total
        tok_per_ex = self.oracle.tokens_per_epoch / N_TRAIN
        self.trials[spec.number] = {"flat": flat, "total": total, "start": self.now, "tok_per_step": tok_per_step,
                                    "eval_tokens": 0.0, "rungs": rungs, "n_val_tok": N_VAL * tok_per_ex,
                                    "n_rung_tok": N_RUNG * tok_per_ex}
        rung_eval_s = N_RUNG * tok_per_ex / (2 * TOKENS_PER_S)
        for i, (step, _, _) in enumerate(rungs):  # training up to the rung, then its evaluation
            self._push(self.now + OVERHEAD_S + step * tok_per_step / TOKENS_PER_S + (i + 1) * rung_eval_s, spec.number, i)
        end = (self.now + OVERHEAD_S + total * tok_per_step / TOKENS_PER_S + len(rungs) * rung_eval_s
               + N_VAL * tok_per_ex / (2 * TOKENS_PER_S))
        self._push(end, spec.number, -1)

    def _push(self, at: float, number: int, what: int) -> None:
        self.order += 1
        heapq.heappush(self.events, (at, self.order, number, what))

    def next_result(self, timeout=None):
        from moopt.records import TrialResult

        while self.events:
            at, _, number, what = heapq.heappop(self.events)
            t = self.trials.get(number)
            if t is None:  # ended earlier (pruned): a stale event
                continue
            self.now = at
            res = TrialResult(number=number, state="COMPLETE", total_steps=t["total"], backend="sim")
            if what >= 0:
                step, k, level = t["rungs"][what]
                m = self.oracle(t["flat"], level, self.seed)
                t["eval_tokens"] += t["n_rung_tok"]
                if self.on_rung is None or self.on_rung(number, step, m, k):
                    continue
                res.state, res.metrics, res.steps = "PRUNED", m, step
                res.error = f"pruned at step {step}"
            else:
                res.metrics, res.steps = self.oracle(t["flat"], 3, self.seed), t["total"]
                t["eval_tokens"] += t["n_val_tok"]
            res.train_tokens = round(t["tok_per_step"] * res.steps)
            res.eval_tokens = round(t["eval_tokens"])
            del self.trials[number]
            self.log.append((number, t["start"], at))
            return res
        return None

    def running(self) -> int:
        return len(self.trials)


def run_study(oracle, out: Path, seed: int, trials: int, eta: float, slots: int, fill: bool) -> tuple[dict, dict]:
    """One simulated study; its finished trials' end events and its virtual timing."""
    from rich.console import Console

    from moopt.journal import replay
    from moopt.search.objectives import parse_objectives
    from moopt.search.space import load_space
    from moopt.study.scheduler import Study, StudyConfig

    cfg = StudyConfig(base_model="sim", model_path="sim", train_file=str(ROOT / "data" / "train.jsonl"),
                      validation_file=str(ROOT / "data" / "val.jsonl"), output_dir=str(out), num_trials=trials,
                      objectives=parse_objectives("multi:eval_loss,eval_accuracy", None), space=load_space(SPACE),
                      seed=seed, pruning_factor=eta, parallel_trials=slots, overwrite=True, baseline=False)
    ClockSimExecutor.oracle, ClockSimExecutor.seed = oracle, seed
    Study(cfg, console=Console(file=io.StringIO()), executor=ClockSimExecutor, write_results=lambda *a, **k: {},
          fill_free_slots=fill).run()
    log = ClockSimExecutor.last.log
    wall = max(e for _, _, e in log) - min(s for _, s, _ in log)
    trial_s = sum(e - s for _, s, e in log)
    return replay(out).finished, {"wall_s": wall, "trial_s": trial_s, "utilisation": trial_s / (slots * wall)}


def boot_ci(x: np.ndarray, stat=np.mean, n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval of ``stat`` (4,000 resamples, one at a time: the figures in the README)."""
    rng = np.random.default_rng(seed)
    b = [stat(x[rng.integers(len(x), size=len(x))]) for _ in range(n)]
    return float(np.percentile(b, 2.5)), float(np.percentile(b, 97.5))


def read_runs(path: Path):
    """The CSV as one row per study (seed, arm, trials, slots, eta and the WHATS), a DataFrame."""
    import pandas as pd

    return pd.DataFrame(wide(read_rows(path))).rename(columns={"provider": "arm", "n_trials": "trials"})


def summarize(df, out_png: Path | None) -> str:
    w = df[df.arm == "wait"].set_index("seed")
    f = df[df.arm == "fill"].set_index("seed").loc[w.index]
    wall_ratio = (f.wall_s / w.wall_s).to_numpy()
    d_hv = (100 * (1 - f.hv_base / w.hv_base)).to_numpy()  # % hypervolume lost by filling (negative: gained)
    ci_wall, ci_med, ci_mean = boot_ci(wall_ratio, np.median), boot_ci(d_hv, np.median), boot_ci(d_hv)
    lines = [f"{len(w)} seeds x {int(df.trials.iloc[0])} trials, {int(df.slots.iloc[0])} slots, eta {df.eta.iloc[0]:g}",
             f"slot utilisation: wait {w.utilisation.mean():.1%}, fill {f.utilisation.mean():.1%} (means)",
             (f"wall time, fill / wait: median {np.median(wall_ratio):.3f} (95% CI {ci_wall[0]:.3f}-{ci_wall[1]:.3f}), "
              f"summed {f.wall_s.sum() / w.wall_s.sum():.3f}"),
             (f"hypervolume lost by filling: median per seed {np.median(d_hv):.2f}% (95% CI {ci_med[0]:.2f}-{ci_med[1]:.2f}), "
              f"mean {d_hv.mean():.2f}% ({ci_mean[0]:.2f}-{ci_mean[1]:.2f})"),
             f"best eval_loss median: wait {w.best_eval_loss.median():.4f}, fill {f.best_eval_loss.median():.4f}",
             f"compute (training-token equivalents) fill / wait: {f.compute_tokens.sum() / w.compute_tokens.sum():.3f}"]
    if out_png is not None:
        plt = pyplot()
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
        a1.hist(wall_ratio, bins=30, color="C0")
        a1.axvline(1, color="k", lw=0.8)
        a1.set_xlabel("wall time, fill / wait (per seed)")
        a1.set_title(f"median {np.median(wall_ratio):.2f}; utilisation {w.utilisation.mean():.0%} -> {f.utilisation.mean():.0%}")
        a2.hist(d_hv, bins=30, color="C1")
        a2.axvline(0, color="k", lw=0.8)
        a2.set_xlabel("hypervolume lost by filling, % (per seed)")
        a2.set_title(f"median {np.median(d_hv):.2f}%, mean {d_hv.mean():.2f}%")
        fig.suptitle(f"--parallel_trials {int(df.slots.iloc[0])}, free slots fill vs wait (surrogate of the demo study, "
                     f"{len(w)} seeds, {int(df.trials.iloc[0])} trials)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out_png, dpi=110)
        plt.close(fig)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--eta", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=None, help="CSV (default benchmarks/results/parallel_sim[_t<trials>]_cpu.csv)")
    ap.add_argument("--summarize", action="store_true", help="only re-summarise (and re-plot) the existing CSV")
    a = ap.parse_args(argv)
    if a.seeds < 1 or a.trials < 1 or a.slots < 2:
        print("error: --seeds and --trials must be >= 1 and --slots >= 2", file=sys.stderr)
        return 2
    out = a.out or RESULTS / f"parallel_sim{f'_t{a.trials}' if a.trials != 12 else ''}_cpu.csv"
    if a.summarize:
        if not out.is_file():
            print(f"error: {out}: no results to summarise (run the benchmark first)", file=sys.stderr)
            return 2
        print(summarize(read_runs(out), out.with_suffix(".png")))
        return 0
    oracle = Oracle(pd.read_csv(DATA))
    ref = np.array([oracle.base["eval_loss"], -oracle.base["eval_accuracy"]])
    rows, t0 = [], time.time()
    with tempfile.TemporaryDirectory(prefix="bench_parallel_sim_") as tmp:
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            for arm, fill in (("wait", False), ("fill", True)):
                finished, timing = run_study(oracle, Path(tmp) / arm, seed, a.trials, a.eta, a.slots, fill)
                row, F, _ = study_record(oracle, finished, seed, a.trials, arm)
                rows.append({"problem": "smollm2-135m surrogate", "device": "sim", "seed": seed, "arm": arm, "trials": a.trials, "slots": a.slots, "eta": a.eta,
                             "hv_base": hv(F, ref), "best_eval_loss": row["best_eval_loss"],
                             "compute_tokens": row["compute_tokens"], "n_pruned": row["n_pruned"],
                             "n_complete": row["n_complete"], **{k: round(v, 3) for k, v in timing.items()}})
            if (seed - a.first_seed + 1) % 20 == 0:
                print(f"{seed - a.first_seed + 1}/{a.seeds} seeds, {time.time() - t0:.0f} s", flush=True)
    write_rows(long(rows, WHATS, {"problem": "problem", "provider": "arm", "device": "device", "seed": "seed",
                                  "n_trials": "trials"}, params=("slots", "eta")), out)
    df = read_runs(out)
    print(summarize(df, out.with_suffix(".png")))
    print(f"wrote {out} (+ .png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
