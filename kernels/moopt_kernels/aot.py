"""Compile moopt's Triton kernels for a GPU (sm_90 H100/H200, sm_80 A100) on a machine that has none.

Triton compiles for whatever target its active driver reports, and ptxas ships inside the triton wheel,
so a stand-in driver that answers ``GPUTarget("cuda", arch, 32)`` is enough to produce each kernel's
cubin. The real autograd functions (``LoRALinearFunction``, ``LoRAMultiLinearFunction``) run forward
and backward on small CPU tensors with every Triton launch replaced by ``JITFunction.warmup`` (compile,
never launch), so the binder picks exactly the specialisations a GPU run would: dtype, constexprs and
the divisible-by-16 facts of sizes and strides. K and N are only runtime arguments; any sizes with the
same divisibility (all of Llama's are multiples of 16) give the same binary, so small ones stand in.

Per compiled variant: shared memory (``metadata.shared``), and registers and spill-store bytes from
ptxas' own ``-v`` log (a real driver fills ``n_regs``/``n_spills`` only at load time). A variant fits when its shared memory is within the target's per-block opt-in
limit (launching it otherwise raises OutOfResources) and its registers within 64K per block.

Must run with TRITON_INTERPRET unset (the interpreter replaces compilation). CLI:
``python -P -m moopt_kernels.aot --arch 90 --set ci --json out.json`` (see benchmarks/bench_compile.py).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace

import torch

# Shared memory a block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin): H100/H200 227 KiB,
# A100 163 KiB. Registers: 64K 32-bit registers per block on both.
TARGETS = {90: {"gpu": "H100/H200", "max_shared": 232448}, 80: {"gpu": "A100", "max_shared": 166912}}
REGS_PER_BLOCK = 65536
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Projections sharing one X, as moopt.train.lora groups them: q,k,v (Llama-3-8B widths 4096, 1024, 1024 scaled
# down by 16) and gate,up; one projection alone (o_proj, down_proj, or any single target).
FUSED = {"single": (256,), "qkv": (256, 64, 64), "gate_up": (896, 896)}


@dataclass(frozen=True)
class Spec:
    """One way moopt calls the kernels: the launch parameters that change what is compiled."""

    dtype: str
    r: int
    fused: str  # a key of FUSED
    dropout: bool
    dx: bool  # the input needs a gradient (every layer but the first when the embeddings are frozen)


@dataclass
class Variant:
    """One compiled kernel specialisation and what it needs from the GPU."""

    kernel: str
    dtype: str
    constexprs: dict
    num_warps: int
    arch: int
    shared_kib: float = 0.0
    registers: int = 0
    spill_bytes: int = 0
    compile_s: float = 0.0
    fits: bool = False
    error: str | None = None
    specs: list = field(default_factory=list)  # the Specs that launch it, as "dtype/r/fused/dropout/dx"


class _StandInDriver:
    """Just enough of triton's driver for the JIT to compile for ``arch`` (no device is touched)."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)
        self.utils = SimpleNamespace(get_device_properties=lambda device: {
            "max_shared_mem": TARGETS[arch]["max_shared"], "multiprocessor_count": 132,
            "max_num_regs": REGS_PER_BLOCK, "warpSize": 32,
        })

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda


@contextmanager
def compile_for(arch: int):
    """Make triton compile for ``arch`` inside the block; restores the previous driver after."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("moopt_kernels.aot compiles kernels: unset TRITON_INTERPRET")
    from triton import knobs
    from triton.runtime import driver

    previous, dump, cache = driver._active, knobs.nvidia.dump_ptxas_log, os.environ.get("TRITON_CACHE_DIR")
    driver.set_active(_StandInDriver(arch))
    knobs.nvidia.dump_ptxas_log = True
    with tempfile.TemporaryDirectory(prefix="moopt-aot-") as tmp:
        os.environ["TRITON_CACHE_DIR"] = tmp  # compile afresh: a cached kernel has no ptxas log to read
        try:
            yield
        finally:
            driver._active, knobs.nvidia.dump_ptxas_log = previous, dump
            if cache is None:
                os.environ.pop("TRITON_CACHE_DIR", None)
            else:
                os.environ["TRITON_CACHE_DIR"] = cache


def _ptxas_usage(log: str) -> tuple[int, int]:
    """(registers per thread, spill-store bytes per thread) from ptxas' ``-v`` log of one kernel."""
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    if regs is None:
        raise RuntimeError(f"no register count in the ptxas log: {log[:200]!r}")
    return int(regs.group(1)), int(spills.group(1)) if spills else 0


