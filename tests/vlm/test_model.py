import pytest
import torch

from videostate.vlm import VLM2Config, VLM2ForConditionalGeneration

from .tiny import VISION_DIM, loss_backward_and_check_gradients, spatial_batch, tiny_base, tiny_vlm2_config, video_batch

KINDS = ["onevision", "nextvideo"]


def _model(kind, seed=0, **overrides):
    base = tiny_base(kind, seed)
    torch.manual_seed(seed + 1)
    return VLM2ForConditionalGeneration(base, tiny_vlm2_config(**overrides)).eval()


def _frame_tokens(kind, tokens, frames):
    """Drop OneVision's trailing newline token: ``(batch, frames·4, d)``."""
    return tokens[:, : frames * 4]


@pytest.mark.parametrize("kind", KINDS)
def test_switched_off_equals_the_transformers_model_bit_for_bit(kind):
    model = _model(kind, use_dual_memory=False, use_spatial_fusion=False)
    base = model.base
    input_ids, pixels = video_batch(kind, 2, 3)
    with torch.no_grad():
        expected_features = base.get_video_features(pixel_values_videos=pixels).pooler_output
        torch.testing.assert_close(model.encode_video(pixels), expected_features, rtol=0, atol=0)
        expected = base(input_ids=input_ids, pixel_values_videos=pixels, labels=input_ids)
        out = model(input_ids=input_ids, pixel_values_videos=pixels, labels=input_ids)
    torch.testing.assert_close(out.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, expected.loss, rtol=0, atol=0)
    generated = model.generate(input_ids=input_ids, pixel_values_videos=pixels, max_new_tokens=4, do_sample=False)
    reference = base.generate(input_ids=input_ids, pixel_values_videos=pixels, max_new_tokens=4, do_sample=False)
    assert torch.equal(generated, reference)


def test_a_base_model_without_mm_encoder_outputs_is_refused():
    """transformers < 5.18 has no mm_encoder_outputs: its forward's **kwargs would drop the video features, and
    the language model would read the placeholder embeddings (no gradient reaches the VLM² modules)."""
    base = tiny_base("onevision")

    class WithoutEncoderOutputs(type(base)):
        def forward(self, input_ids=None, labels=None, **kwargs):
            return super().forward(input_ids=input_ids, labels=labels)

    base.__class__ = WithoutEncoderOutputs
    with pytest.raises(RuntimeError, match=r"takes no mm_encoder_outputs.*transformers >= 5.18"):
        VLM2ForConditionalGeneration(base, tiny_vlm2_config())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("memory", [True, False])
def test_full_forward_and_generate_with_fusion(kind, memory):
    model = _model(kind, use_dual_memory=memory)
    input_ids, pixels = video_batch(kind, 2, 4)
    spatial = spatial_batch(2, 4)
    out = model(input_ids=input_ids, pixel_values_videos=pixels, spatial_features=spatial, labels=input_ids)
    assert torch.isfinite(out.loss)
    plain = model.base(input_ids=input_ids, pixel_values_videos=pixels).logits
    assert (out.logits - plain).abs().max() > 1e-3  # the additions change what the LLM sees
    generated = model.generate(
        input_ids=input_ids, pixel_values_videos=pixels, spatial_features=spatial, max_new_tokens=3, do_sample=False
    )
    assert generated.shape == (2, input_ids.shape[1] + 3)
    assert torch.equal(generated[:, : input_ids.shape[1]], input_ids)


def _memory_only(kind):
    return _model(kind, use_spatial_fusion=False)


