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


@pytest.mark.gpu
def test_ss2d_segments_with_carried_state_on_the_kernels(monkeypatch):
    """On the GPU kernels under bfloat16 autocast, the large-map inference path (one direction at a time, in
    segments with the Mamba-2 state carried) gives the one-call output."""
    import videostate.interpolation.ss2d as ss2d_module

    torch.manual_seed(0)
    ss2d = ss2d_module.InterleavedSS2D(32, d_state=64, headdim=16, chunk_size=256).cuda()
    x = torch.randn(2, 24, 40, 32, device="cuda")  # sequences of 2 * 24 * 40 = 1920 tokens
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        expected = ss2d(x)
        monkeypatch.setattr(ss2d_module, "MAX_INFERENCE_ELEMENTS", 4 * 700 * 32)  # segments of 700 tokens
        split = ss2d(x)
    assert split.dtype == torch.bfloat16
    assert ((split.float() - expected.float()).norm() / expected.float().norm()).item() < 1e-2
