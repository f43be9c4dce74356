import pytest
import torch

from videostate.vlm import VLM2ForConditionalGeneration
from videostate.vlm.memory_utils import memory_consistency_loss, memory_utilization_loss
from videostate.vlm.training import train_step

from .tiny import tiny_base, tiny_vlm2_config, video_batch


def _model(**overrides):
    base = tiny_base("onevision")
    torch.manual_seed(1)
    return VLM2ForConditionalGeneration(base, tiny_vlm2_config(use_spatial_fusion=False, **overrides)).eval()


def _batch(pixels, input_ids, **extra):
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": input_ids,
        "pixel_values_videos": pixels,
        **extra,
    }


def test_memory_losses_are_added_to_the_language_model_loss():
    plain, weighted = _model(), _model(memory_consistency_weight=0.3, memory_utilization_weight=2.0)
    input_ids, pixels = video_batch("onevision", 2, 4, seed=2)
    base_loss = plain(input_ids=input_ids, pixel_values_videos=pixels, labels=input_ids).loss
    assert plain.last_memory_trace is None  # no weights, no trace
    out = weighted(input_ids=input_ids, pixel_values_videos=pixels, labels=input_ids)
    trace = weighted.last_memory_trace
    extra = 0.3 * memory_consistency_loss(trace) + 2.0 * memory_utilization_loss(trace)
    assert extra.item() > 0
    torch.testing.assert_close(out.loss, base_loss + extra)
    out.loss.backward()
    assert weighted.dual_memory.gate[2].bias.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="memory loss weights must be >= 0"):
        tiny_vlm2_config(memory_utilization_weight=-1.0)


def test_train_step_carries_memory_across_batches_of_one_video():
    model = _model()
    input_ids, pixels = video_batch("onevision", 1, 3, seed=3)
    _, second = video_batch("onevision", 1, 3, seed=4)
    metrics = {}

    def step(batch):
        metrics.update(train_step(model, batch, lambda loss: loss.backward()))
        return metrics["loss"].item()

    step(_batch(pixels, input_ids, video_ids=["v"], video_start=torch.tensor([True])))
    carried = step(_batch(second, input_ids, video_ids=["v"], video_start=torch.tensor([False])))
    fresh = step(_batch(second, input_ids))  # no ids: fresh memory
    restarted = step(_batch(second, input_ids, video_ids=["v"], video_start=torch.tensor([True])))
    assert restarted == pytest.approx(fresh, abs=1e-6) and abs(carried - fresh) > 1e-5
    # the carried loss is the one of the second segment read after the first (encoded under the same id)
    model.clear_video_memory()
    with torch.no_grad():
        model.encode_video(pixels, video_ids=["w"])
        expected = model(input_ids=input_ids, pixel_values_videos=second, labels=input_ids, video_ids=["w"]).loss
    assert carried == pytest.approx(expected.item(), abs=1e-6)
    state = model.video_memory("w")
    assert not state.working.slots.requires_grad  # carried memory is detached (truncated BPTT)
    # a batch of other videos drops the memories of the ended streams
    step(_batch(second, input_ids, video_ids=["x"], video_start=torch.tensor([True])))
    assert set(model._video_memories) == {"x"}
    with pytest.raises(ValueError, match="need a video_start flag per sample; got 1 ids and None flags"):
        step(_batch(second, input_ids, video_ids=["x"]))


def test_dataset_segments_of_one_video_stream_in_order(tmp_path):
    import json

    from videostate.data.video import VideoWriter
    from videostate.vlm.inputs import VideoPromptEncoder
    from videostate.vlm.training import ConversationVideoDataset, VLM2DataConfig, collate_conversations

    from .tiny import char_tokenizer

    # flat frames of distinct grey levels survive the video codec, so each decoded frame names its index
    frames = [torch.full((3, 32, 32), 0.1 + 0.1 * f) for f in range(8)]
    with VideoWriter(tmp_path / "long.mp4", fps=5) as writer:
        for frame in frames:
            writer.write(frame)
    turns = [{"from": "human", "value": "<image>\nWhat changed?"}, {"from": "gpt", "value": "1"}]
    samples = [
        {"video": "long.mp4", "frame_range": [0, 4], "conversations": turns},
        {"video": "long.mp4", "frame_range": [4, 8], "conversations": turns},
        {"video": "long.mp4", "frame_range": [6, 9], "conversations": turns},
    ]
    (tmp_path / "data.json").write_text(json.dumps(samples))
    config = VLM2DataConfig(data_path=str(tmp_path / "data.json"), video_folder=str(tmp_path), num_frames=2)
    dataset = ConversationVideoDataset(config, VideoPromptEncoder(char_tokenizer(), tiny_base("onevision").config))
    first, second = dataset[0], dataset[1]
    assert (first["video_id"], first["video_start"]) == ("long.mp4", True)
    assert (second["video_id"], second["video_start"]) == ("long.mp4", False)
    # frames 4 and 7 (uniform over [4, 8)), decoded and normalised as the encoder does
    expected = VideoPromptEncoder(char_tokenizer(), tiny_base("onevision").config).pixels(
        torch.stack([frames[4], frames[7]])
    )
    torch.testing.assert_close(second["pixel_values_videos"], expected, atol=0.05, rtol=0)  # video codec loss
    batch = collate_conversations([first, second], pad_token_id=0)
    assert batch["video_ids"] == ["long.mp4", "long.mp4"] and batch["video_start"].tolist() == [True, False]
    with pytest.raises(ValueError, match=r"frame_range must satisfy 0 <= start < stop <= 8 frames; got \[6, 9\]"):
        dataset[2]
