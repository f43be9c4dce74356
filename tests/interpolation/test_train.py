import dataclasses
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from videostate.interpolation import CompositeLoss, HybridVFI
from videostate.interpolation.data import VimeoTriplet
from videostate.interpolation.train import (
    SEED_FLAGS_IN_MODEL,
    VFIDataConfig,
    VFITrainConfig,
    VFITrainWrapper,
    make_train_step,
    train,
)
from videostate.metrics import psnr
from videostate.training import OptimConfig, Trainer, TrainerConfig
from videostate.training.recipe import load_recipe
from videostate.training.recipe import train as train_recipe

from .synthetic import write_vimeo
from .tiny import TINY, tiny_config

TINY_MODEL = {k: v for k, v in dataclasses.asdict(TINY).items() if k not in SEED_FLAGS_IN_MODEL}


def test_tiny_model_overfits_a_few_triplets_well_above_frame_averaging(tmp_path):
    dataset = VimeoTriplet(write_vimeo(tmp_path / "vimeo", count=2, size=16), "train")
    torch.manual_seed(0)
    model = HybridVFI(tiny_config())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = CompositeLoss(phase=1, lap_levels=3)
    trainer = Trainer(
        VFITrainWrapper(model),
        make_train_step(loss, model.backbone, dataset, freeze_epochs=0),
        dataset,
        TrainerConfig(max_steps=40, batch_size=2, precision="fp32", device="cpu", progress=False, log_every=100),
        OptimConfig(lr=5e-3, weight_decay=0.0, warmup_steps=5, schedule="constant"),
    )
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    averaging = psnr((batch["img0"] + batch["img1"]) / 2, batch["gt"]).item()
    with torch.no_grad():
        before = psnr(model(batch["img0"], batch["img1"]), batch["gt"]).item()
    trainer.fit()
    with torch.no_grad():
        after = psnr(model.eval()(batch["img0"], batch["img1"]), batch["gt"]).item()
    assert after > averaging + 3.0, (before, averaging, after)
    assert after > before + 3.0


def recipe(tmp_path, **changes) -> VFITrainConfig:
    values = dict(
        data_path=str(tmp_path / "vimeo"),
        crop_size=16,
        batch_size=2,
        dry_run=True,
        model=TINY_MODEL,
        lap_levels=3,
        ckpt_dir=str(tmp_path / "ckpt"),
        log_dir=str(tmp_path / "log"),
        num_workers=0,
        device="cpu",
        precision="fp32",
        progress=False,
    )
    return VFITrainConfig(**{**values, **changes})


def test_recipe_phase1_then_phase2_with_frozen_backbone(tmp_path):
    write_vimeo(tmp_path / "vimeo", count=4, size=16, test_count=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(recipe(tmp_path, exp_name="p1"))
    for name in ("p1", "p1_best"):
        assert (tmp_path / "ckpt" / name / "model.safetensors").is_file()
    assert any((tmp_path / "log" / "p1" / "checkpoints").iterdir())
    before = load_file(str(tmp_path / "ckpt" / "p1_best" / "model.safetensors"))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = train(recipe(tmp_path, exp_name="p2", phase=2, resume="p1_best", freeze_backbone=1))
    after = model.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)  # frozen for the one epoch
    fresh = HybridVFI(model.config).state_dict()
    assert any(not torch.equal(after[k], fresh[k]) for k in after if k.startswith("flow_estimator."))
    assert model.config.phase == 2


def test_resume_from_a_later_phase_is_an_error(tmp_path):
    write_vimeo(tmp_path / "vimeo", count=4, size=16)
    torch.manual_seed(0)
    HybridVFI(tiny_config(phase=2)).save_pretrained(tmp_path / "ckpt" / "p2")
    with pytest.raises(ValueError, match="is a phase-2 model; this run is phase 1"):
        train(recipe(tmp_path, resume="p2"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data_path": None}, "data_path"),
        ({"curriculum": True}, "needs x4k_path"),
        ({"model": {"phase": 2}}, "at the top level"),
        ({"model": {"depth": 2}}, "unknown HybridVFIConfig keys"),
        ({"epochs": 0}, "epochs must be >= 1"),
    ],
)
def test_recipe_errors(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        recipe(tmp_path, **changes)


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_shipped_recipes_load(phase):
    recipe = load_recipe(CONFIGS / f"interpolation_phase{phase}.yaml")
    assert recipe.model.phase == phase and isinstance(recipe.data, VFIDataConfig)


def test_videostate_train_recipe_runs_the_task(tmp_path):
    write_vimeo(tmp_path / "vimeo", count=4, size=16)
    raw = {
        "task": "videostate.interpolation.train:TASK",
        "trainer": {"max_steps": 2, "batch_size": 2, "device": "cpu", "precision": "fp32", "progress": False},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "model": dataclasses.asdict(tiny_config(phase=2)),
        "data": {"data_path": str(tmp_path / "vimeo"), "crop_size": 16, "lap_levels": 3},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = train_recipe(load_recipe(raw))
    assert isinstance(wrapper.model, HybridVFI) and wrapper.model.config.phase == 2
