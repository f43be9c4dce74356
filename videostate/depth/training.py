"""The ``depth`` training task: distil the teacher into :class:`VideoMambaDepth` with truncated BPTT.

A batch of clips ``(B, N, 3, H, W)`` is, with probability ``p_single_frame``, cut to its first frame (N=1:
fresh state, SE loss only); otherwise it runs in chunks of ``chunk_size`` frames with the state carried and
detached between chunks, each chunk back-propagating ``alpha * SE + beta * TGM + gamma * state`` (temporal terms
inside the chunk). Targets are the ground-truth disparity when the data has depth (supervised mode), otherwise
the teacher's depth (cached, or computed on the fly). Use it in a recipe as
``task: videostate.depth.training:TASK`` (or ``task: depth`` once registered).
"""

from __future__ import annotations

import dataclasses
import random

import torch
from einops import rearrange
from torch import nn

from videostate.training import param_groups, truncated_bptt
from videostate.training.recipe import Task, TaskSetup

from .data import DepthDataConfig, DepthVideoDataset, collate_depth
from .losses import (
    depth_to_disparity,
    midas_se_loss,
    output_anchor_loss,
    state_smooth_loss,
    temporal_gradient_loss,
)
from .model import VideoMambaDepth, VideoMambaDepthConfig, VideoMambaDepthOutput
from .teacher import DepthAnythingTeacher, depth_anything_v2_config
from .visualize import depth_images


@dataclasses.dataclass
class DepthModelConfig:
    """The ``model`` section of a depth recipe.

    Attributes:
        teacher: Depth Anything checkpoint (local folder or hub id) in transformers format.
        input_size: the teacher's input shorter side (518 for the official models).
        teacher_architecture: instead of ``teacher``, a random Depth Anything V2 of this size (``small``, ``base``,
            ``large``; see :func:`random_teacher`): pipeline checks and timings without pretrained weights.
        teacher_seed: the seed of that random teacher, drawn apart from the global random stream, so runs that
            differ only in their temporal modules (``temporal.use_temporal``) share one teacher and decoder start.
        temporal: the temporal modules.
        init_from: a saved :class:`VideoMambaDepth` folder to start from (overrides ``teacher``).
        se_weight, tgm_weight, state_weight: the loss weights alpha, beta, gamma.
        gradient_weight: weight of the multi-scale gradient term inside the SE loss.
        tgm_threshold: temporal gradient matching ignores target changes above this fraction of the range.
        decoder_lr_scale: the decoder's learning rate (neck and head, initialised from the teacher's) as a fraction
            of ``optim.lr``; the new temporal modules train at ``optim.lr`` (see :func:`depth_param_groups`). As in
            Depth Anything's fine-tuning, the parts that start from the teacher move slower than the new ones.
        anchor_weight: weight of :func:`~videostate.depth.losses.output_anchor_loss`, which pins the median and
            spread of the decoder head's output before its final ReLU to the teacher's on the same frames. The SE
            and TGM losses leave that scale and shift free, but the ReLU is not shift invariant: a free drift of the
            shift clips pixels to zero, and clipped pixels get no gradient to come back (0 turns the term off).
    """

    teacher: str = ""
    input_size: int = 518
    teacher_architecture: str | None = None
    teacher_seed: int = 0
    temporal: VideoMambaDepthConfig = dataclasses.field(default_factory=VideoMambaDepthConfig)
    init_from: str | None = None
    se_weight: float = 1.0
    tgm_weight: float = 10.0
    state_weight: float = 0.1
    gradient_weight: float = 0.5
    tgm_threshold: float = 0.05
    decoder_lr_scale: float = 1.0
    anchor_weight: float = 0.0

    def __post_init__(self):
        given = [n for n in ("teacher", "teacher_architecture", "init_from") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of model.teacher, model.teacher_architecture, model.init_from; got {given}"
            )
        if self.decoder_lr_scale <= 0:
            raise ValueError(f"model.decoder_lr_scale must be > 0; got {self.decoder_lr_scale}")
        for name in ("se_weight", "tgm_weight", "state_weight", "gradient_weight", "anchor_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.{name} must be >= 0; got {getattr(self, name)}")