@pytest.mark.parametrize("kind", KINDS)
def test_memory_changes_later_frames_only(kind):
    model = _memory_only(kind)
    off = _model(kind, use_spatial_fusion=False, use_dual_memory=False)
    _, pixels = video_batch(kind, 1, 3)
    with torch.no_grad():
        on_tokens = _frame_tokens(kind, model.encode_video(pixels), 3)
        off_tokens = _frame_tokens(kind, off.encode_video(pixels), 3)
    torch.testing.assert_close(on_tokens[:, :4], off_tokens[:, :4], rtol=0, atol=0)  # empty memory: frame 1 as is
    assert (on_tokens[:, 4:] - off_tokens[:, 4:]).abs().max() > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_memory_persists_across_calls_of_one_video(kind):
    model = _memory_only(kind)
    _, pixels = video_batch(kind, 1, 5, seed=3)
    with torch.no_grad():
        whole = _frame_tokens(kind, model.encode_video(pixels), 5)
        first = _frame_tokens(kind, model.encode_video(pixels[:, :2], video_ids=["scene0"]), 2)
        second = _frame_tokens(kind, model.encode_video(pixels[:, 2:], video_ids=["scene0"]), 3)
        fresh_second = _frame_tokens(kind, model.encode_video(pixels[:, 2:]), 3)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-5, atol=1e-6)
    assert (second - fresh_second).abs().max() > 1e-4
    state = model._video_memories["scene0"]
    assert state.working.count.tolist() == [2] and state.episodic.count.tolist() == [3]  # bounded: L_w=2, L_e=3


@pytest.mark.parametrize("kind", KINDS)
def test_memory_resets_at_a_new_video(kind):
    model = _memory_only(kind)
    _, pixels = video_batch(kind, 1, 4, seed=4)
    with torch.no_grad():
        model.encode_video(pixels[:, :2], video_ids=["a"])
        model.clear_video_memory("a")
        after_clear = model.encode_video(pixels[:, 2:], video_ids=["a"])
        new_video = model.encode_video(pixels[:, 2:], video_ids=["b"])
        fresh = model.encode_video(pixels[:, 2:])
    torch.testing.assert_close(after_clear, fresh, rtol=0, atol=0)
    torch.testing.assert_close(new_video, fresh, rtol=0, atol=0)
    model.clear_video_memory()
    assert model._video_memories == {}


@pytest.mark.parametrize("kind", KINDS)
def test_videos_in_a_batch_have_separate_memories(kind):
    model = _memory_only(kind)
    _, pixels = video_batch(kind, 2, 4, seed=5)
    changed = pixels.clone()
    changed[1] = torch.randn_like(changed[1])
    with torch.no_grad():
        a = model.encode_video(pixels)
        b = model.encode_video(changed)
        single = model.encode_video(pixels[:1])
        # a video continues its own memory when the batch around it changes
        model.encode_video(pixels[:, :2], video_ids=["x", "y"])
        y_rest = model.encode_video(pixels[1:, 2:], video_ids=["y"])
        y_whole = model.encode_video(pixels[1:])
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert (a[1] - b[1]).abs().max() > 1e-3
    torch.testing.assert_close(a[:1], single, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        _frame_tokens(kind, y_rest, 2), _frame_tokens(kind, y_whole, 4)[:, 8:], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "parts, expected_modules",
    [
        ("dual_memory", {"dual_memory"}),
        ("dual_memory,mm_mlp_adapter", {"dual_memory", "base.model.multi_modal_projector", "base.model.image_newline"}),
        (
            "dual_memory,mm_mlp_adapter,fusion_block",
            {"dual_memory", "base.model.multi_modal_projector", "base.model.image_newline", "spatial_fusion"},
        ),
    ],
)
def test_gradients_reach_exactly_the_trainable_parameters(parts, expected_modules):
    model = _model("onevision", mm_tunable_parts=parts)
    model.train()
    trainable = model.apply_tunable_parts()
    assert {n for n in trainable} == {
        n for n, _ in model.named_parameters() if any(n.startswith(m) for m in expected_modules)
    }
    loss_backward_and_check_gradients(model, trainable)


