"""Where the Triton kernel tests run: on CUDA as ``gpu`` tests, or, with ``TRITON_INTERPRET=1`` and no GPU, on CPU
tensors through Triton's interpreter (a test module sets ``pytestmark = list(MARKS)``)."""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1" and not torch.cuda.is_available()
DEVICE = torch.device("cpu" if INTERPRET else "cuda")
MARKS = (
    []
    if INTERPRET
    else [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
)
