import math

import pytest
import torch

from tests.backbones import videomamba_oracle as oracle
from tests.backbones.helpers import PATCHES, TINY, float_state_dict, randomize, video
from videostate.backbones.videomamba import VideoMambaEncoder, VisionMamba
from videostate.backbones.videomamba_layers import DropPath


@pytest.mark.parametrize(
    ("rms_norm", "fused_add_norm", "kernel_size", "bimamba"),
    [(True, True, 1, True), (True, False, 2, True), (False, True, 1, True), (False, False, 1, False)],
)
def test_classifier_matches_independent_implementation(rms_norm, fused_add_norm, kernel_size, bimamba):
    model = VisionMamba(
        **TINY,
        num_classes=5,
        rms_norm=rms_norm,
        fused_add_norm=fused_add_norm,
        kernel_size=kernel_size,
        bimamba=bimamba,
    )
    model = randomize(model.double()).eval()
    x = video(2, 4)
    sd = float_state_dict(model)
    seq = oracle.tokens(sd, x, patch=8, tubelet=kernel_size)
    out = oracle.trunk(sd, seq, depth=2, final_norm="norm_f", bimamba=bimamba, rms=rms_norm)
    expected = out[:, 0] @ sd["head.weight"].T + sd["head.bias"]
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.forward_features(x), out[:, 0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("pool_type", ["cls", "avg", "cls+avg"])
@pytest.mark.parametrize("keep_temporal", [False, True])
def test_encoder_readouts_match_independent_implementation(pool_type, keep_temporal):
    model = randomize(VideoMambaEncoder(**TINY, pool_type=pool_type).double()).eval()
    x = video(2, 4, seed=3)
    sd = float_state_dict(model)
    out = oracle.trunk(sd, oracle.tokens(sd, x, patch=8, tubelet=1), depth=2, final_norm="norm")
    cls, patches = out[:, :1], out[:, 1:]
    avg = patches.reshape(2, 4, PATCHES, 16).mean(2) if keep_temporal else patches.mean(1, keepdim=True)
    readout = {"cls": cls, "avg": avg, "cls+avg": cls + avg}[pool_type]
    expected_pool = oracle.layer_norm(readout, sd["pool_norm.weight"], sd["pool_norm.bias"], 1e-5)
    x_vis, x_pool = model(x, keep_temporal=keep_temporal)
    torch.testing.assert_close(x_vis, patches, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x_pool, expected_pool, rtol=1e-10, atol=1e-10)
    model.add_pool_norm = False
    torch.testing.assert_close(model(x), out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.forward_features(x), out, rtol=1e-10, atol=1e-10)


def test_shorter_clip_uses_the_start_of_the_temporal_table():
    model = randomize(VideoMambaEncoder(**TINY, add_pool_norm=False).double()).eval()
    x = video(1, 2, seed=4)
    sd = float_state_dict(model)
    expected = oracle.trunk(sd, oracle.tokens(sd, x, patch=8, tubelet=1), depth=2, final_norm="norm")
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)


def test_official_initialisation():
    torch.manual_seed(0)
    model = VisionMamba(**{**TINY, "depth": 4, "embed_dim": 64}, num_classes=10)
    assert torch.all(model.cls_token == 0) and torch.all(model.temporal_pos_embedding == 0)
    assert 0.015 < model.pos_embed.std().item() < 0.025
    mixer = model.layers[0].mixer
    assert torch.all(mixer.dt_proj.bias == 0) and torch.all(mixer.dt_proj_b.bias == 0)
    assert 0.015 < mixer.in_proj.weight.std().item() < 0.025
    bound = 1 / math.sqrt(mixer.d_inner) / math.sqrt(4)  # Kaiming-uniform(a=sqrt 5) / sqrt(depth)
    weight = mixer.out_proj.weight
    assert weight.abs().max().item() <= bound and weight.abs().max().item() > 0.9 * bound
    torch.testing.assert_close(mixer.A_log[0], torch.log(torch.arange(1.0, 17.0)))