def test_tune_dual_memory_flag_and_unknown_parts():
    config = VLM2Config(memory_feature_dim=VISION_DIM, tune_dual_memory=True, mm_tunable_parts="mm_mlp_adapter")
    assert config.tunable_parts() == {"dual_memory", "mm_mlp_adapter"}
    with pytest.raises(ValueError, match=r"unknown \['projector'\]"):
        VLM2Config(mm_tunable_parts="projector")
    with pytest.raises(ValueError, match="fusion_block is listed"):
        _model("onevision", use_spatial_fusion=False, mm_tunable_parts="fusion_block").apply_tunable_parts()


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_through_the_real_loaders(kind, tmp_path):
    model = _model(kind, mm_tunable_parts="dual_memory,mm_mlp_adapter")
    with torch.no_grad():
        for p in model.base.model.multi_modal_projector.parameters():
            p.add_(0.01)  # a tuned projector travels with our modules
    base_dir, vlm2_dir = tmp_path / "base", tmp_path / "vlm2"
    _model(kind).base.save_pretrained(base_dir)  # untuned base weights
    model.save_pretrained(vlm2_dir, base_parts=("mm_mlp_adapter",))
    loaded = VLM2ForConditionalGeneration.from_pretrained(base_dir, vlm2_dir).eval()
    assert loaded.config == model.config
    input_ids, pixels = video_batch(kind, 1, 3)
    spatial = spatial_batch(1, 3)
    with torch.no_grad():
        expected = model(input_ids=input_ids, pixel_values_videos=pixels, spatial_features=spatial).logits
        got = loaded(input_ids=input_ids, pixel_values_videos=pixels, spatial_features=spatial).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    from safetensors.torch import load_file

    keys = load_file(str(vlm2_dir / "model.safetensors")).keys()
    allowed = ("spatial_fusion.", "dual_memory.", "base.model.multi_modal_projector.", "base.model.image_newline")
    assert all(k.startswith(allowed) for k in keys)


def test_wrong_saved_modules_name_the_keys(tmp_path):
    model = _model("onevision")
    model.save_pretrained(tmp_path / "full")
    other = _model("onevision", use_spatial_fusion=False)
    with pytest.raises(KeyError, match=r"unexpected keys \['spatial_fusion\."):
        other.load_vlm2_weights(tmp_path / "full" / "model.safetensors")
    memory_only_dir = tmp_path / "memory"
    other.save_pretrained(memory_only_dir)
    with pytest.raises(KeyError, match=r"missing keys \['spatial_fusion\."):
        model.load_vlm2_weights(memory_only_dir / "model.safetensors")


def test_input_errors():
    model = _model("onevision")
    _, pixels = video_batch("onevision", 2, 3)
    with pytest.raises(ValueError, match="spatial_features are required"):
        model.encode_video(pixels)
    with pytest.raises(ValueError, match=r"cover \(batch, frames\)=\(2, 3\); got \(2, 2\)"):
        model.encode_video(pixels, spatial_batch(2, 2))
    with pytest.raises(ValueError, match="must be distinct"):
        model.encode_video(pixels, spatial_batch(2, 3), video_ids=["a", "a"])
    with pytest.raises(ValueError, match="name the 2 videos"):
        model.encode_video(pixels, spatial_batch(2, 3), video_ids=["a"])
    with pytest.raises(ValueError, match="at least one frame"):
        model.encode_video(pixels[:, :0], spatial_batch(2, 3))
    with pytest.raises(ValueError, match=r"\(batch, frames, 3, H, W\)"):
        model.encode_video(pixels[0])
    with pytest.raises(ValueError, match="memory_feature_dim must equal the vision feature width of the base model"):
        VLM2ForConditionalGeneration(tiny_base("onevision"), tiny_vlm2_config(memory_feature_dim=48))
    with pytest.raises(TypeError, match="base must be one of"):
        VLM2ForConditionalGeneration(torch.nn.Linear(2, 2), tiny_vlm2_config())
    off = _model("onevision", use_spatial_fusion=False, use_dual_memory=False)
    with pytest.raises(ValueError, match="use_spatial_fusion is off"):
        off.encode_video(pixels, spatial_batch(2, 3))
    with pytest.raises(ValueError, match="use_dual_memory is off"):
        off.encode_video(pixels, video_ids=["a", "b"])


