"""Whole studies: what warm workers and packed sequences change, side by side in one run.

Three parts, each real `moopt optimize` runs of SmolLM2-135M on the CPU, through the CLI:

- ``overhead``: short trials (a tenth of an epoch of the bundled data) so that a trial's cost is mostly
  what is not training or evaluation; a study per arm, warm workers on and off. Per trial:
  overhead = the study's wall time for it (``duration_s``) - ``train_seconds`` - ``eval_seconds``.
- ``packing``: one configuration trained on the long-tailed data set (``scripts/make_data.py
  --long-tail``: 15 to ~1,000 tokens, median 28), packed and padded, alternating (``--repeats``).
  Training tokens per second (real tokens, not padding), the mean training loss per label token over
  the same steps (same examples per step: it must match) and the final eval_loss.
- ``demo``: the demo study (``scripts/demo.sh``'s command, ``--num_trials`` trials) as moopt ran it
  before warm workers and packing (``--no_warm_workers``, ``data.packing: false``) and as it runs now:
  wall time, trials per hour, training tokens per second, best eval_loss and best value.

    python -P benchmarks/bench_study.py overhead packing        # ~15 min on 2 cores
    python -P benchmarks/bench_study.py demo --seeds 1           # ~20 min a seed

Writes benchmarks/results/study_cpu.csv (the suite's long schema; rows of the parts run) and prints
the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, ROOT, read_rows, row, write_rows  # noqa: E402

MOOPT = [sys.executable, "-P", "-m", "moopt.cli"]
DEMO_SPACE = ROOT / "config" / "demo_search_space.yaml"


def optimize(out: Path, space: Path, train: Path, val: Path, trials: int, seed: int, warm: bool, *extra: str) -> float:
    """One study through the CLI; its wall time, s."""
    cmd = [*MOOPT, "optimize", "--base_model", "smollm2-135m", "--train_file", str(train), "--validation_file",
           str(val), "--output_dir", str(out), "--num_trials", str(trials), "--seed", str(seed), "--search_space",
           str(space), "--overwrite", "--warm_workers" if warm else "--no_warm_workers", *extra]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.time() - t0


def ends(out: Path) -> list[dict]:
    from moopt.journal import replay

    return [e.to_event() if hasattr(e, "to_event") else dict(e) for e in replay(out).finished.values()]


def space_file(tmp: Path, name: str, base: Path | None, packing: bool, fixed: dict | None = None) -> Path:
    import yaml

    spec = yaml.safe_load(base.read_text()) if base else {}
    for section, values in (fixed or {}).items():
        spec.setdefault(section, {}).update(values)
    spec.setdefault("data", {})["packing"] = packing
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def part_overhead(tmp: Path, trials: int, seed: int) -> list[dict]:
    rows = []
    space = space_file(tmp, "overhead", DEMO_SPACE, True, {"training": {"num_train_epochs": 0.1}})
    for warm in (False, True):
        out = tmp / f"overhead_{warm}"
        wall = optimize(out, space, ROOT / "data" / "train.jsonl", ROOT / "data" / "val.jsonl", trials, seed, warm)
        es = [e for e in ends(out) if e["state"] == "COMPLETE"]
        over = [e["duration_s"] - e["train_seconds"] - e.get("eval_seconds", 0.0) for e in es]
        prov = "warm" if warm else "cold"
        for i, (e, o) in enumerate(zip(es, over)):
            rows.append(row("trial_overhead", "demo space, 0.1 epoch", prov, "cpu", round(o, 3), "s", seed, trials,
                            {"trial": e["number"], "warm": int(bool(e.get("warm")))}))
        rows.append(row("study_wall", "demo space, 0.1 epoch", prov, "cpu", round(wall, 1), "s", seed, trials))
        print(f"overhead {prov}: per trial median {statistics.median(over):.1f} s over {len(over)} trials "
              f"(first {over[0]:.1f} s); study {wall:.0f} s")
    return rows


def part_packing(tmp: Path, repeats: int, seed: int) -> list[dict]:
    longtail = ROOT / "data" / "longtail"
    if not (longtail / "train.jsonl").is_file():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_data.py"), "--long-tail"], check=True)
    fixed = {"training": {"learning_rate": 2e-4, "batch_size": 8, "num_train_epochs": 0.2, "warmup_ratio": 0.0},
             "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
             "data": {"max_seq_length": 512}}
    rows = []
    for rep in range(repeats):
        for packing in (False, True):
            space = space_file(tmp, f"pack_{packing}", None, packing, fixed)
            out = tmp / f"pack_{packing}_{rep}"
            optimize(out, space, longtail / "train.jsonl", longtail / "val.jsonl", 1, seed, True, "--no-baseline")
            (e,) = ends(out)
            curve = json.loads((out / "trial_results" / "trial_0" / "metrics.json").read_text())["curve"]
            prov = "packed" if packing else "padded"
            p = {"repeat": rep, "steps": e["steps"], "max_seq_length": 512, "batch_size": 8}
            rows += [row("train_tokens_per_s", "longtail, SmolLM2, r16 all-linear", prov, "cpu", round(e["tokens_per_s"], 2), "tokens/s", seed, 1, p),
                     row("train_loss_mean", "longtail, SmolLM2, r16 all-linear", prov, "cpu",
                         statistics.fmean(c["train_loss"] for c in curve), "nats/token", seed, 1, p),
                     row("eval_loss", "longtail, SmolLM2, r16 all-linear", prov, "cpu", e["metrics"]["eval_loss"], "nats/token", seed, 1, p)]
            print(f"packing {prov} repeat {rep}: {e['tokens_per_s']:.0f} tokens/s, {e['steps']} steps, "
                  f"mean train loss {rows[-2]['value']:.5f}, eval_loss {e['metrics']['eval_loss']:.5f}")
    return rows


def part_demo(tmp: Path, trials: int, seeds: list[int]) -> list[dict]:
    rows = []
    for seed in seeds:
        for arm, warm, packing in (("before", False, False), ("now", True, True)):
            space = space_file(tmp, f"demo_{arm}", DEMO_SPACE, packing)
            out = tmp / f"demo_{arm}_{seed}"
            wall = optimize(out, space, ROOT / "data" / "train.jsonl", ROOT / "data" / "val.jsonl", trials, seed, warm,
                            "--optimization_objective", "multi:eval_loss,eval_accuracy", "--optimization_weights", "0.7,0.3")
            es = [e for e in ends(out) if e["state"] == "COMPLETE"]
            tokens = sum(e["train_tokens"] for e in es)
            train_s = sum(e["train_seconds"] for e in es)
            import pandas as pd

            table = pd.read_csv(out / "trials_summary.csv")
            best_value = float(table.loc[table.rank_score.idxmax(), "score"]) if "rank_score" in table else None
            best = min(e["metrics"]["eval_loss"] for e in es)
            p = {"space": "config/demo_search_space.yaml", "packing": int(packing), "warm_workers": int(warm)}
            rows += [row("study_wall", "demo", arm, "cpu", round(wall, 1), "s", seed, trials, p),
                     row("trials_per_hour", "demo", arm, "cpu", round(3600 * trials / wall, 2), "trials/h", seed, trials, p),
                     row("train_tokens_per_s", "demo", arm, "cpu", round(tokens / train_s, 2), "tokens/s", seed, trials, p),
                     row("best_eval_loss", "demo", arm, "cpu", best, "nats/token", seed, trials, p)]
            if best_value is not None:
                rows.append(row("best_value", "demo", arm, "cpu", best_value, "score", seed, trials, p))
            print(f"demo {arm} seed {seed}: {wall:.0f} s, {3600 * trials / wall:.1f} trials/h, "
                  f"{tokens / train_s:.0f} train tokens/s, best eval_loss {best:.4f}")
    return rows


def ratios(rows: list[dict]) -> None:
    def med(what, prov, problem=None):
        v = [r["value"] for r in rows if r["what"] == what and r["provider"] == prov and (problem is None or r["problem"] == problem)]
        return statistics.median(v) if v else None

    pairs = [("trial_overhead", "warm", "cold", "per-trial overhead, warm / cold (target <= 0.20)"),
             ("train_tokens_per_s", "packed", "padded", "training tokens/s on the long-tailed data, packed / padded (target >= 1.5)"),
             ("train_loss_mean", "packed", "padded", "mean training loss per token, packed / padded (same examples: ~1)"),
             ("study_wall", "before", "now", "demo study wall time, before / now (target >= 1.3)")]
    for what, a, b, text in pairs:
        x, y = med(what, a), med(what, b)
        if x is not None and y:
            print(f"{text}: {x / y:.3f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="+", choices=["overhead", "packing", "demo"])
    ap.add_argument("--trials", type=int, default=6, help="overhead: trials per study (default 6)")
    ap.add_argument("--demo-trials", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=1, help="demo: seeds 42, 43, ...")
    ap.add_argument("--repeats", type=int, default=2, help="packing: alternating repeats of each arm")
    ap.add_argument("--out", type=Path, default=RESULTS / "study_cpu.csv")
    ap.add_argument("--keep", type=Path, help="keep the study folders here (default: a temporary folder)")
    a = ap.parse_args(argv)
    old = [r for r in read_rows(a.out) if r["params"].get("part") not in a.parts] if a.out.is_file() else []
    with tempfile.TemporaryDirectory() as t:
        tmp = a.keep or Path(t)
        tmp.mkdir(parents=True, exist_ok=True)
        rows = []
        for part in a.parts:
            got = {"overhead": lambda: part_overhead(tmp, a.trials, 42), "packing": lambda: part_packing(tmp, a.repeats, 42),
                   "demo": lambda: part_demo(tmp, a.demo_trials, [42 + i for i in range(a.seeds)])}[part]()
            for r in got:
                r["params"] = {"part": part, **r["params"]}
            rows += got
    write_rows(old + rows, a.out)
    ratios(old + rows)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
