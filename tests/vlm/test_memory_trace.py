import math

import pytest
import torch

from videostate.vlm import DualMemoryModule
from videostate.vlm.memory_utils import memory_consistency_loss, memory_utilization_loss, plot_memory

from .oracles import algorithm1_video, naive_cos


def _frames(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _module(L_w=2, L_e=3, dim=8, heads=2, seed=0):
    torch.manual_seed(seed)
    return DualMemoryModule(dim, heads, L_w=L_w, L_e=L_e, dropout=0.0).double().eval()


def _oracle_records(module, frames):
    record = []
    algorithm1_video(module, frames, record=record)
    return record


def test_trace_matches_the_per_video_oracle():
    module = _module()
    frames = _frames(3, 7, 4, 8, seed=1)
    num_frames = torch.tensor([7, 5, 1])  # the episodic memory (L_e=3) fills and replaces in the first two
    enhanced, state, trace = module.trace_video(frames, num_frames=num_frames)
    plain, plain_state = module.forward_video(frames, num_frames=num_frames)
    torch.testing.assert_close(enhanced, plain, rtol=0, atol=0)  # tracing changes nothing
    torch.testing.assert_close(state.episodic.slots, plain_state.episodic.slots, rtol=0, atol=0)
    held = trace.episodic_frames()
    for b, n in enumerate(num_frames.tolist()):
        record = _oracle_records(module, frames[b, :n])
        for t, r in enumerate(record):
            assert trace.active[b, t] and bool(trace.read[b, t]) == (t > 0)
            assert trace.gate[b, t].item() == pytest.approx(r["gate"], rel=1e-9)
            assert trace.working_norm[b, t].item() == pytest.approx(r["working_norm"], rel=1e-9, abs=1e-12)
            assert trace.episodic_norm[b, t].item() == pytest.approx(r["episodic_norm"], rel=1e-9, abs=1e-12)
            assert trace.replaced[b, t].item() == r["replaced"]
            if r["replaced"] < 0:
                assert math.isnan(trace.replaced_similarity[b, t].item())
            else:
                assert trace.replaced_similarity[b, t].item() == pytest.approx(r["similarity"], rel=1e-9)
            assert held[b, t, : len(r["held"])].tolist() == r["held"]
            assert (held[b, t, len(r["held"]) :] == -1).all()
            torch.testing.assert_close(trace.memory[b, t], r["memory"])
        assert not trace.active[b, n:].any() and (trace.replaced[b, n:] == -1).all()
        assert (trace.gate[b, n:] == 0).all()
    assert (trace.replaced[0] >= 0).sum() == 7 - 3  # every frame after the memory filled replaced one entry
    rows = trace.summary()
    assert [r["frames"] for r in rows] == [7, 5, 1]
    assert [r["frames_reading_memory"] for r in rows] == [6, 4, 0]
    assert [r["episodic_replacements"] for r in rows] == [4, 2, 0]
    assert rows[0]["replacement_rate"] == pytest.approx(4 / 7)
    assert rows[0]["mean_gate"] == pytest.approx(trace.gate[0, 1:].mean().item())
    assert math.isnan(rows[2]["mean_gate"])


def test_trace_of_a_carried_state_marks_earlier_entries():
    module = _module()
    frames = _frames(1, 5, 4, 8, seed=2)
    _, state = module.forward_video(frames[:, :2])
    _, _, trace = module.trace_video(frames[:, 2:], state)
    # two entries from before the trace; frame 0 of the trace fills the memory, frame 1 replaces one
    held = trace.episodic_frames()[0]
    assert held[0].tolist() == [-2, -2, 0]
    assert trace.read[0].all() and trace.replaced[0, 0] == -1 and trace.replaced[0, 1] >= 0
    whole = _oracle_records(module, frames[0])
    assert trace.replaced[0].tolist() == [r["replaced"] for r in whole[2:]]


def test_memory_consistency_loss_formula():
    module = _module()
    frames = _frames(2, 5, 4, 8, seed=3)
    num_frames = torch.tensor([5, 3])
    _, _, trace = module.trace_video(frames, num_frames=num_frames)
    terms = []
    for b, n in enumerate(num_frames.tolist()):
        M = [r["memory"] for r in _oracle_records(module, frames[b, :n])]
        terms += [1 - naive_cos(M[t - 1], M[t]) for t in range(2, n)]  # frame 0 reads no memory (M_0 = 0)
    assert len(terms) == 3 + 1
    assert memory_consistency_loss(trace).item() == pytest.approx(sum(terms) / len(terms), rel=1e-9)


def test_memory_utilization_loss_formula_and_gradient():
    module = _module()
    frames = _frames(2, 4, 4, 8, seed=4)
    num_frames = torch.tensor([4, 2])
    _, _, trace = module.trace_video(frames, num_frames=num_frames)
    expected = []
    for b, n in enumerate(num_frames.tolist()):
        gates = [r["gate"] for r in _oracle_records(module, frames[b, :n])][1:]
        expected.append((sum(gates) / len(gates) - 0.5) ** 2)
    loss = memory_utilization_loss(trace)
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-9)
    loss.backward()
    assert module.gate[2].bias.grad is not None and module.gate[2].bias.grad.abs().sum() > 0


def test_memory_losses_without_memory_reads_are_zero_with_a_graph():
    module = _module()
    frames = _frames(2, 1, 4, 8, seed=5).requires_grad_()
    _, _, trace = module.trace_video(frames)  # one frame: the memories are empty when it is read
    losses = [memory_consistency_loss(trace), memory_utilization_loss(trace)]
    assert all(loss.item() == 0.0 and loss.requires_grad for loss in losses)
    sum(losses).backward()
    assert frames.grad is not None and (frames.grad == 0).all()


def test_plot_memory_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    module = _module()
    _, _, trace = module.trace_video(_frames(2, 6, 4, 8, seed=6), num_frames=torch.tensor([6, 4]))
    path = plot_memory(trace, tmp_path / "memory.png", video=1)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="index the 2 videos of the trace; got 2"):
        plot_memory(trace, tmp_path / "x.png", video=2)


def test_plot_memory_without_matplotlib_names_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    _, _, trace = _module().trace_video(_frames(1, 2, 4, 8))
    with pytest.raises(ImportError, match="plot_memory needs matplotlib"):
        plot_memory(trace, tmp_path / "x.png")
