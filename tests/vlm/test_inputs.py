import pytest
import torch

from videostate.vlm.inputs import VideoPromptEncoder, sample_frame_indices, video_token_count

from .tiny import VIDEO_TOKEN, char_tokenizer, tiny_base


def test_sample_frame_indices_match_linspace_truncation():
    assert sample_frame_indices(10, 4) == [0, 3, 6, 9]  # 0, 3, 6, 9 exactly
    assert sample_frame_indices(8, 3) == [0, 3, 7]  # 0, 3.5 -> 3, 7
    assert sample_frame_indices(3, 5) == [0, 0, 1, 1, 2]  # fewer frames than asked: repeats
    with pytest.raises(ValueError, match="must be positive"):
        sample_frame_indices(0, 4)


@pytest.mark.parametrize("kind, per_frame, extra", [("onevision", 4, 1), ("nextvideo", 4, 0)])
def test_video_token_count_is_what_the_model_accepts(kind, per_frame, extra):
    base = tiny_base(kind)
    assert video_token_count(base.config, 3) == 3 * per_frame + extra
    encoder = VideoPromptEncoder(char_tokenizer(), base.config)
    frames = torch.rand(3, 3, 40, 48)
    inputs = encoder(frames, "How many chairs?")
    assert int((inputs["input_ids"] == VIDEO_TOKEN).sum()) == 3 * per_frame + extra
    with torch.no_grad():
        base(**inputs)  # the placeholders match the features (transformers checks the count)
        bad = dict(inputs, input_ids=inputs["input_ids"][:, 1:].clone())
        bad["input_ids"][0, bad["input_ids"][0].tolist().index(VIDEO_TOKEN)] = 65
        bad["attention_mask"] = inputs["attention_mask"][:, 1:]
        with pytest.raises(ValueError):
            base(**bad)


def test_pixels_resize_and_normalise():
    base = tiny_base("onevision")
    encoder = VideoPromptEncoder(char_tokenizer(), base.config, image_mean=(0.1, 0.2, 0.3), image_std=(0.5, 0.25, 2))
    frames = torch.rand(2, 3, 32, 32)
    expected = (frames - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 2]).view(1, 3, 1, 1)
    torch.testing.assert_close(encoder.pixels(frames), expected)  # already the model's size: no resampling
    colours = torch.rand(2, 3, 1, 1)
    big = colours.expand(2, 3, 48, 80)  # any normalised resampling filter keeps a flat colour
    expected = ((colours - encoder.mean) / encoder.std).expand(2, 3, 32, 32)
    torch.testing.assert_close(encoder.pixels(big), expected)
    with pytest.raises(ValueError, match=r"\(frames, 3, H, W\)"):
        encoder.pixels(torch.rand(3, 32, 32))


@pytest.mark.parametrize("chat_template", [True, False])
def test_training_example_labels_only_the_assistant_turns(chat_template):
    base = tiny_base("nextvideo")
    tokenizer = char_tokenizer(chat_template)
    encoder = VideoPromptEncoder(tokenizer, base.config)
    messages = [
        {"role": "user", "content": "<video>\nWhere?"},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "Count?"},
        {"role": "assistant", "content": "42"},
    ]
    example = encoder.training_example(torch.rand(2, 3, 32, 32), messages)
    ids, labels = example["input_ids"], example["labels"]
    labelled = (labels != -100).int()
    spans = [i for i in range(len(ids)) if labelled[i] and (i == 0 or not labelled[i - 1])]
    assert len(spans) == 2  # two separate answer spans
    answers = tokenizer.decode(ids[labels != -100], skip_special_tokens=True)
    assert answers.replace(" ", "") == "B42"
    assert torch.equal(labels[labels != -100], ids[labels != -100])
    assert int((ids == VIDEO_TOKEN).sum()) == 8
    assert example["pixel_values_videos"].shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="must end with an assistant turn"):
        encoder.training_example(torch.rand(2, 3, 32, 32), messages[:1])


def test_encoder_errors():
    base = tiny_base("onevision")
    tokenizer = char_tokenizer()
    base.config.video_token_index = 99
    with pytest.raises(ValueError, match="map '<video>' to the model's video_token_index 99; got 251"):
        VideoPromptEncoder(tokenizer, base.config)
    base.config.video_token_index = VIDEO_TOKEN
    encoder = VideoPromptEncoder(tokenizer, base.config)
    with pytest.raises(ValueError, match="exactly one <video>; found 2"):
        encoder.token_ids("<video><video>", 1)
