"""Tiny random LLaVA-OneVision and LLaVA-NeXT-Video models for CPU tests."""

from __future__ import annotations

import torch
from transformers import (
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2Config,
    SiglipVisionConfig,
)

from videostate.vlm import SpatialFeatures, VLM2Config

VIDEO_TOKEN = 251
IMAGE_TOKEN = 250
VISION_DIM = 32
GEOM_DIM = 24
IMAGE_SIZE = 32  # 4x4 patches of 8 pixels


def tiny_base(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    vision = SiglipVisionConfig(
        hidden_size=VISION_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
    )
    text = Qwen2Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    common = dict(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN,
        video_token_index=VIDEO_TOKEN,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    if kind == "onevision":
        model = LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(**common, image_grid_pinpoints=[[32, 32]]))
    elif kind == "nextvideo":
        model = LlavaNextVideoForConditionalGeneration(
            LlavaNextVideoConfig(
                **common, image_grid_pinpoints=[[32, 32]], spatial_pool_mode="average", spatial_pool_stride=2
            )
        )
    else:
        raise ValueError(kind)
    model.generation_config.pad_token_id = 0
    return model.eval()


def video_token_count(kind: str, frames: int) -> int:
    """Placeholders per video: 2x2 pooled tokens per frame, plus one newline token for OneVision."""
    return frames * 4 + (1 if kind == "onevision" else 0)


def tiny_vlm2_config(**overrides) -> VLM2Config:
    values = dict(
        memory_L_w=2,
        memory_L_e=3,
        memory_feature_dim=VISION_DIM,
        memory_num_heads=2,
        memory_dropout=0.0,
        spatial_feature_dim=GEOM_DIM,
        fusion_num_heads=2,
        fusion_dropout=0.0,
        alignment_num_heads=2,
    )
    values.update(overrides)
    return VLM2Config(**values)


def video_batch(kind: str, batch: int, frames: int, seed: int = 0, prompt: int = 3):
    """``input_ids (batch, prompt + video tokens + 2)`` and ``pixel_values_videos``."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, frames, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    text = torch.randint(1, 200, (batch, prompt + 2), generator=g)
    video = torch.full((batch, video_token_count(kind, frames)), VIDEO_TOKEN)
    input_ids = torch.cat([text[:, :prompt], video, text[:, prompt:]], dim=1)
    return input_ids, pixels


def spatial_batch(batch: int, frames: int, seed: int = 0, points_size: int = 8) -> SpatialFeatures:
    g = torch.Generator().manual_seed(seed)
    return SpatialFeatures(
        camera_tokens=torch.randn(batch, frames, 1, GEOM_DIM, generator=g),
        patch_tokens=torch.randn(batch, frames, 16, GEOM_DIM, generator=g),
        points=torch.randn(batch, frames, points_size, points_size, 3, generator=g),
        confidence=torch.rand(batch, frames, points_size, points_size, generator=g),
    )


def loss_backward_and_check_gradients(model, trainable: set[str]) -> None:
    """One language-model loss on a 2-video, 3-frame batch, backward; every parameter in ``trainable`` gets a
    nonzero gradient and no other parameter gets one."""
    input_ids, pixels = video_batch("onevision", 2, 3)
    out = model(input_ids=input_ids, pixel_values_videos=pixels, spatial_features=spatial_batch(2, 3), labels=input_ids)
    out.loss.backward()
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def char_tokenizer(chat_template: bool = True):
    """A character-level tokenizer built offline: printable ASCII keeps its code point, ``<video>`` is
    :data:`VIDEO_TOKEN`, ``<image>`` :data:`IMAGE_TOKEN`, ``<pad>`` 0, ``<eos>`` 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(i): i for i in range(32, 127)}
    vocab.update({"\n": 10, "<pad>": 0, "<eos>": 1, "<unk>": 2, "<video>": VIDEO_TOKEN, "<image>": IMAGE_TOKEN})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<video>", "<image>"]})
    if chat_template:
        fast.chat_template = (
            "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eos>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}"
        )
    return fast
