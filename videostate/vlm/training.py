"""Training VLM² on LLaVA-style conversation data, with the shared trainer or the transformers ``Trainer``.

A recipe names ``task: videostate.vlm.training:TASK``. Data is LLaVA's conversation JSON: a list of

    {"id": "...", "video": "scene0000_00.mp4",
     "conversations": [{"from": "human", "value": "<image>\\nHow many chairs are there?"},
                       {"from": "gpt", "value": "4"}],
     "spatial_features": "scene0000_00.pt",          # optional; else {spatial_folder}/{video stem}.pt
     "frame_range": [0, 240]}                        # optional: a segment of a video streamed in order

Frames are sampled uniformly (``num_frames``, VLM-3R's ``frames_upbound``) from the whole video or from its
``frame_range`` ``[start, stop)``. Samples with a ``frame_range`` are segments of one long video (id:
``video_id``, default the video path) listed in order: their memory carries from one segment to the next
(detached) and resets at the segment starting at frame 0 (:func:`train_step`); keep their order (no
shuffling) with one stream per batch row.

Frames are sampled uniformly (``num_frames``, VLM-3R's ``frames_upbound``); spatial features are the
VLM-3R ``.pt`` files, indexed with the same frames. Every sample starts from empty memories (the
memory is reset per training sample). What trains is set by ``vlm2.mm_tunable_parts`` (memory only,
+ projector, + fusion, ...) and, with ``lora_enable``, LoRA adapters on the language model (peft).

With the transformers ``Trainer``: build the model with :func:`build_model`, the dataset with
:class:`ConversationVideoDataset` and pass ``data_collator=functools.partial(collate_for_hf_trainer,
pad_token_id=...)`` and ``TrainingArguments(remove_unused_columns=False, ...)``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..training.recipe import Task, TaskSetup
from .config import VLM2Config
from .inputs import SIGLIP_MEAN, SIGLIP_STD, VIDEO_PLACEHOLDER, VideoPromptEncoder, sample_frame_indices
from .model import VLM2ForConditionalGeneration
from .spatial import SpatialFeatures, load_vlm3r_features

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
IMAGE_PLACEHOLDER = "<image>"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass
class VLM2ModelConfig:
    """The model of a VLM² training run.

    Attributes:
        base: folder (or hub id, when online) of a transformers LLaVA-OneVision / LLaVA-NeXT-Video model.
        vlm2: the VLM² additions and the parts to train.
        vlm2_path: folder of saved VLM² modules to start from (``save_pretrained``), or ``None``.
        lora_enable: add LoRA adapters to the language model's linear layers and train them.
        lora_r, lora_alpha, lora_dropout: LoRA rank, scale numerator and dropout (VLM-3R: 128, 256).
    """

    base: str = ""
    vlm2: VLM2Config = dataclasses.field(default_factory=VLM2Config)
    vlm2_path: str | None = None
    lora_enable: bool = False
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05


@dataclasses.dataclass
class VLM2DataConfig:
    """Training data.

    Attributes:
        data_path: LLaVA conversation JSON (a list of samples).
        video_folder: folder the samples' ``video`` paths are relative to.
        spatial_folder: folder of VLM-3R spatial features (``None``: the run uses no spatial fusion).
        num_frames: frames sampled uniformly per video.
        image_mean, image_std: the vision tower's normalisation (SigLIP: 0.5).
    """

    data_path: str = ""
    video_folder: str = ""
    spatial_folder: str | None = None
    num_frames: int = 32
    image_mean: tuple[float, float, float] = SIGLIP_MEAN
    image_std: tuple[float, float, float] = SIGLIP_STD


def conversation_messages(turns: list[dict]) -> list[dict]:
    """LLaVA ``conversations`` → chat messages with exactly one ``<video>`` placeholder (LLaVA-Video data
    writes ``<image>``; a conversation without one gets it before the first question)."""
    messages = []
    for turn in turns:
        role = ROLES.get(turn.get("from"))
        if role is None:
            raise ValueError(f"conversation turns must come from one of {sorted(ROLES)}; got {turn.get('from')!r}")
        messages.append({"role": role, "content": turn["value"].replace(IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER)})
    if not messages or messages[0]["role"] != "user":
        raise ValueError("a conversation must start with a human turn")
    placeholders = sum(m["content"].count(VIDEO_PLACEHOLDER) for m in messages)
    if placeholders == 0:
        messages[0]["content"] = f"{VIDEO_PLACEHOLDER}\n{messages[0]['content']}"
    elif placeholders > 1 or VIDEO_PLACEHOLDER not in messages[0]["content"]:
        raise ValueError(f"a conversation must hold one video placeholder, in its first turn; found {placeholders}")
    return messages


class ConversationVideoDataset(Dataset):
    """Samples of LLaVA conversation JSON as tokenised conversations with their video and 3D features."""

    def __init__(self, config: VLM2DataConfig, encoder: VideoPromptEncoder):
        self.config, self.encoder = config, encoder
        samples = json.loads(Path(config.data_path).read_text())
        if not isinstance(samples, list) or not samples:
            raise ValueError(f"{config.data_path}: expected a non-empty JSON list of samples")
        for i, s in enumerate(samples):
            missing = [k for k in ("video", "conversations") if k not in s]
            if missing:
                raise KeyError(f"{config.data_path}: sample {i} lacks {missing}")
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        from ..data.video import VideoReader

        sample = self.samples[index]
        with VideoReader(Path(self.config.video_folder) / sample["video"], format="tensor") as reader:
            start, stop = sample.get("frame_range", (0, len(reader)))
            if not 0 <= start < stop <= len(reader):
                raise ValueError(
                    f"sample {index}: frame_range must satisfy 0 <= start < stop <= {len(reader)} frames; "
                    f"got [{start}, {stop}]"
                )
            frame_indices = [start + i for i in sample_frame_indices(stop - start, self.config.num_frames)]
            frames = reader.read_clip(frame_indices)
        item = self.encoder.training_example(frames, conversation_messages(sample["conversations"]))
        if "frame_range" in sample:
            item["video_id"] = sample.get("video_id", sample["video"])
            item["video_start"] = start == 0
        if self.config.spatial_folder is not None:
            name = sample.get("spatial_features", f"{Path(sample['video']).stem}.pt")
            spatial = load_vlm3r_features(Path(self.config.spatial_folder) / name, frame_indices)
            for field in dataclasses.fields(spatial):
                value = getattr(spatial, field.name)
                if value is not None:
                    item[field.name] = value[0]
        return item


def collate_conversations(items: list[dict], pad_token_id: int) -> dict:
    """Right-pad ``input_ids`` (``pad_token_id``) and ``labels`` (-100); stack videos and 3D features."""
    length = max(len(i["input_ids"]) for i in items)
    batch = {
        "input_ids": torch.full((len(items), length), pad_token_id, dtype=torch.long),
        "labels": torch.full((len(items), length), -100, dtype=torch.long),
        "attention_mask": torch.zeros(len(items), length, dtype=torch.long),
        "pixel_values_videos": torch.stack([i["pixel_values_videos"] for i in items]),
    }
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        batch["input_ids"][row, :n] = item["input_ids"]
        batch["labels"][row, :n] = item["labels"]
        batch["attention_mask"][row, :n] = 1
    for name in ("camera_tokens", "patch_tokens", "points", "confidence", "video_id"):
        present = [name in i for i in items]
        if any(present) and not all(present):
            raise ValueError(f"{name} is given for some samples of the batch and missing for others")
    for name in ("camera_tokens", "patch_tokens", "points", "confidence"):
        if name in items[0]:
            batch[name] = torch.stack([i[name] for i in items])
    if "video_id" in items[0]:
        batch["video_ids"] = [i["video_id"] for i in items]
        batch["video_start"] = torch.tensor([i["video_start"] for i in items])
    return batch


def collate_for_hf_trainer(items: list[dict], pad_token_id: int) -> dict:
    """:func:`collate_conversations` with the 3D features gathered into one ``spatial_features`` entry, so
    the batch can be passed as ``model(**batch)`` (what the transformers ``Trainer`` does)."""
    batch = collate_conversations(items, pad_token_id)
    spatial = spatial_from_batch(batch)
    for name in ("camera_tokens", "patch_tokens", "points", "confidence"):
        batch.pop(name, None)
    if spatial is not None:
        batch["spatial_features"] = spatial
    return batch


def spatial_from_batch(batch: dict) -> SpatialFeatures | None:
    if "camera_tokens" not in batch:
        return None
    return SpatialFeatures(
        camera_tokens=batch["camera_tokens"],
        patch_tokens=batch["patch_tokens"],
        points=batch.get("points"),
        confidence=batch.get("confidence"),
    )


def train_step(model: nn.Module, batch: dict, backward) -> dict:
    """One micro-batch: the language-model loss on the assistant turns (plus the weighted memory losses).

    Memories are fresh per sample, unless the batch names ``video_ids`` (one per sample) and
    ``video_start`` (bool per sample): then each video's memory carries over from its previous batch
    (detached: truncated backpropagation through time), is reset where ``video_start`` is true, and the
    memories of videos absent from the batch (ended streams) are dropped.
    """
    video_ids = batch.get("video_ids")
    if video_ids is not None:
        starts = batch.get("video_start")
        if starts is None or len(starts) != len(video_ids):
            raise ValueError(
                f"video_ids need a video_start flag per sample; got {len(video_ids)} ids and "
                f"{None if starts is None else len(starts)} flags"
            )
        model.retain_video_memories(video_ids)
        for vid, start in zip(video_ids, starts, strict=True):
            if bool(start):
                model.clear_video_memory(vid)
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        pixel_values_videos=batch["pixel_values_videos"],
        spatial_features=spatial_from_batch(batch),
        video_ids=video_ids,
    )
    backward(out.loss)
    metrics = {"loss": out.loss.detach()}
    metrics.update({name: value.detach() for name, value in model.memory_losses().items()})
    return metrics


def add_lora(model: VLM2ForConditionalGeneration, r: int, alpha: int, dropout: float) -> list[str]:
    """Inject LoRA adapters into the language model's attention and MLP projections (in place) and make
    them trainable; returns the adapter parameter names."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:
        raise ImportError("lora_enable needs peft (pip install peft)") from e
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGETS))
    inject_adapter_in_model(config, model.base.model.language_model)
    names = []
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
            names.append(name)
    if not names:
        raise ValueError(f"no LoRA target modules {LORA_TARGETS} found in the language model")
    return names


