"""VidEoMT model: parity with transformers, input checks, 5D vs 4D, online step, aux outputs, loading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import VideomtForUniversalSegmentation as TransformersVideomt

from videostate.segmentation import (
    VideomtForUniversalSegmentation,
    VideomtState,
    flatten_frames,
    from_frame_major,
    to_frame_major,
    unflatten_frames,
)

from .tiny import NUM_PATCHES, random_patch_mask, random_video, tiny_config, tiny_model


def transformers_twin(model: VideomtForUniversalSegmentation) -> TransformersVideomt:
    twin = TransformersVideomt(model.config).to(model.dtype).eval()
    twin.load_state_dict(model.state_dict())
    return twin


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("frames", [1, 2, 3])
def test_parity_with_transformers(batch, frames):
    model = tiny_model(dtype=torch.float32)
    twin = transformers_twin(model)
    video = random_video(batch, frames, seed=batch * 10 + frames, dtype=torch.float32)
    with torch.no_grad():
        ours = model(video)
        theirs = twin(pixel_values_videos=video)
    q = model.config.num_queries
    assert ours.masks_queries_logits.shape == (batch, frames, q, 8, 8)
    assert ours.class_queries_logits.shape == (batch, frames, q, 4)
    for name in ("masks_queries_logits", "class_queries_logits", "last_hidden_state"):
        torch.testing.assert_close(
            getattr(ours, name), from_frame_major(getattr(theirs, name), batch), rtol=0, atol=1e-6
        )


def test_frame_layout_helpers_round_trip():
    x = torch.randn(2, 3, 4)
    assert torch.equal(unflatten_frames(flatten_frames(x), 2), x)
    assert torch.equal(from_frame_major(to_frame_major(x), 2), x)
    assert torch.equal(flatten_frames(x)[1 * 3 + 2], x[1, 2])
    assert torch.equal(to_frame_major(x)[2 * 2 + 1], x[1, 2])
    with pytest.raises(ValueError, match="batch_size=4"):
        unflatten_frames(torch.randn(6, 2), 4)


def test_layer_by_layer_parity_with_transformers_hooks():
    model = tiny_model(num_hidden_layers=4, num_blocks=2)
    twin = transformers_twin(model)
    video = random_video(2, 3)
    traces = {"ours": [], "theirs": []}
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out, key=key: traces[key].append(out))
        for key, net in (("ours", model), ("theirs", twin))
        for layer in net.layers
    ]
    with torch.no_grad():
        model(video)
        twin(pixel_values_videos=video)
    for hook in hooks:
        hook.remove()
    # two encoder layers on all frames, then 3 frames x 2 segmenter layers
    assert len(traces["ours"]) == len(traces["theirs"]) == 2 + 3 * 2
    for ours, theirs in zip(traces["ours"], traces["theirs"], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("masked", [False, True])
def test_embeddings_5d_equal_flat_4d(masked):
    model = tiny_model()
    video = random_video(2, 3)
    mask = random_patch_mask(2, 3, NUM_PATCHES) if masked else None
    five = model.embeddings(video, mask)
    four = model.embeddings(flatten_frames(video), flatten_frames(mask) if masked else None)
    assert torch.equal(five, four)
    if masked:
        flat_mask = model.embeddings(video, flatten_frames(mask))
        assert torch.equal(five, flat_mask)
        # masked patch tokens are the mask token plus the position embedding
        b, t = 1, 2
        patch = int(mask[b, t].nonzero()[0])
        expected = model.embeddings.mask_token[0, 0] + model.embeddings.position_embeddings.weight[patch]
        torch.testing.assert_close(five[b * 3 + t, model.embeddings.num_prefix_tokens + patch], expected)


@pytest.mark.parametrize("frames", [2, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_clip_equals_frame_by_frame_at_every_layer(frames, masked):
    """5D clip forward vs 4D frames through ``step``: every layer's output (forward hooks), num_blocks = 2."""
    model = tiny_model(num_hidden_layers=4, num_blocks=2)
    video = random_video(2, frames)
    mask = random_patch_mask(2, frames, NUM_PATCHES) if masked else None
    trace: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: trace.append(out)) for layer in model.layers]
    with torch.no_grad():
        clip = model(video, bool_masked_pos=mask)
        clip_trace, trace[:] = list(trace), []
        state = model.init_state(2)
        steps = []
        for t in range(frames):
            out, state = model.step(video[:, t], state, bool_masked_pos=None if mask is None else mask[:, t])
            steps.append(out)
    for hook in hooks:
        hook.remove()
    # clip: 2 encoder layers over (B*T) frames, then per frame 2 segmenter layers; steps: per frame 4 layers
    for t in range(frames):
        step_layers = trace[4 * t : 4 * t + 4]
        for i in range(2):
            torch.testing.assert_close(unflatten_frames(clip_trace[i], 2)[:, t], step_layers[i], rtol=0, atol=1e-12)
        for i in range(2):
            torch.testing.assert_close(clip_trace[2 + 2 * t + i], step_layers[2 + i], rtol=0, atol=1e-12)
    for name in ("masks_queries_logits", "class_queries_logits"):
        stepped = torch.cat([getattr(o, name) for o in steps], dim=1)
        torch.testing.assert_close(stepped, getattr(clip, name), rtol=0, atol=1e-12)