def random_teacher(config, input_size: int, seed: int) -> DepthAnythingTeacher:
    """A Depth Anything of ``config`` (a ``DepthAnythingConfig``) with unit-gain random weights drawn from ``seed``
    apart from the global random stream: every matrix and kernel normal with variance ``1 / fan_in``, norm weights
    ``1 + N(0, 0.1^2)``, other vectors ``N(0, 0.1^2)``, and the depth head's last bias 0.5. Its depth varies over
    the image and is positive almost everywhere; transformers' initialisation (std 0.02) instead gives a depth
    near 1e-5 that the head's final ReLU zeroes on about a third of the pixels, a start from which the first
    optimizer steps can leave the student's head dead (zero depth, no gradient)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        teacher = DepthAnythingTeacher.from_config(config, input_size)
        with torch.no_grad():
            for name, param in teacher.model.named_parameters():
                if param.dim() > 1:
                    param.normal_(0.0, param[0].numel() ** -0.5)
                elif "norm" in name and name.endswith("weight"):
                    param.normal_(1.0, 0.1)
                else:
                    param.normal_(0.0, 0.1)
            teacher.model.head.conv3.bias.fill_(0.5)
    return teacher


def build_model(config: DepthModelConfig) -> VideoMambaDepth:
    if config.init_from:
        return VideoMambaDepth.from_pretrained(config.init_from)
    if config.teacher_architecture:
        teacher = random_teacher(
            depth_anything_v2_config(config.teacher_architecture), config.input_size, config.teacher_seed
        )
    else:
        teacher = DepthAnythingTeacher.from_pretrained(config.teacher, input_size=config.input_size)
    return VideoMambaDepth(teacher, config.temporal)


def unwrap(model: nn.Module) -> VideoMambaDepth:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def distillation_targets(model: VideoMambaDepth, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target, mask)`` of shape ``(B, N, H, W)`` in disparity space: ground truth when the batch has depth,
    else the cached teacher depth, computed by the teacher for samples without a cache."""
    if "depth" in batch:
        disparity, valid = depth_to_disparity(batch["depth"], batch["valid"])
        return disparity[:, :, 0], valid[:, :, 0]
    clip, teacher = batch["clip"], batch["teacher"].clone()
    missing = ~batch["has_teacher"]
    if missing.any():
        frames = clip[missing].flatten(0, 1)
        computed = unwrap(model).teacher.predict_depth(frames)
        teacher[missing] = computed.reshape(int(missing.sum()), clip.shape[1], *computed.shape[1:]).to(teacher)
    return teacher[:, :, 0], torch.ones_like(teacher[:, :, 0], dtype=torch.bool)


def depth_param_groups(model: nn.Module, model_cfg: DepthModelConfig, weight_decay: float) -> list[dict]:
    """AdamW groups for :class:`~videostate.training.Trainer` (its ``groups``): the shared
    :func:`~videostate.training.param_groups` (no weight decay on 1-D parameters), each split into the decoder's
    parameters, at ``lr_scale = model_cfg.decoder_lr_scale``, and the rest (the temporal modules), at 1."""
    groups = []
    for group in param_groups(unwrap(model), weight_decay):
        for in_decoder, scale in ((True, model_cfg.decoder_lr_scale), (False, 1.0)):
            pairs = [
                (n, p)
                for n, p in zip(group["names"], group["params"], strict=True)
                if n.startswith("decoder.") == in_decoder
            ]
            if pairs:
                groups.append(
                    dict(
                        group,
                        names=[n for n, _ in pairs],
                        params=[p for _, p in pairs],
                        lr_scale=group["lr_scale"] * scale,
                    )
                )
    return groups


