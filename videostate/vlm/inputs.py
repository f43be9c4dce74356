"""Model inputs for LLaVA video LLMs without the torchvision-based transformers processors.

:class:`VideoPromptEncoder` turns decoded frames and a question into ``input_ids`` (the chat template
with the video placeholder expanded to the model's number of video tokens) and ``pixel_values_videos``
(frames resized to the vision tower's input size and normalised), as the LLaVA processors do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

VIDEO_PLACEHOLDER = "<video>"
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def sample_frame_indices(total: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread uniformly over ``total`` frames, first and last included
    (``np.linspace(0, total - 1, num_frames, dtype=int)``, as VLM-3R's evaluation samples)."""
    if total < 1 or num_frames < 1:
        raise ValueError(f"total and num_frames must be positive; got total={total}, num_frames={num_frames}")
    return np.linspace(0, total - 1, num_frames, dtype=int).tolist()


def video_token_count(config, frames: int) -> int:
    """Placeholders the base model expects for a video of ``frames`` frames.

    LLaVA-OneVision: bilinear 2x pooling of the patch grid (``ceil(side / 2)²`` per frame) plus one
    newline token; LLaVA-NeXT-Video: ``(side // spatial_pool_stride)²`` per frame.
    """
    side = config.vision_config.image_size // config.vision_config.patch_size
    if config.model_type == "llava_onevision":
        return frames * math.ceil(side / 2) ** 2 + 1
    if config.model_type == "llava_next_video":
        return frames * (side // config.spatial_pool_stride) ** 2
    raise ValueError(f"model_type must be llava_onevision or llava_next_video; got {config.model_type!r}")


class VideoPromptEncoder:
    """Frames + question → ``input_ids`` and ``pixel_values_videos`` for a LLaVA video model.

    Args:
        tokenizer: the model's tokenizer; ``VIDEO_PLACEHOLDER`` must be one token whose id is the
            model's ``video_token_index``. Its chat template is used when it has one, else the plain
            ``"USER: ... ASSISTANT:"`` format.
        config: the base model's config (image size, patch size, pooling, video token index).
        image_mean, image_std: normalisation of the vision tower (SigLIP: 0.5 / 0.5).
    """

    def __init__(
        self,
        tokenizer,
        config,
        image_mean: Sequence[float] = SIGLIP_MEAN,
        image_std: Sequence[float] = SIGLIP_STD,
    ):
        self.tokenizer = tokenizer
        self.config = config
        video_id = tokenizer.convert_tokens_to_ids(VIDEO_PLACEHOLDER)
        if video_id != config.video_token_index:
            raise ValueError(
                f"the tokenizer must map {VIDEO_PLACEHOLDER!r} to the model's video_token_index "
                f"{config.video_token_index}; got {video_id}"
            )
        self.mean = torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1)

    def chat_text(self, messages: Sequence[dict], add_generation_prompt: bool) -> str:
        """The conversation text of ``messages`` (``{"role": "user" | "assistant", "content": str}``), with
        the tokenizer's chat template, or ``"USER: … ASSISTANT: …"`` when it has none."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=add_generation_prompt, tokenize=False
            )
        eos = self.tokenizer.eos_token or ""
        parts = []
        for m in messages:
            if m["role"] == "user":
                parts.append(f"USER: {m['content']} ")
            elif m["role"] == "assistant":
                parts.append(f"ASSISTANT: {m['content']}{eos}")
            else:
                raise ValueError(f"message roles must be 'user' or 'assistant'; got {m['role']!r}")
        return "".join(parts) + ("ASSISTANT:" if add_generation_prompt else "")

    def token_ids(self, text: str, frames: int) -> list[int]:
        """Tokenise ``text`` and expand its single video placeholder to the model's video tokens."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        video = self.config.video_token_index
        positions = [i for i, t in enumerate(ids) if t == video]
        if len(positions) != 1:
            raise ValueError(f"the text must hold exactly one {VIDEO_PLACEHOLDER}; found {len(positions)}")
        p = positions[0]
        return ids[:p] + [video] * video_token_count(self.config, frames) + ids[p + 1 :]

    def pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """``(frames, 3, H, W)`` floats in ``[0, 1]`` → ``(frames, 3, S, S)`` normalised model input."""
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must have shape (frames, 3, H, W); got {tuple(frames.shape)}")
        size = self.config.vision_config.image_size
        resized = F.interpolate(
            frames.float(),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
            antialias=frames.shape[-1] > size or frames.shape[-2] > size,
        )
        return (resized - self.mean) / self.std

    def __call__(self, frames: torch.Tensor, question: str) -> dict[str, torch.Tensor]:
        """A batch of one with the video placed before ``question``: ``input_ids (1, L)``,
        ``attention_mask (1, L)``, ``pixel_values_videos (1, frames, 3, S, S)``."""
        messages = [{"role": "user", "content": f"{VIDEO_PLACEHOLDER}\n{question}"}]
        ids = torch.tensor([self.token_ids(self.chat_text(messages, True), frames.shape[0])])
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "pixel_values_videos": self.pixels(frames)[None],
        }

    def training_example(self, frames: torch.Tensor, messages: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Unbatched ``input_ids``, ``labels`` (the assistant turns; ``-100`` elsewhere) and
        ``pixel_values_videos`` for a conversation whose text holds one ``<video>`` placeholder."""
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError("a training conversation must end with an assistant turn")
        count = frames.shape[0]
        ids = self.token_ids(self.chat_text(messages, False), count)
        labels = [-100] * len(ids)
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = len(self.token_ids(self.chat_text(messages[:i], True), count))
            end = len(self.token_ids(self.chat_text(messages[: i + 1], False), count))
            if ids[:end][:start] != self.token_ids(self.chat_text(messages[:i], True), count):
                raise ValueError("the chat template's prompt is not a prefix of the conversation")
            labels[start:end] = ids[start:end]
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "pixel_values_videos": self.pixels(frames),
        }
