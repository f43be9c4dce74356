"""Inference reads of the episodic memory in runs: the entries stored before a run of frames are read by all
its frames in one attention call, merged with each frame's read of the entries written since, by log-sum-exp."""

import pytest
import torch
import torch.nn.functional as F

from videostate.vlm import DualMemoryModule
from videostate.vlm.memory import RUN_FRAMES
from videostate.vlm.partial_attention import attention_with_lse, merge_attention

from .oracles import algorithm1_video


def _frames(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _module(L_w=3, L_e=24, dim=8, heads=2, seed=0, mode="dual"):
    """A float64 memory with random biases (with the zero biases of a fresh ``nn.MultiheadAttention`` an
    ``"episodic_only"`` memory reads exactly zero forever)."""
    torch.manual_seed(seed)
    module = DualMemoryModule(dim, heads, L_w=L_w, L_e=L_e, dropout=0.0, mode=mode).double().eval()
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("bias"):
                parameter.normal_()
    return module


def _spy_runs(module, monkeypatch) -> list[int]:
    """Record the frames read inside a run after its first (the frames whose read is merged)."""
    merged, read = [], module._read_in_run

    def spy(query, fields, run, i):
        if i > run.first:
            merged.append(i)
        return read(query, fields, run, i)

    monkeypatch.setattr(module, "_read_in_run", spy)
    return merged


@pytest.mark.parametrize("cut", [1, 6, 12])
def test_two_parts_merge_to_attention_over_all_keys(cut):
    q, k, v = (_frames(2, 3, n, 8, seed=s) for s, n in ((0, 5), (1, 13), (2, 13)))
    first = attention_with_lse(q, k[:, :, :cut], v[:, :, :cut])
    second = attention_with_lse(q, k[:, :, cut:], v[:, :, cut:])
    merged = merge_attention(first, second)
    torch.testing.assert_close(merged, F.scaled_dot_product_attention(q, k, v), rtol=1e-12, atol=1e-12)
    scores = q @ k.transpose(-1, -2) / 8**0.5
    torch.testing.assert_close(attention_with_lse(q, k, v)[1], scores.logsumexp(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["dual", "episodic_only"])
def test_runs_match_the_oracle(mode, monkeypatch):
    module = _module(mode=mode)
    length = 3 * RUN_FRAMES + 3  # several runs, the last one short; the memory fills in the last run
    frames = _frames(2, length, 4, 8, seed=5)
    merged = _spy_runs(module, monkeypatch)
    with torch.no_grad():
        enhanced, state = module.forward_video(frames)
    assert merged, "no frame was read in a run"
    assert enhanced.sub(frames).abs().amin(dim=(2, 3))[:, 1:].gt(0).all()  # every frame after the first reads
    for b in range(2):
        expected, _, episodic = algorithm1_video(module, frames[b], mode=mode)
        torch.testing.assert_close(enhanced[b], expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(state.episodic.entries(b), torch.stack(episodic), rtol=1e-10, atol=1e-10)


def test_runs_continue_a_carried_memory(monkeypatch):
    module = _module(L_e=12)
    frames = _frames(1, 20, 4, 8, seed=6)
    with torch.no_grad():
        offline, _ = module.forward_video(frames)
        merged = _spy_runs(module, monkeypatch)
        head, state = module.forward_video(frames[:, :3])
        tail, _ = module.forward_video(frames[:, 3:], state)
    assert merged
    torch.testing.assert_close(torch.cat([head, tail], dim=1), offline, rtol=1e-10, atol=1e-10)


def test_runs_agree_with_the_autograd_path():
    module = _module()
    frames = _frames(2, 2 * RUN_FRAMES + 1, 4, 8, seed=8)
    with torch.no_grad():
        inference, _ = module.forward_video(frames)
    training, _ = module.forward_video(frames.requires_grad_())  # reads frame by frame, one call per frame
    torch.testing.assert_close(inference, training.detach(), rtol=1e-10, atol=1e-10)


def test_videos_of_different_lengths_read_frame_by_frame(monkeypatch):
    module = _module()
    frames = _frames(2, 12, 4, 8, seed=9)
    num_frames = torch.tensor([12, 5])
    merged = _spy_runs(module, monkeypatch)
    with torch.no_grad():
        enhanced, _ = module.forward_video(frames, num_frames=num_frames)
    assert set(merged) <= set(range(RUN_FRAMES)) | set(range(2 * RUN_FRAMES, 12))  # no run crosses frame 5
    for b, n in enumerate(num_frames.tolist()):
        expected, _, _ = algorithm1_video(module, frames[b, :n])
        torch.testing.assert_close(enhanced[b, :n], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_partial_attention_matches_float64(dtype):
    parts = (slice(0, 729), slice(729, 3 * 729))
    q, k, v = (_frames(1, 8, n, 144, seed=s).cuda() for s, n in ((0, 729), (1, 3 * 729), (2, 3 * 729)))
    reference = F.scaled_dot_product_attention(q, k, v)
    low = [x.to(dtype) for x in (q, k, v)]
    first, second = (attention_with_lse(low[0], low[1][:, :, part], low[2][:, :, part]) for part in parts)
    merged = merge_attention(first, second)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(merged.double(), reference, rtol=tolerance, atol=tolerance)


@pytest.mark.gpu
def test_cuda_bfloat16_runs_match_frame_by_frame_reads():
    module = DualMemoryModule(1152, 8, L_w=8, L_e=32, dropout=0.0).cuda().to(torch.bfloat16).eval()
    frames = _frames(1, 20, 729, 1152, seed=10, dtype=torch.bfloat16).cuda()
    with torch.no_grad():
        inference, _ = module.forward_video(frames)
    training, _ = module.forward_video(frames.requires_grad_())
    torch.testing.assert_close(inference.float(), training.detach().float(), rtol=2e-2, atol=2e-2)
