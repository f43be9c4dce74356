"""VidEoMT as a trainable task for the shared trainer (``task: videostate.segmentation.training:TASK``).

The trainer brings AdamW, layer-wise LR decay (``optim.layer_decay``; embeddings lowest, ``layers.i`` in
order, heads and queries at the full rate), the poly schedule with warmup, gradient clipping, bf16 autocast
and torchrun/DDP. The step runs the model on a clip (auxiliary predictions on, as in training mode) and
backpropagates :class:`~videostate.segmentation.loss.VideomtLoss`.
"""

from __future__ import annotations

import dataclasses
import functools

from ..training.recipe import Task, TaskSetup
from .data import YTVISClips, YTVISDataConfig, collate_clips
from .loss import VideomtLoss
from .model import VideomtConfig, VideomtForUniversalSegmentation


@dataclasses.dataclass
class VideomtModelConfig:
    """Model section of a VidEoMT recipe.

    Attributes:
        pretrained: a VidEoMT ``save_pretrained`` folder (or hub id) to start from.
        eomt: an image-stage ``EomtForUniversalSegmentation`` folder to start the video stage from (the
            official two-stage recipe); at most one of ``pretrained`` and ``eomt``. Neither: build ``config``.
        config: ``VideomtConfig`` fields for a new model (ignored with ``pretrained``).
        matching: ``"clip"`` (one assignment per clip) or ``"consistent"`` (official online matching).
    """

    pretrained: str | None = None
    eomt: str | None = None
    config: dict = dataclasses.field(default_factory=dict)
    matching: str = "consistent"


def train_step(model, batch, backward, criterion: VideomtLoss) -> dict:
    pixel_values, targets = batch
    outputs = model(pixel_values, output_auxiliary_logits=True)
    losses = criterion(outputs, targets["mask_labels"], targets["class_labels"])
    backward(losses["loss"])
    return {key: value.detach() for key, value in losses.items()}


def build(model_config: VideomtModelConfig, data_config: YTVISDataConfig) -> TaskSetup:
    if model_config.pretrained is not None and model_config.eomt is not None:
        raise ValueError("give model.pretrained (VidEoMT) or model.eomt (image-stage EoMT), not both")
    if model_config.pretrained is not None:
        model = VideomtForUniversalSegmentation.from_pretrained(model_config.pretrained)
    elif model_config.eomt is not None:
        model = VideomtForUniversalSegmentation.from_eomt(model_config.eomt)
    else:
        model = VideomtForUniversalSegmentation(VideomtConfig(**model_config.config))
    if model.config.image_size != data_config.image_size:
        raise ValueError(
            f"data.image_size ({data_config.image_size}) must equal the model's image_size ({model.config.image_size})"
        )
    # weights a step cannot reach are frozen, so DDP sees no unused parameter: the mask token (masked inputs are
    # not used in training) and, for single-frame (image-stage) clips, the query updater
    model.embeddings.mask_token.requires_grad_(False)
    if data_config.num_frames == 1:
        model.query_updater.requires_grad_(False)
    criterion = VideomtLoss(model.config, matching=model_config.matching)
    return TaskSetup(
        model=model,
        dataset=YTVISClips(data_config),
        train_step=functools.partial(train_step, criterion=criterion),
        collate_fn=collate_clips,
    )


TASK = Task("videomt", VideomtModelConfig, YTVISDataConfig, build)
