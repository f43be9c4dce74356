"""Training for the three phases on the shared trainer (:mod:`videostate.training`).

Two entry points build the same model, data and train step (:func:`build`):

- ``videostate train configs/interpolation_phase1.yaml``: the shared recipe format; ``task:
  interpolation`` (:data:`TASK`), ``model`` = :class:`HybridVFIConfig`, ``data`` = :class:`VFIDataConfig`,
  run for ``trainer.max_steps``.
- ``videostate vfi-train --phase 1 --data_path ...`` (:mod:`.cli`): :class:`VFITrainConfig` carries
  the seed's command-line arguments (``phase, batch_size, lr, epochs, data_path, x4k_path,
  mixed_ratio, crop_size, resume, freeze_backbone, exp_name, backbone_mode, use_mhc, use_ecab,
  curriculum, curriculum_T, dry_run, num_workers, grad_accum, eval_interval``) and :func:`train`
  runs it by epochs: AMP (bf16 on CUDA), DDP under ``torchrun``, TensorBoard scalars
(``loss/loss_lap``, ``loss/loss_ter``, ``loss/loss_vgg``, ``loss/loss_flow_smooth``,
``loss/loss_total``, ``eval/psnr``, ``eval/ssim``), exact resume of an interrupted run, and models
saved by name: ``<ckpt_dir>/<exp_name>`` after every evaluation and at the end, and
``<ckpt_dir>/<exp_name>_best`` for the best Vimeo-90K test PSNR.

``resume`` names a saved model to start from. A model of the same phase must match exactly; one of
an earlier phase (phase 1 -> 2, 2 -> 3) initialises every weight whose name and shape agree, and the
weights that are new in this phase are listed in the log (never silently).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..training import OptimConfig, Trainer, TrainerConfig, TrainLogger, init_distributed
from ..training.recipe import Task, TaskSetup, register_task
from .benchmarks import model_interpolator, vimeo90k
from .config import HybridVFIConfig
from .data import MixedDataset, TripletAugment, VimeoTriplet, X4KFrames
from .loss import CompositeLoss
from .model import CONFIG_NAME, WEIGHTS_NAME, HybridVFI, config_from_dict, load_state_dict_strict

log = logging.getLogger(__name__)
SEED_FLAGS_IN_MODEL = ("phase", "backbone_mode", "use_mhc", "use_ecab")
DRY_RUN_STEPS = 5
DRY_RUN_EVAL_SAMPLES = 4


@dataclasses.dataclass
class VFITrainConfig:
    """One training run (the seed's flags first).

    Attributes:
        phase: 1, 2 or 3 (see :class:`HybridVFIConfig`).
        batch_size: samples per GPU per micro-batch.
        lr: peak AdamW learning rate (cosine decay after ``warmup_steps``).
        epochs: passes over the training set.
        data_path: the Vimeo-90K ``vimeo_triplet`` folder.
        x4k_path: X4K1000FPS training frames; mixed with Vimeo-90K when given.
        mixed_ratio: Vimeo:X4K sampling ratio, ``"a:b"``.
        crop_size: square training crop.
        resume: name of a saved model under ``ckpt_dir`` to start from.
        freeze_backbone: epochs during which the backbone gets no updates.
        exp_name: run name (model folders, checkpoints and logs); default ``phase<phase>``.
        backbone_mode: ``hybrid``, ``mamba2_only`` or ``gated_attn_only``.
        use_mhc: mHC residual streams. use_ecab: ECA fusion (False: squeeze-excitation).
        curriculum: grow the X4K frame span over ``curriculum_T`` epochs (needs ``x4k_path``).
        curriculum_T: epochs of the curriculum.
        dry_run: one epoch of at most 5 optimizer steps, then an evaluation on up to 4 test triplets.
        num_workers: DataLoader workers per process.
        grad_accum: micro-batches per optimizer step.
        eval_interval: epochs between Vimeo-90K test evaluations (0: none).
        model: further :class:`HybridVFIConfig` fields (sizes); the seed flags above are set at the top level.
        vgg_weights: torchvision VGG-19 weights for the perceptual term (off without).
        lap_levels: Laplacian-pyramid levels of the loss.
        init_mamba_from_attention: MaTVLM-initialise the Mamba-2 branches (fresh models only).
        max_span: largest X4K frame span. weight_decay, warmup_steps, clip_grad_norm: optimizer settings.
        precision: ``auto`` (bf16 on CUDA), ``bf16``, ``fp32``. device: ``auto`` or a torch device.
        ckpt_dir, log_dir: roots for saved models and TensorBoard/trainer checkpoints.
        seed: random seed. progress: show a progress bar.
    """

    phase: int = 1
    batch_size: int = 8
    lr: float = 2e-4
    epochs: int = 300
    data_path: str | None = None
    x4k_path: str | None = None
    mixed_ratio: str = "2:1"
    crop_size: int = 256
    resume: str | None = None
    freeze_backbone: int = 0
    exp_name: str | None = None
    backbone_mode: str = "hybrid"
    use_mhc: bool = False
    use_ecab: bool = True
    curriculum: bool = False
    curriculum_T: int = 50
    dry_run: bool = False
    num_workers: int = 8
    grad_accum: int = 1
    eval_interval: int = 3
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    vgg_weights: str | None = None
    lap_levels: int = 5
    init_mamba_from_attention: bool = False
    max_span: int = 32
    weight_decay: float = 1e-4
    warmup_steps: int = 2000
    clip_grad_norm: float | None = 1.0
    precision: str = "auto"
    device: str = "auto"
    ckpt_dir: str = "ckpt"
    log_dir: str = "log"
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.data_path is None:
            raise ValueError("data_path (the Vimeo-90K vimeo_triplet folder) is required")
        for name in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("freeze_backbone", "eval_interval", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        clash = sorted(set(self.model) & set(SEED_FLAGS_IN_MODEL))
        if clash:
            raise ValueError(f"set {clash} at the top level of the recipe, not under model")
        self.model_config(), self.data_config()  # validate early

    @property
    def name(self) -> str:
        return self.exp_name or f"phase{self.phase}"

    def data_config(self) -> VFIDataConfig:
        return VFIDataConfig(
            data_path=self.data_path,
            x4k_path=self.x4k_path,
            mixed_ratio=self.mixed_ratio,
            max_span=self.max_span,
            crop_size=self.crop_size,
            curriculum=self.curriculum,
            curriculum_T=self.curriculum_T,
            freeze_backbone=self.freeze_backbone,
            resume=None if self.resume is None else str(Path(self.ckpt_dir) / self.resume),
            init_mamba_from_attention=self.init_mamba_from_attention,
            vgg_weights=self.vgg_weights,
            lap_levels=self.lap_levels,
            seed=self.seed,
        )

    def model_config(self) -> HybridVFIConfig:
        return config_from_dict(
            {
                **self.model,
                "phase": self.phase,
                "backbone_mode": self.backbone_mode,
                "use_mhc": self.use_mhc,
                "use_ecab": self.use_ecab,
            }
        )


class VFITrainWrapper(nn.Module):
    """What DDP wraps: ``forward(img0, img1, timestep) -> (frame, flow or None)``."""

    def __init__(self, model: HybridVFI):
        super().__init__()
        self.model = model

    def forward(self, img0, img1, timestep):
        out = self.model.predict(img0, img1, timestep)
        return out.frame, out.flow


def load_initial_weights(model: HybridVFI, folder: Path) -> list[str]:
    """Weights from a saved model: all of them for the same phase; for an earlier phase, every weight
    whose name and shape agree. Returns the names left at their initialisation."""
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"resume: {folder} has no {name}")
    source = config_from_dict(json.loads((folder / CONFIG_NAME).read_text()))
    state = load_file(str(folder / WEIGHTS_NAME))
    if source.phase == model.config.phase:
        load_state_dict_strict(model, state, source=str(folder))
        return []
    if source.phase > model.config.phase:
        raise ValueError(f"resume: {folder} is a phase-{source.phase} model; this run is phase {model.config.phase}")
    target = model.state_dict()
    usable = {k: v for k, v in state.items() if k in target and target[k].shape == v.shape}
    dropped = sorted(set(state) - set(usable))
    left = sorted(set(target) - set(usable))
    if dropped and not all(k.startswith("refine.") for k in dropped):
        raise ValueError(
            f"resume: phase-{source.phase} weights {dropped} do not fit the phase-{model.config.phase} model"
        )
    model.load_state_dict(usable, strict=False)
    return left


@dataclasses.dataclass
class VFIDataConfig:
    """The ``data`` section of a ``videostate train`` recipe for ``task: interpolation``.

    Attributes:
        data_path: the Vimeo-90K ``vimeo_triplet`` folder.
        x4k_path, mixed_ratio, max_span: X4K1000FPS frames mixed in ``a:b`` with frame spans up to ``max_span``.
        crop_size: square training crop.
        curriculum, curriculum_T: grow the X4K span over ``curriculum_T`` epochs.
        freeze_backbone: epochs during which the backbone gets no updates.
        resume: a saved model folder to start from (same phase: exact; earlier phase: matching weights).
        init_mamba_from_attention: MaTVLM-initialise the Mamba-2 branches of a fresh model.
        vgg_weights: torchvision VGG-19 weights for the perceptual term (off without).
        lap_levels: Laplacian-pyramid levels of the loss.
        seed: augmentation seed.
    """

    data_path: str
    x4k_path: str | None = None
    mixed_ratio: str = "2:1"
    max_span: int = 32
    crop_size: int = 256
    curriculum: bool = False
    curriculum_T: int = 50
    freeze_backbone: int = 0
    resume: str | None = None
    init_mamba_from_attention: bool = False
    vgg_weights: str | None = None
    lap_levels: int = 5
    seed: int = 0

    def __post_init__(self):
        if self.curriculum and self.x4k_path is None:
            raise ValueError("curriculum grows the X4K frame span and needs x4k_path")
        for name in ("crop_size", "curriculum_T", "max_span", "lap_levels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.freeze_backbone < 0:
            raise ValueError(f"freeze_backbone must be >= 0; got {self.freeze_backbone}")


def build_dataset(config: VFIDataConfig):
    augment = TripletAugment(config.crop_size)
    vimeo = VimeoTriplet(config.data_path, "train", augment, seed=config.seed)
    if config.x4k_path is None:
        return vimeo
    x4k = X4KFrames(
        config.x4k_path,
        max_span=config.max_span,
        augment=augment,
        curriculum_epochs=config.curriculum_T if config.curriculum else None,
        seed=config.seed,
    )
    return MixedDataset(vimeo, x4k, config.mixed_ratio)


def build(model_config: HybridVFIConfig, data: VFIDataConfig) -> TaskSetup:
    """The task's setup: model (initialised as ``data`` says), data and train step."""
    model = HybridVFI(model_config)
    if data.resume is not None:
        left = load_initial_weights(model, Path(data.resume))
        if left:
            log.warning(
                "resume %s: %d weights new in phase %d keep their initialisation: %s",
                data.resume,
                len(left),
                model_config.phase,
                left,
            )
    elif data.init_mamba_from_attention:
        for report in model.backbone.init_mamba_from_attention():
            log.info("MaTVLM %s: copied %s; not mapped %s", report.name, report.copied, report.not_mapped)
    dataset = build_dataset(data)
    loss = CompositeLoss(model_config.phase, vgg_weights_path=data.vgg_weights, lap_levels=data.lap_levels)
    return TaskSetup(
        VFITrainWrapper(model), dataset, make_train_step(loss, model.backbone, dataset, data.freeze_backbone)
    )


TASK = register_task(Task("interpolation", HybridVFIConfig, VFIDataConfig, build))


def make_train_step(loss_fn: CompositeLoss, backbone: nn.Module, dataset, freeze_epochs: int):
    """``train_step(model, batch, backward)`` for the shared trainer."""

    def train_step(model, batch, backward):
        frame, flow = model(batch["img0"], batch["img1"], batch["timestep"])
        total, logs = loss_fn(frame.float(), batch["gt"], flow.float() if loss_fn.uses_flow else None)
        backward(total)
        if dataset.epoch < freeze_epochs:
            for p in backbone.parameters():
                p.grad = None  # AdamW skips parameters without a gradient: no update, no decay
        scalars = {f"loss/{k}": v for k, v in logs.items()}
        with torch.no_grad():
            mse = (frame.detach().float().clamp(0, 1) - batch["gt"]).square().mean(dim=(1, 2, 3))
            scalars["train/psnr"] = (-10 * torch.log10(mse.clamp_min(1e-10))).mean()
        scalars["images/pred_gt"] = torch.cat([frame.detach()[:2].float().clamp(0, 1), batch["gt"][:2]], dim=0)
        return scalars

    return train_step


def evaluate(model: HybridVFI, data_path: str, device, limit: int | None) -> dict:
    """Vimeo-90K test PSNR / SSIM (float prediction, ``ssim_matlab``), on the first ``limit`` triplets."""
    was_training = model.training
    result = vimeo90k(data_path, model_interpolator(model, device), limit=limit)
    model.train(was_training)
    return result


def train(config: VFITrainConfig) -> HybridVFI:
    """Run the seed-style recipe: epochs, evaluation every ``eval_interval`` epochs, models saved by
    name; returns the trained model (also saved as ``<ckpt_dir>/<exp_name>``)."""
    dist, device = init_distributed(config.device)
    ckpt = Path(config.ckpt_dir)
    setup = build(config.model_config(), config.data_config())
    model, dataset = setup.model.model, setup.dataset
    per_step = config.batch_size * dist.world_size * config.grad_accum
    steps_per_epoch = len(dataset) // per_step
    if steps_per_epoch < 1:
        raise ValueError(f"{len(dataset)} training samples are fewer than one global batch of {per_step}")
    epochs = 1 if config.dry_run else config.epochs
    steps_per_epoch = min(steps_per_epoch, DRY_RUN_STEPS) if config.dry_run else steps_per_epoch
    run_dir = Path(config.log_dir) / config.name
    trainer = Trainer(
        setup.model,
        setup.train_step,
        dataset,
        TrainerConfig(
            max_steps=epochs * steps_per_epoch,
            batch_size=config.batch_size,
            grad_accum=config.grad_accum,
            clip_grad_norm=config.clip_grad_norm,
            precision=config.precision,
            device=str(device),
            seed=config.seed,
            num_workers=config.num_workers,
            output_dir=str(run_dir),
            log_every=max(1, min(50, steps_per_epoch)),
            save_every=steps_per_epoch,
            progress=config.progress,
        ),
        OptimConfig(
            lr=config.lr,
            weight_decay=config.weight_decay,
            warmup_steps=min(config.warmup_steps, max(1, epochs * steps_per_epoch // 10)),
        ),
    )
    has_test = (Path(config.data_path) / "tri_testlist.txt").is_file()
    eval_every = 1 if config.dry_run else config.eval_interval
    best = -math.inf
    eval_log = TrainLogger(run_dir / "tb", epochs * steps_per_epoch, enabled=dist.is_main, progress=False)
    try:
        for epoch in range(trainer.step // steps_per_epoch + 1, epochs + 1):
            trainer.fit(epoch * steps_per_epoch - trainer.step)
            if not dist.is_main or eval_every == 0 or (epoch % eval_every and epoch != epochs):
                continue
            model.save_pretrained(ckpt / config.name)
            if has_test:
                result = evaluate(model, config.data_path, device, DRY_RUN_EVAL_SAMPLES if config.dry_run else None)
                eval_log.scalars(trainer.step, {"eval/psnr": result["psnr"], "eval/ssim": result["ssim"]})
                log.info("epoch %d: Vimeo-90K PSNR %.3f SSIM %.4f", epoch, result["psnr"], result["ssim"])
                if result["psnr"] > best:
                    best = result["psnr"]
                    model.save_pretrained(ckpt / f"{config.name}_best")
    finally:
        eval_log.close()
    if dist.is_main:
        model.save_pretrained(ckpt / config.name)
    return model
