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
- ``ttq`` (time to quality): the study a user would write without moopt (``peer_study.py``: Optuna's
  TPE with its MedianPruner, or NSGA-II, driving HF Trainer + PEFT trials over the demo space and data)
  runs ``--peer-trials`` trials; then the guide's ``moopt optimize`` (``--pruning_factor 2``) runs
  until its best weighted score reaches the peer's final best, or for the peer's wall time. Both
  timed from their process launch; the figure is moopt's time to the peer's best / the peer's wall.
- ``release``: what a finished trial leaves held in a warm worker (resident memory, or CUDA allocated
  and reserved with ``--device cuda``) after the base model loaded, at each trial's end and after
  the worker's release, over alternating large and small trials.

    python -P benchmarks/bench_study.py overhead packing        # ~15 min on 2 cores
    python -P benchmarks/bench_study.py demo --seeds 1           # ~20 min a seed
    python -P benchmarks/bench_study.py ttq --seeds 3            # ~10-15 min a seed
    python -P benchmarks/bench_study.py release                  # ~2 min

Writes benchmarks/results/study_cpu.csv (the suite's long schema; rows of the parts run) and prints
the ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, ROOT, read_rows, row, write_rows  # noqa: E402

MOOPT = [sys.executable, "-P", "-m", "moopt.cli"]
DEMO_SPACE = ROOT / "config" / "demo_search_space.yaml"
MODEL = "smollm2-135m"  # --model: the base model of every study (an alias or a folder)


def optimize(out: Path, space: Path, train: Path, val: Path, trials: int, seed: int, warm: bool, *extra: str) -> float:
    """One study through the CLI; its wall time, s."""
    cmd = [*MOOPT, "optimize", "--base_model", MODEL, "--train_file", str(train), "--validation_file",
           str(val), "--output_dir", str(out), "--num_trials", str(trials), "--seed", str(seed), "--search_space",
           str(space), "--overwrite", "--warm_workers" if warm else "--no_warm_workers", *extra]
    t0 = time.time()
    sys.stdout.flush()  # the study's console goes to this script's output as it runs (a killed run's log keeps it)
    subprocess.run(cmd, check=True, cwd=ROOT)
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


def part_overhead(tmp: Path, trials: int, seed: int, device: str = "cpu", baseline: bool = True) -> list[dict]:
    """``device``: the label of the rows (the studies pick the GPU themselves when there is one). ``baseline``
    False: no base-model evaluation (the GPU check's time limit), so the warm arm's first trial loads cold too."""
    rows = []
    space = space_file(tmp, "overhead", DEMO_SPACE, True, {"training": {"num_train_epochs": 0.1}})
    for warm in (False, True):
        out = tmp / f"overhead_{warm}"
        wall = optimize(out, space, ROOT / "data" / "train.jsonl", ROOT / "data" / "val.jsonl", trials, seed, warm,
                        *([] if baseline else ["--no-baseline"]))
        es = [e for e in ends(out) if e["state"] == "COMPLETE"]
        over = [e["duration_s"] - e["train_seconds"] - e.get("eval_seconds", 0.0) for e in es]
        prov = "warm" if warm else "cold"
        for i, (e, o) in enumerate(zip(es, over)):
            rows.append(row("trial_overhead", "demo space, 0.1 epoch", prov, device, round(o, 3), "s", seed, trials,
                            {"trial": e["number"], "warm": int(bool(e.get("warm"))), "model": Path(MODEL).name}))
        rows.append(row("study_wall", "demo space, 0.1 epoch", prov, device, round(wall, 1), "s", seed, trials,
                        {"model": Path(MODEL).name}))
        print(f"overhead {prov}: per trial median {statistics.median(over):.1f} s over {len(over)} trials "
              f"(first {over[0]:.1f} s); study {wall:.0f} s", flush=True)
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
            best_value = float(table.score.max()) if "score" in table else None  # the chosen trial's Best value
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


RELEASE_CONFIGS = [  # alternated: a large trial (all-linear r32, batch 16, checkpointing), then a small one
    {"training": {"learning_rate": 2e-4, "batch_size": 16, "num_train_epochs": 0.2},
     "lora": {"r": 32, "alpha": 64, "dropout": 0.1, "target_modules": "all-linear"},
     "data": {"max_seq_length": 64}, "model": {"gradient_checkpointing": True}},
    {"training": {"learning_rate": 2e-4, "batch_size": 4, "num_train_epochs": 0.1},
     "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "qv"}, "data": {"max_seq_length": 64}},
]


def part_release(tmp: Path, trials: int, seed: int, device: str) -> list[dict]:
    """What a finished trial leaves held in a warm worker: the worker's memory after the base model
    loaded (and ran one short forward pass, so that every weight is paged in), at each trial's end
    (its optimizer and tensors dropped), and after ``WarmBase.release``.
    In this process, as a worker runs them; CPU: resident set (VmRSS); CUDA: allocated and reserved."""
    import gc

    import torch

    from moopt.config import TrialConfig
    from moopt.memory.rss import bound_kernel_caches, current_rss_bytes
    from moopt.records import TrialSpec, TrialState
    from moopt.train.models import resolve_model
    from moopt.train.recipe import load_model_and_tokenizer, run_trial
    from moopt.train.warm import WarmBase, free_memory

    def held() -> dict[str, int]:
        if device == "cuda":
            return {"allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved()}
        return {"rss": current_rss_bytes()}

    bound_kernel_caches()  # as moopt.train.worker.child_env sets it for every worker (before the first matmul)
    model = resolve_model("smollm2-135m")
    warm = WarmBase()
    cfg0 = TrialConfig.from_dict(RELEASE_CONFIGS[0])
    base, _, _ = warm.model_and_tokenizer(model, cfg0, torch.device(device), load_model_and_tokenizer)
    with torch.no_grad():  # page in every weight (safetensors maps them lazily) and start the BLAS
        base(input_ids=torch.ones((1, 8), dtype=torch.long, device=device))
    free_memory()
    loaded = held()
    rows, mib = [], 2**20
    problem = "SmolLM2, warm worker, alternating r32 all-linear / r4 qv"
    for k, v in loaded.items():
        rows.append(row(f"{k}_after_load", problem, "moopt", device, round(v / mib, 1), "MiB", seed, trials))
    for i in range(trials):
        cfg = RELEASE_CONFIGS[i % 2]
        spec = TrialSpec(number=i, config=TrialConfig.from_dict(cfg), base_model=model,
                         train_file=str(ROOT / "data" / "train.jsonl"), validation_file=str(ROOT / "data" / "val.jsonl"),
                         output_dir=str(tmp / f"release_{i}"), seed=seed, device=device, save_adapter=False)
        r = run_trial(spec, warm=warm)
        assert r.state == TrialState.COMPLETE, r.error
        gc.collect()
        end = held()
        warm.release()
        after = held()
        p = {"trial": i, "config": "r32 all-linear b16 ckpt" if i % 2 == 0 else "r4 qv b4"}
        peak = r.metrics["peak_memory_gb"] * 2**30
        for k in loaded:
            rows += [row(f"{k}_trial_end", problem, "moopt", device, round(end[k] / mib, 1), "MiB", seed, trials, p),
                     row(f"{k}_after_release", problem, "moopt", device, round(after[k] / mib, 1), "MiB", seed, trials, p),
                     row(f"{k}_held_after_release", problem, "moopt", device, round((after[k] - loaded[k]) / mib, 1),
                         "MiB", seed, trials, p)]
        rows.append(row("peak_above_load", problem, "moopt", device, round((peak - next(iter(loaded.values()))) / mib, 1),
                        "MiB", seed, trials, p))
        k = next(iter(loaded))
        print(f"release trial {i} ({p['config']}): peak {peak / mib:.0f} MiB, {k} after load {loaded[k] / mib:.0f}, "
              f"at the end {end[k] / mib:.0f}, after release {after[k] / mib:.0f} MiB "
              f"({(after[k] - loaded[k]) / mib:+.0f} MiB held)")
    return rows


def journal_scores(out: Path, start: np.ndarray, objectives) -> list[tuple[float, str, float]]:
    """(absolute end time, state, score) of each finished trial in moopt's journal, in journal order."""
    got = []
    for line in (out / "journal.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e.get("type") != "trial_end":
            continue
        end = datetime.fromisoformat(e["datetime_complete"]).timestamp()
        s = float(objectives.score(objectives.to_minimize(e["metrics"]), start)[0]) if e["state"] == "COMPLETE" else math.nan
        got.append((end, e["state"], s))
    return got


def part_ttq(tmp: Path, trials: int, seeds: list[int], samplers: list[str], moopt_trials: int,
             space: Path = DEMO_SPACE, reuse: Path | None = None, peer_dtype: str = "float32") -> list[dict]:
    """Time to quality: the peer study (peer_study.py) runs its ``trials``; then moopt runs the guide's
    command (``--pruning_factor 2``, ``--num_trials moopt_trials``) until its best score reaches the
    peer's final best (stopped there), for as long as the peer ran (``--time_budget_hours``) or to its
    last trial, whichever is first. ``reuse``: a folder of an earlier run's peer logs
    (peer_<sampler>_<seed>.jsonl) to compare against instead of running the peer again. ``peer_dtype``:
    the peer's model dtype (float32, what a user's from_pretrained gives on a CPU, or bfloat16). moopt
    runs its default, model.dtype auto (bf16 on a CPU with native bf16), recorded in the rows."""
    from moopt.search.objectives import parse_objectives
    from moopt.train.models import resolve_model

    objectives = parse_objectives("multi:eval_loss,eval_accuracy", "0.7,0.3")
    train, val = ROOT / "data" / "train.jsonl", ROOT / "data" / "val.jsonl"
    from moopt.config import resolve_dtype

    model = resolve_model("smollm2-135m")
    moopt_dtype = resolve_dtype("auto", "cpu")
    tag = "" if peer_dtype == "float32" else f"_{peer_dtype}"
    rows = []
    for seed in seeds:
        for sampler in samplers:
            log = tmp / f"peer_{sampler}{tag}_{seed}.jsonl"
            t0 = time.time()
            if reuse is not None:
                log.write_text((reuse / log.name).read_text())
                t0 = json.loads(log.read_text().splitlines()[0])["t0"]  # its launch: ~0.05 s before t0
            else:
                subprocess.run([sys.executable, "-P", str(ROOT / "benchmarks" / "peer_study.py"), "--model", model,
                            "--train_file", str(train), "--validation_file", str(val), "--search_space", str(space),
                                "--num_trials", str(trials), "--seed", str(seed), "--sampler", sampler, "--out", str(log),
                                "--dtype", peer_dtype],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
            events = [json.loads(x) for x in log.read_text().splitlines()]
            start = objectives.to_minimize(events[0]["metrics"])  # the base model's metrics
            peer_end = events[0]["t0"] - t0 + events[-1]["t"]  # from its launch, as moopt's below
            done = [e for e in events if e.get("state") == "COMPLETE"]
            peer_best = max(float(objectives.score(objectives.to_minimize(e["metrics"]), start)[0]) for e in done)
            peer_times = [events[0]["t0"] - t0 + e["t"] for e in events if e.get("event") == "trial"]

            out = tmp / f"ttq_{sampler}_{seed}"
            cmd = [*MOOPT, "optimize", "--base_model", MODEL, "--train_file", str(train), "--validation_file",
                   str(val), "--output_dir", str(out), "--num_trials", str(moopt_trials), "--seed", str(seed),
                   "--search_space", str(space), "--overwrite", "--optimization_objective",
                   "multi:eval_loss,eval_accuracy", "--optimization_weights", "0.7,0.3", "--pruning_factor", "2",
                   "--time_budget_hours", f"{peer_end / 3600:.5f}"]
            t1 = time.time()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
            reached, ends_seen = None, []
            while proc.poll() is None:
                time.sleep(1.0)
                if (out / "journal.jsonl").is_file():
                    ends_seen = journal_scores(out, start, objectives)
                    hit = [t for t, st, sc in ends_seen if st == "COMPLETE" and sc >= peer_best]
                    if hit:
                        reached = min(hit) - t1
                        proc.terminate()
                        proc.wait()
                        break
            moopt_wall = time.time() - t1
            ends_seen = journal_scores(out, start, objectives)
            moopt_best = max((sc for _, st, sc in ends_seen if st == "COMPLETE"), default=math.nan)
            p = {"sampler": sampler, "peer_dtype": peer_dtype, "moopt_dtype": moopt_dtype, "peer_trials": trials, "moopt_num_trials": moopt_trials, "moopt_trials_run": len(ends_seen),
                 "peer_pruned": sum(e.get("state") == "PRUNED" for e in events),
                 "moopt_pruned": sum(st == "PRUNED" for _, st, _ in ends_seen)}
            ratio = reached / peer_end if reached is not None else math.inf
            rows += [row("peer_wall", "demo", f"optuna-{sampler}+trainer+peft", "cpu", round(peer_end, 1), "s", seed, trials, p),
                     row("peer_best_value", "demo", f"optuna-{sampler}+trainer+peft", "cpu", peer_best, "score", seed, trials, p),
                     row("time_to_peer_best", "demo", "moopt", "cpu", round(reached, 1) if reached is not None else math.inf,
                         "s", seed, len(ends_seen), p),
                     row("time_to_quality_ratio", "demo", "moopt", "cpu", round(ratio, 4), "ratio", seed, len(ends_seen), p),
                     row("moopt_best_value", "demo", "moopt", "cpu", moopt_best, "score", seed, len(ends_seen), p)]
            got = f"reached it after {reached:.0f} s" if reached is not None else f"did not reach it in {moopt_wall:.0f} s"
            print(f"ttq {sampler} seed {seed} (peer {peer_dtype}, moopt {moopt_dtype}): peer {len(peer_times)} trials in {peer_end:.0f} s, best {peer_best:.4f}; "
                  f"moopt {got} ({len(ends_seen)} trials, best {moopt_best:.4f}): ratio {ratio:.3f}")
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
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r["what"] == "time_to_quality_ratio":
            q = r["params"]
            key = (q.get("moopt_dtype", "float32"), q.get("peer_dtype", "float32"), q.get("moopt_num_trials"))
            groups.setdefault(key, []).append(r["value"])
    for (md, pd_, n), ttq in groups.items():
        print(f"time to the peer's best, moopt ({md}, --num_trials {n}) / peer ({pd_}) wall, median over "
              f"{len(ttq)} studies (target <= 1/3): {statistics.median(ttq):.3f} (each: {', '.join(f'{x:.2f}' for x in ttq)})")


def main(argv: list[str] | None = None) -> None:
    global MODEL
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parts", nargs="+", choices=["overhead", "packing", "demo", "ttq", "release"])
    ap.add_argument("--trials", type=int, default=6, help="overhead: trials per study (default 6)")
    ap.add_argument("--no-baseline", action="store_true", help="overhead: no base-model evaluation in its studies")
    ap.add_argument("--demo-trials", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=1, help="demo, ttq: seeds --first-seed, +1, ...")
    ap.add_argument("--first-seed", type=int, default=42)
    ap.add_argument("--peer-trials", type=int, default=10, help="ttq: the peer study's trials")
    ap.add_argument("--moopt-trials", type=int, default=0, help="ttq: moopt's --num_trials (default: the peer's)")
    ap.add_argument("--reuse-peer", type=Path, help="ttq: compare against the peer logs in this folder (an earlier --keep)")
    ap.add_argument("--peer-dtype", default="float32", choices=["float32", "bfloat16"],
                    help="ttq: the peer's model dtype (moopt runs model.dtype auto)")
    ap.add_argument("--peer-samplers", nargs="+", default=["tpe"], choices=["tpe", "nsga2"])
    ap.add_argument("--space", type=Path, default=DEMO_SPACE, help="ttq: the search space (default: the demo's)")
    ap.add_argument("--release-trials", type=int, default=6, help="release: trials in one warm worker")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="release: where the trials run; overhead: the rows' label")
    ap.add_argument("--model", default=MODEL, help="overhead, packing, demo: the base model (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=2, help="packing: alternating repeats of each arm")
    ap.add_argument("--out", type=Path, default=RESULTS / "study_cpu.csv")
    ap.add_argument("--keep", type=Path, help="keep the study folders here (default: a temporary folder)")
    a = ap.parse_args(argv)
    MODEL = a.model
    old = [r for r in read_rows(a.out) if r["params"].get("part") not in a.parts] if a.out.is_file() else []
    with tempfile.TemporaryDirectory() as t:
        tmp = a.keep or Path(t)
        tmp.mkdir(parents=True, exist_ok=True)
        rows = []
        for part in a.parts:
            got = {"overhead": lambda: part_overhead(tmp, a.trials, 42, a.device, not a.no_baseline), "packing": lambda: part_packing(tmp, a.repeats, 42),
                   "demo": lambda: part_demo(tmp, a.demo_trials, [a.first_seed + i for i in range(a.seeds)]),
                   "release": lambda: part_release(tmp, a.release_trials, 42, a.device),
                   "ttq": lambda: part_ttq(tmp, a.peer_trials, [a.first_seed + i for i in range(a.seeds)], a.peer_samplers,
                                           a.moopt_trials or a.peer_trials, a.space, a.reuse_peer, a.peer_dtype),
                   }[part]()
            for r in got:
                r["params"] = {"part": part, **r["params"]}
            rows += got
    write_rows(old + rows, a.out)
    ratios(old + rows)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