def reference_head_output(model: nn.Module, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """The teacher's depth-head output before its final activation, ``(B, N, 1, *size)``, from its maps
    ``features`` (``VideoMambaDepthOutput.features``) at the network input size ``size``: a frozen copy of the
    teacher's decoder, made on first use and kept beside the model (not in its weights)."""
    m = unwrap(model)
    reference = m.__dict__.get("_reference_decoder")
    if reference is None:
        reference = m.teacher.build_decoder().requires_grad_(False).eval()
        m.__dict__["_reference_decoder"] = reference  # not a submodule: outside state_dict, DDP and the optimizer
    batch = features[0].shape[0]
    with torch.no_grad():
        raw = reference([rearrange(f, "b n c h w -> (b n) c h w") for f in features], size, activate=False)
    return rearrange(raw, "(b n) 1 h w -> b n 1 h w", b=batch)


def make_train_step(model_cfg: DepthModelConfig, data_cfg: DepthDataConfig, seed: int = 0):
    """``train_step(model, batch, backward) -> logs`` for the shared trainer.

    The single-frame draw uses its own counter-seeded generator, so every DDP process makes the same choice
    (and the same number of backward calls) at each step.
    """
    calls = {"n": 0}

    def train_step(model: nn.Module, batch: dict, backward) -> dict:
        calls["n"] += 1
        single = random.Random(seed * 1_000_003 + calls["n"]).random() < data_cfg.p_single_frame
        clip = batch["clip"]
        target, mask = distillation_targets(model, batch)
        static = batch.get("static")
        if single:
            clip, target, mask, static = clip[:, :1], target[:, :1], mask[:, :1], None
        parts = {"se": 0.0, "tgm": 0.0, "state": 0.0, "anchor": 0.0}
        frames = clip.shape[1]
        last: dict = {}

        def forward(chunk, states):
            out = model(chunk, states, output_temporal=True)
            return out, out.states

        def loss_fn(out: VideoMambaDepthOutput, span: slice) -> torch.Tensor:
            pred = out.depth[:, :, 0].float()
            t, m = target[:, span], mask[:, span]
            weight = (span.stop - span.start) / frames
            se = midas_se_loss(pred, t, m, model_cfg.gradient_weight)
            loss = model_cfg.se_weight * se
            parts["se"] += se.detach() * weight
            if pred.shape[1] > 1:
                tgm = temporal_gradient_loss(pred, t, m, model_cfg.tgm_threshold)
                loss = loss + model_cfg.tgm_weight * tgm
                parts["tgm"] += tgm.detach() * weight
                if model_cfg.temporal.use_temporal:
                    chunk_static = None if static is None else static[:, span.start : span.stop - 1]
                    state = state_smooth_loss([r.float() for r in out.temporal], chunk_static)
                    loss = loss + model_cfg.state_weight * state
                    parts["state"] += state.detach() * weight
            if model_cfg.anchor_weight:
                raw = out.head_output.float().flatten(0, 1)
                anchor = output_anchor_loss(
                    raw, reference_head_output(model, out.features, out.head_output.shape[-2:]).float().flatten(0, 1)
                )
                loss = loss + model_cfg.anchor_weight * anchor
                parts["anchor"] += anchor.detach() * weight
            last["depth"] = out.depth[0, -1, 0]
            last["target"] = t[0, -1]
            return loss

        states = unwrap(model).init_states(clip.shape[0], device=clip.device)
        result = truncated_bptt(forward, clip, loss_fn, states, data_cfg.chunk_size, backward=backward)
        logs = {"loss": result.loss, "single_frame": float(single), **parts}
        logs["images/student_vs_target"] = depth_images([last["depth"], last["target"]])
        return logs

    return train_step


def build(model_cfg: DepthModelConfig, data_cfg: DepthDataConfig) -> TaskSetup:
    model = build_model(model_cfg)
    return TaskSetup(
        model,
        DepthVideoDataset(data_cfg),
        make_train_step(model_cfg, data_cfg),
        collate_fn=collate_depth,
        param_groups=lambda optim: depth_param_groups(model, model_cfg, optim.weight_decay),
    )


TASK = Task("depth", DepthModelConfig, DepthDataConfig, build)
