"""How busy --parallel_trials keeps its slots: studies' wall time against the trial time they ran.

For each study folder given, from its trials_summary.csv: the study's wall time (first trial start to
last trial end), the trial seconds (the sum of every trial's start-to-end time) and the slot
utilisation = trial seconds / (slots x wall time). With pruning, trials of one generation end at very
different times (a pruned trial in seconds, a full one later); a study that waits for a generation's
slowest trial before asking the next one leaves slots idle.

    python benchmarks/bench_parallel.py --slots 2 --out benchmarks/results/parallel_smollm2_cpu.csv \\
        old=runs/ab_old_s5 new=runs/ab_new_s5 ...

Each argument is LABEL=FOLDER; rows with the same label are summed in the printed summary. ``--out``
writes benchmarks/common.py's schema: per study (problem = its folder's name, provider = LABEL, params
slots) trials, complete, pruned (count), wall_s, trial_s (s) and utilisation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import long, write_rows  # noqa: E402

WHATS = {"trials": "count", "complete": "count", "pruned": "count", "wall_s": "s", "trial_s": "s", "utilisation": "fraction"}


def study_row(label: str, folder: Path, slots: int) -> dict:
    df = pd.read_csv(folder / "trials_summary.csv", parse_dates=["datetime_start", "datetime_complete"])
    ran = df[df.state != "INFEASIBLE"]  # never trained: no slot time
    trial_s = (ran.datetime_complete - ran.datetime_start).dt.total_seconds().sum()
    wall = (ran.datetime_complete.max() - ran.datetime_start.min()).total_seconds()
    return {"label": label, "study": folder.name, "device": "cpu", "trials": len(df), "complete": int((df.state == "COMPLETE").sum()),
            "pruned": int((df.state == "PRUNED").sum()), "slots": slots, "wall_s": round(wall, 1),
            "trial_s": round(trial_s, 1), "utilisation": round(trial_s / (slots * wall), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", help="LABEL=FOLDER")
    parser.add_argument("--slots", type=int, required=True, help="the studies' --parallel_trials")
    parser.add_argument("--out", type=Path, help="CSV to write")
    args = parser.parse_args(argv)
    rows = []
    for item in args.studies:
        label, _, folder = item.partition("=")
        if not folder or not (Path(folder) / "trials_summary.csv").is_file():
            print(f"error: {item}: expected LABEL=FOLDER with a trials_summary.csv", file=sys.stderr)
            return 2
        rows.append(study_row(label, Path(folder), args.slots))
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    tot = df.groupby("label", sort=False)[["wall_s", "trial_s"]].sum()
    tot["utilisation"] = tot.trial_s / (args.slots * tot.wall_s)
    print("\nsummed per label:")
    print(tot.round(3).to_string())
    if args.out:
        write_rows(long(rows, WHATS, {"problem": "study", "provider": "label", "device": "device"}, params=("slots",)),
                   args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