def test_drop_path_schedule_and_stochastic_depth():
    model = VisionMamba(**{**TINY, "depth": 3}, drop_path_rate=0.2, num_classes=3)
    assert isinstance(model.layers[0].drop_path, torch.nn.Identity)
    probs = [getattr(layer.drop_path, "drop_prob", 0.0) for layer in model.layers]
    assert probs == pytest.approx([0.0, 0.0, 0.1])  # block i: linspace(0, 0.2, 3)[i - 1]
    assert model.drop_path.drop_prob == pytest.approx(0.2)

    drop = DropPath(0.5).train()
    x = torch.randn(64, 5, 3) + 3.0
    y = drop(x)
    kept = (y != 0).flatten(1).all(1)
    dropped = (y == 0).flatten(1).all(1)
    assert torch.all(kept | dropped) and 10 < kept.sum() < 54
    torch.testing.assert_close(y[kept], x[kept] * 2)
    assert drop.eval()(x) is x

    model.train()
    clip = video(4, 4, dtype=torch.float32)
    torch.manual_seed(0)
    a = model(clip)
    torch.manual_seed(1)
    b = model(clip)
    assert not torch.allclose(a, b)
    a.sum().backward()
    assert model.layers[2].mixer.in_proj.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients():
    model = randomize(VideoMambaEncoder(**TINY, pool_type="avg").double())
    x = video(2, 4, seed=5)

    def grads(use_checkpoint):
        model.zero_grad()
        model.use_checkpoint, model.checkpoint_num = use_checkpoint, 2
        x_vis, x_pool = model(x)
        (x_vis.square().mean() + x_pool.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 30
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-10, atol=1e-12, msg=name)


def test_tiny_factory_matches_the_official_parameter_count():
    from videostate.backbones.videomamba import videomamba_tiny

    model = videomamba_tiny(num_frames=8, num_classes=400)
    assert sum(p.numel() for p in model.parameters()) == 7_033_744  # official Ti for Kinetics-400: 7.03M
    with pytest.raises(TypeError, match="fixes embed_dim"):
        videomamba_tiny(embed_dim=64)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((2, 3, 4, 16), r"\(B, C, T, H, W\)"),
        ((2, 1, 4, 16, 16), r"got \(2, 1, 4, 16, 16\)"),
        ((2, 3, 4, 16, 24), r"got \(2, 3, 4, 16, 24\)"),
        ((2, 3, 3, 16, 16), "multiple of kernel_size=2"),
    ],
)
def test_bad_input_shapes_are_named(shape, match):
    model = VideoMambaEncoder(**TINY, kernel_size=2)
    with pytest.raises(ValueError, match=match):
        model(torch.randn(shape))


def test_constructor_errors():
    with pytest.raises(ValueError, match="pool_type must be one of"):
        VideoMambaEncoder(**TINY, pool_type="max")
    with pytest.raises(ValueError, match="multiple of kernel_size"):
        VideoMambaEncoder(**{**TINY, "num_frames": 5}, kernel_size=2)
    with pytest.raises(ValueError, match="checkpoint_num"):
        VideoMambaEncoder(**TINY, use_checkpoint=True, checkpoint_num=3)


@pytest.mark.gpu
def test_fast_path_on_and_off_give_the_same_model(monkeypatch):
    torch.manual_seed(0)
    fast = randomize(VideoMambaEncoder(**TINY)).cuda().eval()
    slow = VideoMambaEncoder(**TINY, ssm_cfg={"use_fast_path": False}).cuda().eval()
    slow.load_state_dict(fast.state_dict())
    x = video(2, 4, dtype=torch.float32).cuda()
    with torch.no_grad():
        expected = slow(x)
        got = fast(x)
        monkeypatch.setenv("VIDEOMAMBA_DISABLE_FUSED", "1")
        disabled = fast(x)
    for a, b, c in zip(got, expected, disabled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-5)


def test_fast_forward_off_cuda_runs_the_model():
    model = randomize(VisionMamba(**TINY, num_classes=5)).eval()
    fast = model.fast()
    x = video(2, 4, dtype=torch.float32)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(fast(x), expected, rtol=0, atol=0)
    assert not fast.cuda_graph  # the recorded path is tested on the GPU
    model.train()
    with pytest.raises(ValueError, match=r"call model\.eval"):
        fast(x)


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.gpu
def test_fast_forward_replays_the_offline_pass_from_a_cuda_graph():
    """The encoder's (tokens, pooled) and the classifier's logits from the graph equal the eager pass's, on two clips
    of one shape (fresh tensors each) and one of another (a new graph); a cast model asks for a new fast path."""
    torch.manual_seed(0)
    for model in (VideoMambaEncoder(**TINY), VisionMamba(**TINY, num_classes=5)):
        model = randomize(model).cuda().eval()
        fast = model.fast()
        clips = [video(2, 4, dtype=torch.float32).cuda() + i for i in range(2)] + [
            video(3, 4, dtype=torch.float32).cuda()
        ]
        outputs = []
        for clip in clips:
            with torch.no_grad():
                expected = as_tuple(model(clip))
            got = as_tuple(fast(clip))
            for a, b in zip(got, expected, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
            outputs.append(got[0])
        assert fast.cuda_graph and outputs[0].data_ptr() != outputs[1].data_ptr()
        model.half()
        with pytest.raises(RuntimeError, match=r"model\.fast\(\)"):
            fast(clips[2])  # the recorded shape, its graph reading the weights where they were