def build_model(config: VLM2ModelConfig) -> VLM2ForConditionalGeneration:
    """Base model + VLM² modules, with the configured parts (and LoRA adapters) trainable."""
    if not config.base:
        raise ValueError("model.base must name a transformers LLaVA-OneVision / LLaVA-NeXT-Video folder")
    if config.vlm2_path is not None:
        model = VLM2ForConditionalGeneration.from_pretrained(config.base, config.vlm2_path)
    else:
        model = VLM2ForConditionalGeneration.from_pretrained(config.base, config=config.vlm2)
    model.apply_tunable_parts()
    if config.lora_enable:
        add_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout)
    return model


def build(model_config: VLM2ModelConfig, data_config: VLM2DataConfig) -> TaskSetup:
    from transformers import AutoTokenizer

    model = build_model(model_config)
    if model.config.use_spatial_fusion and data_config.spatial_folder is None:
        raise ValueError("vlm2.use_spatial_fusion is on, so data.spatial_folder must name the 3D features")
    tokenizer = AutoTokenizer.from_pretrained(model_config.base)
    encoder = VideoPromptEncoder(tokenizer, model.base.config, data_config.image_mean, data_config.image_std)
    dataset = ConversationVideoDataset(data_config, encoder)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TaskSetup(model, dataset, train_step, collate_fn=functools.partial(collate_conversations, pad_token_id=pad))


TASK = Task("vlm2", VLM2ModelConfig, VLM2DataConfig, build)