def test_chunked_with_state_equals_offline_and_is_deterministic():
    model = tiny_model()
    video = random_video(2, 5)
    with torch.no_grad():
        offline = model(video)
        again = model(video)
        state = model.init_state(2)
        chunks = []
        for start, stop in ((0, 2), (2, 3), (3, 5)):
            out = model(video[:, start:stop], state=state)
            state = out.next_state
            chunks.append(out.masks_queries_logits)
    assert torch.equal(offline.masks_queries_logits, again.masks_queries_logits)
    torch.testing.assert_close(torch.cat(chunks, dim=1), offline.masks_queries_logits, rtol=0, atol=1e-12)
    assert offline.next_state is None


def test_query_propagation_rule():
    """Frame 0 uses query.weight; frame t uses query_updater(previous pre-LayerNorm queries) + query.weight."""
    model = tiny_model(num_blocks=1)
    video = random_video(1, 2)
    with torch.no_grad():
        out = model(video, output_hidden_states=True)
        encoder = out.hidden_states[model.query_start]  # (B, T, 1 + R + N, D)
        q = model.query.weight[None]
        segmenter = model.layers[-1]
        x0 = segmenter(torch.cat((q, encoder[:, 0]), dim=1))
        x1 = segmenter(torch.cat((model.query_updater(x0[:, :5]) + q, encoder[:, 1]), dim=1))
        masks1, classes1 = model.predict(model.layernorm(x1))
    torch.testing.assert_close(out.masks_queries_logits[:, 1], masks1, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.class_queries_logits[:, 1], classes1, rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm_queries", [False, True])
def test_auxiliary_logits_from_every_segmenter_layer_input(norm_queries):
    model = tiny_model(num_hidden_layers=4, num_blocks=2, norm_queries=norm_queries)
    video = random_video(2, 2)
    with torch.no_grad():
        out = model(video, output_auxiliary_logits=True, output_hidden_states=True)
    assert len(out.auxiliary_logits) == 2
    assert len(out.hidden_states) == 1 + 4
    encoder = out.hidden_states[2]
    first_segmenter = out.hidden_states[3]
    norm = model.layernorm if norm_queries else torch.nn.Identity()
    q = model.query.weight[None].expand(2, -1, -1)
    # frame 1's queries come from frame 0's output: normed (last_hidden_state) or not (last layer output)
    previous = out.last_hidden_state[:, 0] if norm_queries else out.hidden_states[4][:, 0]
    inputs_layer0 = [
        torch.cat((q, encoder[:, 0]), 1),
        torch.cat((model.query_updater(previous[:, :5]) + q, encoder[:, 1]), 1),
    ]
    with torch.no_grad():
        for t in range(2):
            for layer, x in ((0, inputs_layer0[t]), (1, first_segmenter[:, t])):
                masks, classes = model.predict(norm(x))
                aux = out.auxiliary_logits[layer]
                torch.testing.assert_close(aux["masks_queries_logits"][:, t], masks, rtol=0, atol=1e-12)
                torch.testing.assert_close(aux["class_queries_logits"][:, t], classes, rtol=0, atol=1e-12)
    model.train()
    assert model(video).auxiliary_logits is not None
    model.eval()
    assert model(video).auxiliary_logits is None


def test_state_reset_index_select_and_resume():
    model = tiny_model()
    video = random_video(2, 3)
    with torch.no_grad():
        state = model.init_state(2)
        _, state = model.step(video[:, 0], state)
        _, state = model.step(video[:, 1], state)
        fresh, _ = model.step(video[:, 2], model.init_state(2))
        reset, _ = model.step(video[:, 2], state.reset(torch.tensor([True, False])))
        carried, _ = model.step(video[:, 2], state)
        torch.testing.assert_close(reset.masks_queries_logits[0], fresh.masks_queries_logits[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(reset.masks_queries_logits[1], carried.masks_queries_logits[1], rtol=0, atol=1e-12)
        assert (carried.masks_queries_logits[0] - fresh.masks_queries_logits[0]).abs().max() > 1e-6
        one, _ = model.step(video[1:, 2], state.index_select(torch.tensor([1])))
        torch.testing.assert_close(one.masks_queries_logits[0], carried.masks_queries_logits[1], rtol=0, atol=1e-12)
        resumed = model.init_state(2)
        resumed.load_state_dict(state.state_dict())
        again, _ = model.step(video[:, 2], resumed)
    torch.testing.assert_close(again.masks_queries_logits, carried.masks_queries_logits, rtol=0, atol=1e-12)


def test_save_and_load_pretrained_both_ways(tmp_path):
    model = tiny_model(dtype=torch.float32)
    video = random_video(1, 2, dtype=torch.float32)
    model.save_pretrained(tmp_path / "ours")
    assert {p.name for p in (tmp_path / "ours").iterdir()} >= {"config.json", "model.safetensors"}
    loaded = VideomtForUniversalSegmentation.from_pretrained(tmp_path / "ours").eval()
    theirs = TransformersVideomt.from_pretrained(tmp_path / "ours").eval()
    theirs.save_pretrained(tmp_path / "theirs")
    from_theirs = VideomtForUniversalSegmentation.from_pretrained(tmp_path / "theirs").eval()
    with torch.no_grad():
        expected = model(video).masks_queries_logits
        assert torch.equal(loaded(video).masks_queries_logits, expected)
        assert torch.equal(from_theirs(video).masks_queries_logits, expected)
        # the same weights in transformers' model (which predicts frame by frame, we predict all frames at once)
        torch.testing.assert_close(
            from_frame_major(theirs(pixel_values_videos=video).masks_queries_logits, 1), expected, rtol=0, atol=1e-6
        )


def test_truncated_checkpoint_is_an_error(tmp_path):
    tiny_model(dtype=torch.float32).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["query_updater.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"query_updater\.weight"):
        VideomtForUniversalSegmentation.from_pretrained(tmp_path)


def test_config_checks(tmp_path):
    with pytest.raises(ValueError, match="num_frames"):
        VideomtForUniversalSegmentation(tiny_config(num_frames=3))
    with pytest.raises(TypeError, match="norm_queries"):
        VideomtForUniversalSegmentation(tiny_config(norm_queries=1))
    with pytest.raises(ValueError, match="num_blocks"):
        VideomtForUniversalSegmentation(tiny_config(num_blocks=4))
    with pytest.raises(TypeError, match="VideomtConfig"):
        VideomtForUniversalSegmentation({"hidden_size": 16})
    tiny_model(dtype=torch.float32).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["frames_per_clip"] = 4
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="frames_per_clip"):
        VideomtForUniversalSegmentation.from_pretrained(tmp_path)


def test_input_errors():
    model = tiny_model()
    video = random_video(2, 3)
    cases = [
        (dict(pixel_values_videos=video[:, 0]), ValueError, r"\(B, T, C, H, W\)"),
        (dict(pixel_values_videos=video[..., :8]), ValueError, "got \\(2, 3, 3, 16, 8\\)"),
        (dict(pixel_values_videos=video[:, :0]), ValueError, "got \\(2, 0"),
        (dict(pixel_values_videos=video.long()), TypeError, "floating-point"),
        (dict(pixel_values_videos=video, patch_offsets=[torch.zeros(1, 4)]), ValueError, "patch_offsets"),
        (
            dict(pixel_values_videos=video, bool_masked_pos=random_patch_mask(2, 3, NUM_PATCHES - 1)),
            ValueError,
            "got \\(2, 3, 15\\)",
        ),
        (
            dict(pixel_values_videos=video, bool_masked_pos=random_patch_mask(3, 3, NUM_PATCHES)),
            ValueError,
            "\\(B, T, N\\)=\\(2, 3, 16\\)",
        ),
        (
            dict(pixel_values_videos=video, bool_masked_pos=random_patch_mask(2, 3, NUM_PATCHES).double()),
            ValueError,
            "torch.bool",
        ),
        (dict(pixel_values_videos=video, state=model.init_state(3)), ValueError, "started \\(2,\\)"),
        (dict(pixel_values_videos=video, state=torch.zeros(2)), TypeError, "VideomtState"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            model(**kwargs)
    with pytest.raises(ValueError, match="\\(B, C, H, W\\)"):
        model.step(video, model.init_state(2))
    with pytest.raises(ValueError, match="init_state"):
        model.step(video[:, 0], None)
    with pytest.raises(ValueError, match="batch_size"):
        model.init_state(0)
    assert isinstance(model.init_state(2), VideomtState)


@pytest.mark.parametrize("frames", [2, 3])
def test_repeated_runs_are_identical(frames):
    model = tiny_model()
    video = random_video(2, frames, seed=frames)
    with torch.no_grad():
        first, second = model(video), model(video)
    assert torch.equal(first.masks_queries_logits, second.masks_queries_logits)
    assert torch.equal(first.class_queries_logits, second.class_queries_logits)


def test_from_eomt_equals_eomt_without_masked_attention_on_one_frame(tmp_path):
    from transformers import EomtConfig, EomtForUniversalSegmentation

    torch.manual_seed(3)
    eomt = EomtForUniversalSegmentation(EomtConfig(**tiny_config().to_dict())).double().eval()
    eomt.attn_mask_probs.zero_()  # EoMT's masked attention (on by default) is what VidEoMT drops
    eomt.save_pretrained(tmp_path)
    model = VideomtForUniversalSegmentation.from_eomt(tmp_path).double().eval()
    video = random_video(2, 1)
    with torch.no_grad():
        ours = model(video)
        theirs = eomt(pixel_values=video[:, 0])
    torch.testing.assert_close(ours.masks_queries_logits[:, 0], theirs.masks_queries_logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.class_queries_logits[:, 0], theirs.class_queries_logits, rtol=0, atol=1e-10)
    assert VideomtForUniversalSegmentation.from_eomt(eomt, norm_queries=True).norm_queries
