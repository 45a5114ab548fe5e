"""How well a time budget's duration prediction knows a trial's tokens/s before it runs.

``--time_budget_hours`` starts a trial only if its predicted duration fits what is left
(``moopt.study.scheduler.Study.fits_time``): an epoch's tokens over the predicted tokens/s
(``Study.tokens_per_s``). Too optimistic, and a trial is cut by the deadline, its compute lost; too
pessimistic, and the study stops with time left. This replays finished studies: each COMPLETE trial's
tokens/s is predicted from the trials that finished before it in its study (what the scheduler knew), by
today's predictor and by the one before it (a power law in the micro-batch size alone, per kind), and the
log errors are summarised (positive: predicted faster than it ran).

    python -P benchmarks/bench_time_prediction.py runs/hpo runs/hpo-2 ...   # study folders (journal.jsonl)

Writes ``benchmarks/results/time_prediction_cpu.csv`` (--out), benchmarks/common.py's schema: per predictor
the median, p90 and max |log error|, the mean signed log error, and the number of trials.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, write_rows  # noqa: E402


def batch_power_law(tcfg, durations) -> float:
    """The predictor before: per kind, a power law in the micro-batch size (exponent clipped to [0, 1])
    when the trials span two sizes, else their median."""
    from moopt.study.scheduler import _speed_key

    batch, kind = _speed_key(tcfg)
    same = [d for d in durations if d.kind == kind] or durations
    if len({d.batch for d in same}) >= 2:
        x, y = np.log([d.batch for d in same]), np.log([d.tokens_per_s for d in same])
        slope = float(np.clip(np.polyfit(x, y, 1)[0], 0.0, 1.0))
        return float(np.exp(np.mean(y - slope * x) + slope * math.log(batch)))
    return float(np.median([d.tokens_per_s for d in same]))


def replay_errors(folders: list[Path]) -> tuple[dict[str, list[float]], int]:
    from moopt.config import TrialConfig
    from moopt.journal import replay
    from moopt.records import TrialState
    from moopt.study.scheduler import Study

    predictors = {"moopt": Study.tokens_per_s, "batch_power_law": batch_power_law}
    errors: dict[str, list[float]] = {k: [] for k in predictors}
    studies = 0
    for folder in folders:
        finished = replay(folder).finished
        ends = sorted(finished.values(), key=lambda e: e.datetime_complete or "")
        durations = []
        for e in ends:
            if not e.tokens_per_s or not e.train_tokens or not e.total_steps or not e.config:
                continue
            if durations and e.state == TrialState.COMPLETE:
                tcfg = TrialConfig.from_dict(e.config)
                for name, predict in predictors.items():
                    errors[name].append(math.log(predict(tcfg, durations) / e.tokens_per_s))
            durations += Study.duration_sample(e)
        studies += bool(ends)
    return errors, studies


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="study output folders (each with its journal.jsonl)")
    ap.add_argument("--out", type=Path, default=RESULTS / "time_prediction_cpu.csv")
    a = ap.parse_args(argv)
    folders = [f for f in a.folders if (f / "journal.jsonl").is_file()]
    errors, studies = replay_errors(folders)
    rows = []
    for name, errs in errors.items():
        e = np.array(errs)
        if not len(e):
            continue
        figures = {"median_abs_log_error": np.median(np.abs(e)), "p90_abs_log_error": np.quantile(np.abs(e), 0.9),
                   "max_abs_log_error": np.abs(e).max(), "mean_signed_log_error": e.mean()}
        print(f"{name:16s} {len(e)} trials of {studies} studies: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
        rows += [{"what": k, "problem": f"{studies}_studies", "provider": name, "device": "cpu", "value": round(float(v), 4),
                  "unit": "log", "n_trials": len(e)} for k, v in figures.items()]
    write_rows(rows, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
