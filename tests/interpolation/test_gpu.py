import pytest
import torch

from videostate.interpolation import HybridVFI

from .tiny import random_pair, tiny_config


@pytest.mark.gpu
@pytest.mark.parametrize("phase", [1, 2])
def test_cuda_matches_cpu_and_runs_in_bf16(phase):
    torch.manual_seed(0)
    model = HybridVFI(tiny_config(phase=phase)).eval()
    img0, img1 = random_pair(2, 24, 40)
    with torch.no_grad():
        cpu = model(img0, img1, 0.3)
        model = model.cuda()
        gpu = model(img0.cuda(), img1.cuda(), 0.3)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = model(img0.cuda(), img1.cuda(), 0.3)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-3, rtol=0)
    assert (half.float() - gpu).abs().max() < 0.1
