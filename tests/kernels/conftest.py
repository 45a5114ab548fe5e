"""Shared fixtures for the kernel tests.

Without CUDA the Triton path runs on Triton's CPU interpreter. Triton reads TRITON_INTERPRET when it is
imported and when kernels are decorated; moopt_kernels does both lazily (on first triton-backend call),
so setting the variable here, before any test runs, is enough even if another test module imported
moopt_kernels first. Nothing else in the suite uses triton.
"""

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from moopt_kernels import HAS_TRITON

BACKENDS = [
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")),
]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Each test taking ``backend`` runs once per path: plain PyTorch and Triton (interpreted on CPU). These tests
    build CPU tensors: on a CUDA machine (no interpreter there) their triton case is skipped, and the gpu-marked
    tests run the compiled kernels instead."""
    if request.param == "triton" and torch.cuda.is_available():
        pytest.skip("CPU tensors on the triton path need the interpreter, which is off where CUDA is (-m gpu: compiled)")
    if request.param == "triton" and "triton.language" in sys.modules:
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(sys.modules["triton.language"].rand, InterpretedFunction):
            pytest.fail("triton was imported before tests/kernels/conftest.py set TRITON_INTERPRET=1")
    return request.param


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def matches_reference():
    return assert_matches_reference


def assert_matches_reference(out: torch.Tensor, ref64: torch.Tensor, ref_same_dtype: torch.Tensor, name: str) -> None:
    """FlashAttention's rule against an fp64 reference: lower precision within 2× the max error and 1.5×
    the mean error of plain PyTorch at the same dtype, + 1e-5. fp32 within rtol = 1e-5 and atol = 1e-5
    relative to the tensor's largest value: dA sums M products of size ~100, so entries that cancel to
    ~0 carry an absolute rounding error of ~1e-5 that an unscaled atol would reject."""
    if out.dtype == torch.float32:
        atol = 1e-5 * max(1.0, ref64.abs().max().item())
        torch.testing.assert_close(out.double(), ref64, rtol=1e-5, atol=atol, msg=lambda m: f"{name}: {m}")
        return
    err = (out.double() - ref64).abs()
    base = (ref_same_dtype.double() - ref64).abs()
    assert err.max() <= 2 * base.max() + 1e-5, f"{name}: max err {err.max():.3g} vs torch {base.max():.3g}"
    assert err.mean() <= 1.5 * base.mean() + 1e-5, f"{name}: mean err {err.mean():.3g} vs torch {base.mean():.3g}"
