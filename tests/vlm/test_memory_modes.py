"""The memory ablations (``memory_mode``): working memory only, episodic memory only."""

import math

import pytest
import torch

from videostate.vlm import DualMemoryModule, VLM2Config, VLM2ForConditionalGeneration
from videostate.vlm.memory_utils import memory_consistency_loss, memory_utilization_loss

from .oracles import algorithm1_video
from .tiny import VISION_DIM, loss_backward_and_check_gradients, tiny_base, tiny_vlm2_config, video_batch

MODES = ["dual", "working_only", "episodic_only"]
ABLATIONS = ["working_only", "episodic_only"]
PARAMETERS = {
    "dual": {"working_attention", "episodic_attention", "gate"},
    "working_only": {"working_attention"},
    "episodic_only": {"episodic_attention"},
}


def _frames(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _nonzero_biases(module, seed=0):
    """Random attention biases: with the zero biases of initialisation an episodic-only memory reads 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _module(mode, L_w=2, L_e=3, dim=8, heads=2, seed=0):
    torch.manual_seed(seed)
    return _nonzero_biases(DualMemoryModule(dim, heads, L_w=L_w, L_e=L_e, dropout=0.0, mode=mode).double().eval())


def _entries(bank, b):
    return [] if bank is None else list(bank.entries(b))


# ---------------------------------------------------------------- the module against the per-video oracle


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_matches_the_per_video_oracle(mode):
    module = _module(mode)
    frames = _frames(3, 7, 4, 8, seed=1)
    num_frames = torch.tensor([7, 3, 1])  # past both capacities, between them, a single frame
    enhanced, state = module.forward_video(frames, num_frames=num_frames)
    assert (state.working is None) == (mode == "episodic_only")
    assert (state.episodic is None) == (mode == "working_only")
    for b, n in enumerate(num_frames.tolist()):
        expected, working, episodic = algorithm1_video(module, frames[b, :n], mode=mode)
        torch.testing.assert_close(enhanced[b, :n], expected)
        torch.testing.assert_close(enhanced[b, n:], frames[b, n:], rtol=0, atol=0)
        for got, want in ((_entries(state.working, b), working), (_entries(state.episodic, b), episodic)):
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w)
    for bank, capacity in ((state.working, 2), (state.episodic, 3)):
        if bank is not None:  # bounded
            assert bank.slots.shape[1] == capacity
            assert bank.count.tolist() == [min(n, capacity) for n in num_frames.tolist()]


@pytest.mark.parametrize("mode", ABLATIONS)
def test_ablation_reads_one_memory(mode):
    module = _module(mode)
    frames = _frames(2, 5, 4, 8, seed=2)
    enhanced, _ = module.forward_video(frames)
    memory = enhanced - frames
    torch.testing.assert_close(memory[:, 0], torch.zeros_like(memory[:, 0]), rtol=0, atol=0)  # empty memory
    assert memory[:, 1:].abs().amax(dim=(2, 3)).min() > 1e-3  # every later frame reads memory
    # the ablated memory is absent, not merely unread: another mode's weights would change the output
    assert set(PARAMETERS[mode]) == {name.split(".")[0] for name, _ in module.named_parameters()}


def test_episodic_only_reads_zero_from_the_initial_zero_biases():
    torch.manual_seed(0)
    module = DualMemoryModule(8, 2, L_w=2, L_e=2, dropout=0.0, mode="episodic_only")
    frames = torch.randn(2, 5, 3, 8, requires_grad=True)
    out, state = module.forward_video(frames)
    torch.testing.assert_close(out, frames, rtol=0, atol=0)  # M_1 = 0 is stored, then every M_t is 0
    assert (state.episodic.slots == 0).all()
    out.square().sum().backward()
    grads = {name: p.grad.abs().sum().item() for name, p in module.named_parameters()}
    assert grads["episodic_attention.in_proj_weight"] == 0 and grads["episodic_attention.out_proj.weight"] == 0
    assert grads["episodic_attention.in_proj_bias"] > 0 and grads["episodic_attention.out_proj.bias"] > 0


def test_episodic_only_stores_the_memory_output():
    module = _module("episodic_only", L_e=3)
    frames = _frames(1, 3, 4, 8, seed=3)
    enhanced, state = module.forward_video(frames)
    # M_1 = 0 (empty memory), M_2, M_3: the entries are the memory outputs, never the frames
    torch.testing.assert_close(state.episodic.entries(0), (enhanced - frames)[0], rtol=1e-12, atol=1e-12)
    assert state.working is None


@pytest.mark.parametrize("mode", ABLATIONS)
def test_chunked_streaming_equals_one_pass(mode):
    module = _module(mode)
    frames = _frames(2, 8, 3, 8, seed=4)
    offline, final = module.forward_video(frames)
    state, outs = None, []
    for start, stop in ((0, 3), (3, 4), (4, 8)):
        out, state = module.forward_video(frames[:, start:stop], state)
        outs.append(out)
    # equal up to rounding: the chunks' frames are projected by one matrix product per chunk
    torch.testing.assert_close(torch.cat(outs, dim=1), offline, rtol=1e-12, atol=1e-12)
    assert state.state_dict().keys() == final.state_dict().keys()
    for name, tensor in final.state_dict().items():
        torch.testing.assert_close(state.state_dict()[name], tensor, rtol=1e-12, atol=1e-12)
    reset = final.reset(torch.tensor([True, False]))
    fresh, _ = module.forward_video(frames[:1])
    torch.testing.assert_close(module.forward_video(frames, reset)[0][0], fresh[0])


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_exactly_the_parameters_of_the_mode(mode):
    torch.manual_seed(0)
    module = _nonzero_biases(DualMemoryModule(8, 2, L_w=2, L_e=2, dropout=0.0, mode=mode))
    assert {name.split(".")[0] for name, _ in module.named_parameters()} == PARAMETERS[mode]
    frames = torch.randn(2, 5, 3, 8, requires_grad=True)
    out, _ = module.forward_video(frames)
    out.square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert torch.isfinite(frames.grad).all()


def test_mode_and_state_errors():
    with pytest.raises(ValueError, match=r"memory mode must be one of \('dual', 'working_only', 'episodic_only'\); "):
        DualMemoryModule(8, 2, mode="working")
    working, episodic, dual = _module("working_only"), _module("episodic_only"), _module("dual")
    frames = _frames(1, 2, 4, 8)
    _, dual_state = dual.forward_video(frames)
    with pytest.raises(ValueError, match=r"'working_only' memory keeps the memories \['working'\]; got a state with "):
        working.forward_video(frames, dual_state)
    with pytest.raises(ValueError, match=r"'episodic_only' memory keeps the memories \['episodic'\]"):
        episodic(frames[:, 0], dual_state.working, dual_state.episodic)
    _, working_state = working.forward_video(frames)
    with pytest.raises(ValueError, match=r"'dual' memory keeps the memories \['working', 'episodic'\]; "):
        dual.forward_video(frames, working_state)
    with pytest.raises(ValueError, match=r"memory state is for \(batch, tokens\)=\(1, 4\)"):
        working.forward_video(_frames(1, 2, 5, 8), working_state)


# ---------------------------------------------------------------- trace and losses


@pytest.mark.parametrize("mode", ABLATIONS)
def test_trace_matches_the_per_video_oracle(mode):
    module = _module(mode)
    frames = _frames(2, 6, 4, 8, seed=5)
    num_frames = torch.tensor([6, 2])
    enhanced, _, trace = module.trace_video(frames, num_frames=num_frames)
    plain, _ = module.forward_video(frames, num_frames=num_frames)
    torch.testing.assert_close(enhanced, plain, rtol=0, atol=0)
    assert trace.mode == mode and trace.L_e == (3 if mode == "episodic_only" else 0)
    held = trace.episodic_frames()
    for b, n in enumerate(num_frames.tolist()):
        record = []
        algorithm1_video(module, frames[b, :n], record=record, mode=mode)
        for t, r in enumerate(record):
            assert bool(trace.read[b, t]) == (t > 0)
            assert trace.gate[b, t].item() == r["gate"]
            for name in ("working_norm", "episodic_norm"):
                got = getattr(trace, name)[b, t].item()
                assert math.isnan(got) if math.isnan(r[name]) else got == pytest.approx(r[name], rel=1e-9)
            assert trace.replaced[b, t].item() == r["replaced"]
            if r["replaced"] >= 0:
                assert trace.replaced_similarity[b, t].item() == pytest.approx(r["similarity"], rel=1e-9)
            if mode == "episodic_only":
                assert held[b, t, : len(r["held"])].tolist() == r["held"]
            torch.testing.assert_close(trace.memory[b, t], r["memory"])
        assert (trace.gate[b, n:] == 0).all() and not trace.active[b, n:].any()
    rows = trace.summary()
    assert [r["frames_reading_memory"] for r in rows] == [5, 1]
    assert rows[0]["mean_gate"] == (1.0 if mode == "working_only" else 0.0)
    assert rows[0]["episodic_replacements"] == (3 if mode == "episodic_only" else 0)


@pytest.mark.parametrize("mode", ABLATIONS)
def test_consistency_loss_works_and_utilization_loss_raises(mode):
    module = _module(mode)
    frames = _frames(2, 4, 4, 8, seed=6)
    _, _, trace = module.trace_video(frames)
    loss = memory_consistency_loss(trace)
    loss.backward()
    assert loss.item() > 0
    for name, p in module.named_parameters():
        assert p.grad is not None, name
    with pytest.raises(ValueError, match=f"needs a trace of a 'dual' memory; got one of a '{mode}' memory"):
        memory_utilization_loss(trace)


# ---------------------------------------------------------------- configuration and the full model


def test_config_round_trip_and_errors(tmp_path):
    assert VLM2Config().memory_mode == "dual"
    for mode in MODES:
        config = VLM2Config(memory_mode=mode, memory_consistency_weight=0.5)
        config.save(tmp_path / f"{mode}.json")
        assert VLM2Config.load(tmp_path / f"{mode}.json") == config
        assert VLM2Config.from_dict(config.to_dict()).memory_mode == mode
    from types import SimpleNamespace

    assert VLM2Config.from_model_args(SimpleNamespace(memory_mode="episodic_only")).memory_mode == "episodic_only"
    with pytest.raises(ValueError, match=r"memory_mode must be one of \('dual', 'working_only', 'episodic_only'\); "
                       r"got 'episodic'"):  # fmt: skip
        VLM2Config(memory_mode="episodic")
    with pytest.raises(ValueError, match="needs memory_mode='dual'; got memory_mode='working_only'"):
        VLM2Config(memory_mode="working_only", memory_utilization_weight=0.1)


def _model(mode, **overrides):
    base = tiny_base("onevision", 0)
    torch.manual_seed(1)
    return VLM2ForConditionalGeneration(base, tiny_vlm2_config(memory_mode=mode, **overrides)).eval()


@pytest.mark.parametrize("mode", MODES)
def test_model_gradients_reach_exactly_the_trainable_parameters(mode):
    model = _model(mode, mm_tunable_parts="dual_memory,mm_mlp_adapter", memory_consistency_weight=1.0)
    _nonzero_biases(model.dual_memory)
    model.train()
    trainable = set(model.apply_tunable_parts())
    memory = {n for n in trainable if n.startswith("dual_memory.")}
    assert {n.split(".")[1] for n in memory} == PARAMETERS[mode]
    loss_backward_and_check_gradients(model, trainable)
    assert model.last_memory_trace.mode == mode


@pytest.mark.parametrize("mode", ABLATIONS)
def test_model_streams_saves_and_loads_an_ablation(mode, tmp_path):
    model = _model(mode, use_spatial_fusion=False)
    _nonzero_biases(model.dual_memory)
    _, pixels = video_batch("onevision", 1, 5, seed=3)
    with torch.no_grad():
        whole = model.encode_video(pixels)
        first = model.encode_video(pixels[:, :2], video_ids=["v"])
        second = model.encode_video(pixels[:, 2:], video_ids=["v"])
    tokens = 4  # per frame, before OneVision's newline token
    streamed = torch.cat([first[:, : 2 * tokens], second[:, : 3 * tokens]], dim=1)
    torch.testing.assert_close(streamed, whole[:, : 5 * tokens], rtol=1e-5, atol=1e-6)
    state = model.video_memory("v")
    assert [bank.count.tolist() for bank in state.banks()] == [[2] if mode == "working_only" else [3]]
    with pytest.raises(ValueError, match=f"'{mode}' memory keeps the memories"):
        model.set_video_memory("w", _model("dual", use_spatial_fusion=False).dual_memory.init_state(1, 16))

    base_dir, vlm2_dir = tmp_path / "base", tmp_path / "vlm2"
    model.base.save_pretrained(base_dir)
    model.save_pretrained(vlm2_dir)
    loaded = VLM2ForConditionalGeneration.from_pretrained(base_dir, vlm2_dir).eval()
    assert loaded.config.memory_mode == mode and loaded.dual_memory.mode == mode
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_video(pixels), whole, rtol=0, atol=0)
    with pytest.raises(KeyError, match="missing keys"):
        _model("dual", use_spatial_fusion=False).load_vlm2_weights(vlm2_dir / "model.safetensors")


def test_dual_mode_is_the_default_module():
    torch.manual_seed(0)
    default = DualMemoryModule(VISION_DIM, 2, L_w=2, L_e=3, dropout=0.0)
    torch.manual_seed(0)
    explicit = DualMemoryModule(VISION_DIM, 2, L_w=2, L_e=3, dropout=0.0, mode="dual")
    frames = torch.randn(2, 5, 3, VISION_DIM)
    torch.testing.assert_close(explicit.forward_video(frames)[0], default.forward_video(frames)[0], rtol=0, atol=0)
