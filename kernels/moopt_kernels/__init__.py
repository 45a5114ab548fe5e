"""moopt's fused kernels (installed as ``moopt_kernels``; Hugging Face owns the name ``kernels``).

Every op takes ``backend="auto"|"triton"|"torch"``: ``auto`` runs Triton on CUDA when triton is
installed, else plain PyTorch. Importing this package works without triton.
"""

from moopt_kernels._backend import HAS_TRITON, TritonKernelError, resolve_backend
from moopt_kernels.cross_entropy import linear_cross_entropy
from moopt_kernels.lora_linear import lora_linear
from moopt_kernels.lora_multi import lora_multi_linear

__all__ = ["HAS_TRITON", "TritonKernelError", "lora_linear", "lora_multi_linear", "linear_cross_entropy", "resolve_backend"]