class _Recorder:
    """Stands in for a JITFunction: ``kernel[grid](*args, **kw)`` compiles (warmup) and records."""

    def __init__(self, jit, arch: int, out: dict, spec: Spec):
        self.jit, self.arch, self.out, self.spec = jit, arch, out, spec

    def __getitem__(self, grid):
        def launch(*args, **kw):
            num_warps = kw.get("num_warps", 4)
            constexprs = {k: v for k, v in kw.items() if k not in ("num_warps", "num_stages")}
            dtype = next(str(a.dtype).removeprefix("torch.") for a in args if isinstance(a, torch.Tensor))
            key = (self.jit.fn.__name__, dtype, tuple(sorted(constexprs.items())), num_warps)
            v = self.out.get(key)
            if v is None:
                v = self.out[key] = Variant(self.jit.fn.__name__, dtype, constexprs, num_warps, self.arch)
                t0 = time.perf_counter()
                try:
                    log = io.StringIO()
                    with redirect_stdout(log):  # triton prints ptxas' -v log when dump_ptxas_log is on
                        compiled = self.jit.warmup(*args, grid=grid, **kw)
                    v.shared_kib = compiled.metadata.shared / 1024
                    v.registers, v.spill_bytes = _ptxas_usage(log.getvalue())
                    v.fits = (compiled.metadata.shared <= TARGETS[self.arch]["max_shared"]
                              and v.registers * 32 * num_warps <= REGS_PER_BLOCK)
                except Exception as e:  # noqa: BLE001  (a compile error is a result here, reported per variant)
                    v.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                v.compile_s = time.perf_counter() - t0
            v.specs.append(f"{self.spec.dtype}/r{self.spec.r}/{self.spec.fused}/p{int(self.spec.dropout)}/dx{int(self.spec.dx)}")

        return launch


def run_spec(spec: Spec, arch: int, out: dict, m: int = 64) -> None:
    """Forward + backward of the autograd function moopt.train.lora uses for ``spec``, compiling each launch."""
    import moopt_kernels.lora_linear  # noqa: F401  (the package exports a function of the same name)
    ll = sys.modules["moopt_kernels.lora_linear"]
    from moopt_kernels.lora_multi import LoRAMultiLinearFunction

    original = ll._kernels
    real = original()
    ll._kernels = lambda: SimpleNamespace(**{k: _Recorder(j, arch, out, spec) for k, j in vars(real).items()})
    try:
        dtype = DTYPES[spec.dtype]
        ns = FUSED[spec.fused]
        k = 256
        x = torch.randn(m, k, dtype=dtype, requires_grad=spec.dx)
        ws = [torch.randn(n, k, dtype=dtype) for n in ns]
        as_ = [torch.randn(spec.r, k, requires_grad=True) for _ in ns]  # fp32 masters, as LoRALinear keeps
        bs = [torch.randn(n, spec.r, requires_grad=True) for n in ns]
        p = 0.05 if spec.dropout else 0.0
        if len(ns) == 1:
            ys = [ll.LoRALinearFunction.apply(x, ws[0], None, as_[0], bs[0], 2.0, p, 1234, "triton")]
        else:
            scalings = tuple(2.0 for _ in ns)
            ys = LoRAMultiLinearFunction.apply(x, scalings, p, 1234, "triton", *ws, *([None] * len(ns)), *as_, *bs)
        torch.autograd.backward(list(ys), [torch.ones_like(y) for y in ys])
    finally:
        ll._kernels = original


def spec_set(name: str) -> list[Spec]:
    """``full``: every dtype, r in 8..64, all groupings, dropout and dX on/off (the benchmark's table).
    ``ci``: the corners that decide the tiles (largest and smallest fused rank per dtype), for the test."""
    if name == "full":
        return [Spec(*c) for c in itertools.product(DTYPES, (8, 16, 32, 64), FUSED, (False, True), (False, True))]
    if name == "ci":
        return [
            Spec("bf16", 8, "single", False, True),
            Spec("bf16", 16, "gate_up", True, True),
            Spec("bf16", 64, "qkv", True, True),   # R = 192: the largest bf16 r-tile
            Spec("fp16", 32, "qkv", False, False),
            Spec("fp32", 64, "qkv", True, True),   # R = 192 in fp32: the largest shared-memory need
            Spec("fp32", 8, "single", False, True),
        ]
    raise ValueError(f"spec set must be 'full' or 'ci', got {name!r}")


def compile_all(specs: list[Spec], arch: int, batch_lengths: tuple[int, ...] = (64,)) -> tuple[list[Variant], dict]:
    """Every variant ``specs`` launch, each spec run at each batch length (rows of X), and how many
    binaries Triton compiled per kernel in all: equal to that kernel's variants when no launch
    parameter derived from the batch length is specialised on."""
    out: dict = {}
    with compile_for(arch):
        for spec in specs:
            for m in batch_lengths:
                run_spec(spec, arch, out, m=m)
    ll = sys.modules["moopt_kernels.lora_linear"]
    binaries = {j.fn.__name__: sum(len(c[0]) for c in j.device_caches.values()) for j in vars(ll._kernels()).values()}
    return list(out.values()), {k: n for k, n in binaries.items() if n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, choices=sorted(TARGETS))
    ap.add_argument("--set", default="ci", choices=("ci", "full"))
    ap.add_argument("--batch-lengths", default="64", help="rows of X each spec runs at, e.g. 64,200,1000")
    ap.add_argument("--json", required=True, help="where to write {arch, variants, binaries}")
    a = ap.parse_args(argv)
    lengths = tuple(int(m) for m in a.batch_lengths.split(","))
    variants, binaries = compile_all(spec_set(a.set), a.arch, lengths)
    with open(a.json, "w") as f:
        json.dump({"arch": a.arch, "batch_lengths": lengths, "variants": [asdict(v) for v in variants],
                   "binaries": binaries}, f, indent=1)
    bad = [v for v in variants if v.error or not v.fits]
    for v in bad:
        print(f"sm_{a.arch} {v.kernel} {v.dtype} {v.constexprs}: shared {v.shared_kib:.0f} KiB, "
              f"regs {v.registers}, {v.error or 'does not fit'}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