def test_load_vlm3r_weights_maps_fusion_block_and_projector(tmp_path):
    from videostate.vlm.model import load_vlm3r_weights

    model = _model("onevision")
    fusion = model.spatial_fusion.fusion
    g = torch.Generator().manual_seed(3)
    state = {
        f"base_model.model.model.fusion_block.{k}": torch.randn(v.shape, generator=g)
        for k, v in fusion.state_dict().items()
    }
    projector = model.base.model.multi_modal_projector
    state["model.mm_projector.0.weight"] = torch.randn(projector.linear_1.weight.shape, generator=g)
    state["model.mm_projector.0.bias"] = torch.randn(projector.linear_1.bias.shape, generator=g)
    state["model.mm_projector.2.weight"] = torch.randn(projector.linear_2.weight.shape, generator=g)
    state["model.mm_projector.2.bias"] = torch.randn(projector.linear_2.bias.shape, generator=g)
    torch.save(state, tmp_path / "non_lora_trainables.bin")
    loaded = load_vlm3r_weights(model, tmp_path / "non_lora_trainables.bin")
    assert len(loaded) == len(state)
    torch.testing.assert_close(
        fusion.clip_query_proj.weight, state["base_model.model.model.fusion_block.clip_query_proj.weight"]
    )
    torch.testing.assert_close(projector.linear_2.bias, state["model.mm_projector.2.bias"])
    del state["base_model.model.model.fusion_block.out_norm.weight"]
    with pytest.raises(KeyError, match=r"missing keys \['out_norm.weight'\]"):
        load_vlm3r_weights(model, state)


def test_config_from_llava_model_arguments(tmp_path):
    from types import SimpleNamespace

    args = SimpleNamespace(
        use_dual_memory=True,
        memory_L_w=4,
        memory_L_e=16,
        memory_num_heads=4,
        memory_dropout=0.0,
        tune_dual_memory=True,
        mm_tunable_parts="mm_mlp_adapter",
        vision_tower="google/siglip-so400m-patch14-384",
        lora_enable=True,
    )
    config = VLM2Config.from_model_args(args)
    assert (config.memory_L_w, config.memory_L_e, config.memory_num_heads) == (4, 16, 4)
    assert config.tunable_parts() == {"dual_memory", "mm_mlp_adapter"}
    config.save(tmp_path / "c.json")
    assert VLM2Config.load(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match=r"unknown VLM2Config fields \['vision_tower'\]"):
        VLM2Config.from_dict({"vision_tower": "x"})
    with pytest.raises(ValueError, match="coordinate_gate_type must be one of"):
        VLM2Config(coordinate_gate_type="relu")


def test_a_video_stream_saves_and_resumes_in_another_model():
    model = _memory_only("onevision")
    _, pixels = video_batch("onevision", 1, 5, seed=8)
    with torch.no_grad():
        model.encode_video(pixels[:, :3], video_ids=["v"])
        saved = model.video_memory("v").state_dict()
        expected = model.encode_video(pixels[:, 3:], video_ids=["v"])
    other = _memory_only("onevision")  # same seeds: same weights
    state = other.dual_memory.init_state(1, 16)
    state.load_state_dict(saved)
    other.set_video_memory("v", state)
    with torch.no_grad():
        resumed = other.encode_video(pixels[:, 3:], video_ids=["v"])
    torch.testing.assert_close(resumed, expected, rtol=0, atol=0)
    with pytest.raises(KeyError, match="no memory is kept for video 'w'"):
        other.video_memory("w")
    with pytest.raises(ValueError, match="batch size 1; got 2"):
        other.set_video_memory("w", other.dual_memory.init_state(2, 16))
