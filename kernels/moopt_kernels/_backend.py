"""Which implementation runs: the availability flag plus the override."""

from __future__ import annotations

import importlib.util
import os

import torch

# find_spec does not import triton (~1 s); the kernel modules import it, guarded by this flag.
HAS_TRITON = importlib.util.find_spec("triton") is not None

BACKENDS = ("auto", "triton", "torch")


class TritonKernelError(RuntimeError):
    """A Triton kernel failed to compile or launch (ptxas error, OutOfResources, driver error). With
    ``--kernels auto`` a trial falls back to the torch path on it (moopt.train.recipe); with ``triton`` it fails."""


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (TRITON_INTERPRET=1), read at each call."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Map ``"auto"|"triton"|"torch"`` to the implementation that will run on ``device``.

    ``auto`` picks Triton on CUDA when triton is installed, else torch. ``triton`` on a CPU tensor is
    allowed only under TRITON_INTERPRET=1 (tests); otherwise it raises, so a forced backend never
    silently degrades.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = torch.device(device).type == "cuda"
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if HAS_TRITON and on_cuda and not interpreting() else "torch"
    if not HAS_TRITON:
        raise RuntimeError("backend='triton' needs the triton package: pip install 'moopt[triton]'")
    if not on_cuda and not interpreting():
        raise RuntimeError(f"backend='triton' on device {device} needs CUDA or TRITON_INTERPRET=1")
    return "triton"


def next_pow2(n: int, minimum: int = 16) -> int:
    """Block size covering ``n``; tl.dot needs every dimension >= 16."""
    return max(minimum, 1 << (max(n, 1) - 1).bit_length())
