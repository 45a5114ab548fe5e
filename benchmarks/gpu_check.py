"""The GPU check: one prepared run on a lent GPU machine as it is (its own python3, no venv, no network).

    bash benchmarks/gpu_check.sh                # on the GPU machine, from the repo root; < 9 min on an H200
    bash benchmarks/gpu_check.sh --dry-run      # the same steps on a CPU: tiny models, torch path (CI runs it)

Steps, each a subprocess with its own time limit (seconds on the GPU), results copied to $OUT as soon
as it ends (gpu_check.tar.gz with every step's files, summary.json, gpu_check.log):
  env          GPU name, driver, date, package versions (env.json); missing packages installed from the
               wheels in benchmarks/wheels/ (scripts/fetch_gpu_wheels.sh) into a local folder       30
  models       random-weight stand-ins from configs: SmolLM2-135M and Llama-3.2-1B shapes        75
  gpu_tests    pytest -m gpu tests/kernels tests/test_quantization.py tests/test_probe.py          90
  memory       estimator vs measured peaks (NVML), SmolLM2 shape, unquantised + 4/8-bit           150
  memory_gate  a --memory_constraint study, budget at the midpoint of the space's estimated peaks,
               8 trials on the SmolLM2-shaped stand-in: trainings over the budget (bench_memory_gate) 170
  warm_workers per-trial overhead (the base model's load) of the 1B stand-in, warm vs cold,
               3 trials a study, no base-model evaluation                                      150
  kernels      bf16 triton vs an fp64 reference at Llama-3-8B widths (check_kernels.py)            45
  bench_lora   LoRA linear fwd+bwd vs PEFT vs the frozen base, M = 8192, r 16/64 (--quick)         60
  bench_trial  one training step on the Llama-3.2-1B stand-in: moopt vs HF Trainer + PEFT          110
The whole check stops at --budget (550 s on a GPU): a step gets at most what is left, and one that
has nothing left is recorded as skipped. The limits add up to 880 s, but the H200 ran the first steps in
far less (2026-12-04: env to bench_trial in ~200 s, memory 90 s; a 3-trial SmolLM2 study 70 s, its cold
first trial 27 s, the next 4-9 s, a memory probe 13-14 s); the steps no GPU has measured yet come
first, the last three (measured on that H200) are the first a short budget skips. The studies' consoles
go to their step's log as they run, so a step stopped by its limit still shows each trial it finished.
The dry run triples each limit and has no budget.

The check uses the interpreter that runs it (``python3`` on the GPU machine) with ``-P`` and a
PYTHONPATH folder holding links to moopt/ and kernels/moopt_kernels/ plus the installed wheels;
nothing is installed into that interpreter. Exit code: the number of steps that failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "benchmarks" / "wheels"
# import name -> what provides it (the wheels scripts/fetch_gpu_wheels.sh downloads)
NEEDED = {"pymoo": "pymoo", "bitsandbytes": "bitsandbytes", "gguf": "gguf"}


class Check:
    def __init__(self, dry_run: bool, work: Path, out: Path | None, python: str, budget_s: float | None):
        self.dry, self.work, self.out, self.python = dry_run, work, out, python
        self.deadline = time.time() + budget_s if budget_s else None
        self.res = work / "results"
        self.site = work / "site"
        self.models = work / "models"
        self.steps: list[dict] = []
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.res.mkdir(parents=True, exist_ok=True)
        self.site.mkdir(parents=True, exist_ok=True)
        for name, src in (("moopt", ROOT / "moopt"), ("moopt_kernels", ROOT / "kernels" / "moopt_kernels")):
            link = self.site / name
            if not link.exists():
                link.symlink_to(src, target_is_directory=True)
        self.env = dict(os.environ, PYTHONPATH=str(self.site),
                        TOKENIZERS_PARALLELISM="false", MOOPT_CACHE=str(work / "cache"),
                        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        if dry_run:  # a CPU run: the torch path, small thread counts on a shared machine
            self.env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="2")
            self.env.pop("TRITON_INTERPRET", None)

    # -- running ---------------------------------------------------------------------------------

    def step(self, name: str, limit: float, argv: list[str]) -> bool:
        """Run ``argv`` (a list; "PY" stands for the interpreter with -P) for at most ``limit`` s, log its
        output to results/<name>.log (each step writes its own files into results/), then publish to $OUT."""
        argv = [a for part in argv for a in ([self.python, "-P"] if part == "PY" else [part])]
        log_path = self.res / f"{name}.log"
        t0 = time.time()
        status = "ok"
        with open(log_path, "w") as log:
            log.write("$ " + " ".join(argv) + "\n")
            log.flush()
            proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # its own process group: a timeout kills workers too
            try:
                rc = proc.wait(timeout=limit)
                status = "ok" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
                status = "timeout"
        tail = log_path.read_text(errors="replace").splitlines()[-12:]
        self.steps.append({"step": name, "status": status, "rc": rc, "seconds": round(time.time() - t0, 1),
                           "limit_s": limit, "log": f"results/{name}.log", "tail": tail})
        print(f"[gpu_check] {name}: {status} (rc {rc}, {time.time() - t0:.0f} s of {limit:.0f})", flush=True)
        self.publish()
        return status == "ok"

    def publish(self) -> None:
        """results/summary.json, and $OUT/{gpu_check.tar.gz, summary.json} (at most 8 files come back)."""
        summary = {"dry_run": self.dry, "started": self.started, "steps": self.steps,
                   "failed": [s["step"] for s in self.steps if s["status"] != "ok"]}
        env_file = self.res / "env.json"
        if env_file.is_file():
            summary["env"] = json.loads(env_file.read_text())
        (self.res / "summary.json").write_text(json.dumps(summary, indent=1))
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "gpu_check.tar.gz.part"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.res, arcname="gpu_check")
        tmp.replace(self.out / "gpu_check.tar.gz")
        shutil.copy(self.res / "summary.json", self.out / "summary.json")

    # -- the steps -------------------------------------------------------------------------------

    def run(self, only: set[str] | None = None) -> int:
        dry, py, res, models = self.dry, "PY", self.res, self.models
        device = "cpu" if dry else "cuda"
        small, big = models / "smollm2-135m", models / "llama-3.2-1b"
        steps = [
            ("env", 30, [py, str(Path(__file__)), "--env", str(res / "env.json"), "--site", str(self.site)]),
            ("models", 75, [py, "benchmarks/standin_models.py", str(models), "smollm2-135m", "llama-3.2-1b",
                            "--device", device] + (["--tiny"] if dry else [])),
            ("gpu_tests", 90, [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/kernels",
                               "tests/test_quantization.py", "tests/test_probe.py", f"--junitxml={res / 'gpu_tests.xml'}"]),
            ("memory", 150, [py, "benchmarks/bench_memory.py", "--device", device, "--model", str(small),
                             "--out-dir", str(res), "--steps", "2"]
             + (["--n", "1", "--n-quant", "1", "--max-tokens", "64", "--threads", "1"] if dry else ["--n", "4", "--n-quant", "3"])),
            # issue 25: a --memory_constraint study (moopt optimize, through the CLI) with the budget at the
            # midpoint of the space's estimated peaks; counts trainings over the budget (must be 0)
            ("memory_gate", 170, [py, "benchmarks/bench_memory_gate.py", "--device", device, "--model", str(small),
                                  "--seeds", "0", "--trials", "4" if dry else "8", "--rows", "16" if dry else "48",
                                  "--out", str(res / f"memory_gate_{device}.csv")]),
            # issue 27's GPU figure: per-trial overhead (mostly the base model's load) of the 1B stand-in,
            # a fresh process per trial against a warm worker
            ("warm_workers", 150, [py, "benchmarks/bench_study.py", "overhead", "--model", str(small if dry else big),
                                   "--trials", "2" if dry else "3", "--no-baseline", "--device", device,
                                   "--out", str(res / f"study_overhead_{device}.csv")]),
            # measured on the H200 on 2026-12-04 already: after the steps no GPU has run yet, so a short
            # --budget skips these first
            ("kernels", 45, [py, "benchmarks/check_kernels.py", "--device", device, "--out-dir", str(res)]),
            ("bench_lora", 60, [py, "benchmarks/bench_lora.py", "--quick", "--device", device, "--out-dir", str(res)]),
            ("bench_trial", 110, [py, "benchmarks/bench_trial.py", "--device", device, "--model", str(small if dry else big),
                                  "--targets", "all-linear", "--repeats", "1", "--warmup", "1",
                                  "--out", str(res / f"trial_{device}.csv")]
             + (["--shapes", "2x32", "--steps", "1", "--threads", "1"] if dry else ["--shapes", "4x1024", "--steps", "3"])),
        ]
        for name, limit, argv in steps:
            if only and name not in only:
                continue
            limit = limit * 3 if dry else limit  # a shared 2-core CPU, not the 16-core GPU machine
            if self.deadline is not None:  # the whole check stays within --budget
                limit = min(limit, self.deadline - time.time())
                if limit < 5:
                    self.steps.append({"step": name, "status": "skipped", "rc": None, "seconds": 0, "limit_s": 0,
                                       "log": None, "tail": ["no time left in --budget"]})
                    self.publish()
                    continue
            self.step(name, limit, argv)
        return sum(s["status"] != "ok" for s in self.steps)


def write_env(path: Path, site: Path) -> int:
    """env.json: date, GPU, driver, versions; installs the wheels of missing packages into ``site``."""
    import importlib.util
    from importlib import metadata

    def have(dist: str) -> bool:
        try:
            metadata.version(dist)
            return True
        except metadata.PackageNotFoundError:
            return False

    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    installed, install_error = [], None
    if missing and WHEELS.is_dir():
        # only distributions the interpreter lacks: the image's own packages stay first on the path
        wheels = sorted(str(p) for p in WHEELS.glob("*.whl") if not have(p.name.split("-")[0]))
        install_error = None
        if wheels:  # built for CPython 3.12 (the image's); another interpreter is said in env.json, not a traceback
            r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                                str(site), *wheels], capture_output=True, text=True, check=False)
            install_error = r.stderr.strip()[-600:] if r.returncode else None
        installed = [Path(w).name for w in wheels] if not install_error else []
    info = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": sys.version.split()[0],
            "executable": sys.executable, "wheels_installed": installed}
    if missing and WHEELS.is_dir() and install_error:
        info["wheels_install_error"] = install_error
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20, check=False)
        info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        info["nvidia_smi"] = f"unavailable: {e}"
    import torch

    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        info["cuda"] = torch.version.cuda
    for dist in ("torch", "triton", "transformers", "peft", "accelerate", "pymoo", "bitsandbytes", "gguf", "numpy",
                 "nvidia-ml-py"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "missing"
    bad = {}
    for mod in NEEDED:
        try:
            __import__(mod)
        except Exception as e:  # noqa: BLE001  (a package that fails to import is what this step reports)
            bad[mod] = f"{type(e).__name__}: {e}"[:300]
    info["import_errors"] = bad
    path.write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU: tiny stand-ins, torch path, same steps and outputs")
    ap.add_argument("--work", type=Path, default=Path("/tmp/moopt-gpu-check"), help="scratch folder (models, results)")
    ap.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                    help="where results are copied after each step (default: $OUT)")
    ap.add_argument("--steps", default=None, help="comma-separated subset of the steps, e.g. env,kernels")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole check; later steps get what is left (default: 550 on a GPU, none dry)")
    ap.add_argument("--env", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--site", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.env:
        return write_env(a.env, a.site)
    if a.work.exists():
        shutil.rmtree(a.work / "results", ignore_errors=True)
    budget = a.budget if a.budget is not None else (None if a.dry_run else 550.0)
    check = Check(a.dry_run, a.work, a.out, sys.executable, budget)
    failed = check.run(set(a.steps.split(",")) if a.steps else None)
    print(f"[gpu_check] {len(check.steps) - failed}/{len(check.steps)} steps ok; results in {check.res}"
          + (f" and {a.out}" if a.out else ""))
    return failed


if __name__ == "__main__":
    sys.exit(main())
