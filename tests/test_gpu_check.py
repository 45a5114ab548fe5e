"""The GPU check cannot rot: its dry run (same script, same steps and outputs; tiny stand-ins, torch
path, CPU) runs end to end on every CI run, so a broken step shows here, not on the day a GPU is lent."""

import csv
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["env", "models", "gpu_tests", "memory", "memory_gate", "warm_workers", "kernels", "bench_lora", "bench_trial"]


def test_dry_run_runs_every_step_and_publishes_results(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "TRITON_INTERPRET")}
    proc = subprocess.run(
        [sys.executable, "-P", "benchmarks/gpu_check.py", "--dry-run", "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    summary = json.loads((out / "summary.json").read_text())
    failed = {s["step"]: s["tail"] for s in summary["steps"] if s["status"] != "ok"}
    assert proc.returncode == 0 and not failed, f"{failed}\n{proc.stdout[-2000:]}"
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert summary["dry_run"] is True and summary["env"]["date"] and "nvidia_smi" in summary["env"]
    assert summary["env"]["import_errors"] == {}

    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
        assert {f"{s}.log" for s in STEPS} <= names
        assert {"env.json", "kernels_cpu.csv", "lora_cpu.csv", "trial_cpu.csv", "memory_cpu.csv", "memory_gate_cpu.csv",
                "study_overhead_cpu.csv", "gpu_tests.xml"} <= names

        def rows(name):
            return list(csv.DictReader(io.TextIOWrapper(tar.extractfile(f"gpu_check/{name}"))))

        kernels = rows("kernels_cpu.csv")
        assert kernels and all(r["ok"] == "True" for r in kernels)
        assert {r["provider"] for r in rows("lora_cpu.csv")} == {"base", "peft", "moopt"}
        assert {r["provider"] for r in rows("trial_cpu.csv")} == {"moopt", "peer"}
        assert any(r["provider"] == "measured" for r in rows("memory_cpu.csv"))
        gate = rows("memory_gate_cpu.csv")  # a --memory_constraint study through the CLI: every trial has a row
        assert len([r for r in gate if r["what"] == "peak_memory"]) == 4
        assert any(r["problem"] == "trained_over_budget" for r in gate)
        overhead = rows("study_overhead_cpu.csv")
        assert {r["provider"] for r in overhead if r["what"] == "trial_overhead"} == {"warm", "cold"}
        # the studies' consoles reach their step's log as they run: a step killed by its limit still shows its trials
        for step in ("memory_gate", "warm_workers"):
            log = tar.extractfile(f"gpu_check/{step}.log").read().decode()
            assert "\nTrial 0 " in log and "\nTrial 1 " in log, log[-2000:]  # started, or ruled out by the gate


def test_every_moopt_variable_the_benchmarks_set_is_one_moopt_reads():
    """The GPU check once set MOOPT_CACHE_DIR, which nothing reads: its conversions went to the lent machine's
    home instead of the check's own folder, and the dry run cannot tell."""
    import re

    def names(paths):
        return {m for p in paths for m in re.findall(r"MOOPT_[A-Z_]+", p.read_text(encoding="utf-8"))}

    set_here = names([*ROOT.joinpath("benchmarks").rglob("*.py"), *ROOT.joinpath("benchmarks").rglob("*.sh")])
    read = names(ROOT.joinpath("moopt").rglob("*.py"))
    assert set_here and set_here <= read, set_here - read
