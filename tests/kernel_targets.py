"""Where the Triton kernel tests run: on CUDA as ``gpu`` tests, or, with ``TRITON_INTERPRET=1`` and no GPU, on CPU
tensors through Triton's interpreter (a test module sets ``pytestmark = list(MARKS)`` and imports its kernels when
``RUNS``); both are marked ``kernel``, and ``make test`` runs them a second time through the interpreter."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1" and not torch.cuda.is_available()
DEVICE = torch.device("cpu" if INTERPRET else "cuda")
HAS_TRITON = importlib.util.find_spec("triton") is not None
RUNS = HAS_TRITON and (INTERPRET or torch.cuda.is_available())  # the kernels can run here
MARKS = [pytest.mark.kernel, pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")] + (
    []
    if INTERPRET
    else [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
)


# The dtypes a kernel test runs: Triton's interpreter multiplies bfloat16 matrices wrongly (its tl.dot takes their
# bits for integers), so bfloat16 runs on the GPU only.
KERNEL_DTYPES = [torch.float32, torch.float16] + ([] if INTERPRET else [torch.bfloat16])


def output_cotangents(out_fast, out_exact, seed: int = 12345) -> list[torch.Tensor]:
    """Seeded float64 cotangents for a kernel's outputs and their float64 oracle, rounded to each kernel output's
    dtype: the kernels receive the output gradient in the output's dtype, so the oracle starts from the same values
    (unrounded, a bfloat16 cotangent alone gives relative errors near 1e-2 on sums over a few channels)."""
    g = torch.Generator(device=out_exact[0].device).manual_seed(seed)
    return [
        torch.randn(o.shape, generator=g, device=o.device, dtype=torch.float64).to(f.dtype).double()
        for o, f in zip(out_exact, out_fast, strict=True)
    ]
