"""The reference path runs on CUDA and gives the CPU result (GPU machine only)."""

import pytest
import torch

from videostate.ssm import MambaStack

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("bimamba", [False, True])
def test_reference_stack_on_cuda_matches_cpu_offline_and_chunked(bimamba):
    torch.manual_seed(0)
    model = MambaStack(
        32,
        ["mamba", "mamba2"],
        mamba_cfg={"bimamba": bimamba, "use_fast_path": False},
        mamba2_cfg={"headdim": 8, "d_state": 16, "use_fast_path": False},
    ).double()
    x = torch.randn(2, 45, 32, dtype=torch.float64)
    expected = model(x)
    cuda_model = model.cuda()
    got = cuda_model(x.cuda())
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-10, atol=1e-10)
    if not bimamba:
        state, pieces = cuda_model.init_state(2), []
        for chunk in x.cuda().split(13, dim=1):
            y, state = cuda_model(chunk, state)
            pieces.append(y)
        torch.testing.assert_close(torch.cat(pieces, 1).cpu(), expected, rtol=1e-10, atol=1e-10)
