"""YouTube-VIS clips and the training task: consistent augmentation, and a tiny model that overfits 2 videos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from videostate.segmentation import evaluate_ytvis, instance_tracks, ytvis_results
from videostate.segmentation.data import YTVISClips, YTVISDataConfig, collate_clips
from videostate.segmentation.inference import IMAGENET_MEAN, IMAGENET_STD, preprocess_frames
from videostate.training.recipe import load_recipe, train

from .synthetic import SIZE, write_ytvis
from .tiny import tiny_config


def test_clips_have_consistent_frames_masks_and_flip(tmp_path):
    ann_file = write_ytvis(tmp_path, num_videos=1, frames=4)
    config = YTVISDataConfig(root=str(tmp_path), ann_file=str(ann_file), num_frames=3, image_size=SIZE, hflip=0.0)
    pixels, target = YTVISClips(config, generator=torch.Generator().manual_seed(0))[0]
    assert pixels.shape == (3, 3, SIZE, SIZE)
    assert target["mask_labels"].shape == (2, 3, SIZE, SIZE) and target["class_labels"].tolist() == [0, 1]
    # red pixels of the frames are exactly the red instance's mask
    red = pixels[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0] > 0.8
    assert torch.equal(red, target["mask_labels"][0].bool())

    flipped = YTVISClips(YTVISDataConfig(**{**vars(config), "hflip": 1.0}), generator=torch.Generator().manual_seed(0))[
        0
    ]
    torch.testing.assert_close(flipped[0], pixels.flip(-1))
    assert torch.equal(flipped[1]["mask_labels"], target["mask_labels"].flip(-1))

    batch = collate_clips([(pixels, target), flipped])
    assert batch[0].shape == (2, 3, 3, SIZE, SIZE) and len(batch[1]["mask_labels"]) == 2


def test_instances_absent_from_the_clip_are_dropped(tmp_path):
    ann_file = write_ytvis(tmp_path, num_videos=1, frames=4)
    data = json.loads(ann_file.read_text())
    data["annotations"][1]["segmentations"][:2] = [None, None]  # green only in frames 2, 3
    ann_file.write_text(json.dumps(data))
    config = YTVISDataConfig(root=str(tmp_path), ann_file=str(ann_file), num_frames=2, image_size=SIZE, hflip=0.0)
    dataset = YTVISClips(config, generator=torch.Generator().manual_seed(0))
    seen = set()
    for _ in range(12):
        _, target = dataset[0]
        seen.add(len(target["class_labels"]))
        assert target["mask_labels"].flatten(1).any(1).all()
    assert seen == {1, 2}


def test_tiny_model_overfits_two_videos(tmp_path):
    torch.manual_seed(0)
    ann_file = write_ytvis(tmp_path, num_videos=2, frames=4)
    model_config = {
        k: v for k, v in tiny_config(num_labels=2, image_size=SIZE, hidden_size=32, num_queries=6).to_dict().items()
    }
    recipe = load_recipe(
        {
            "task": "videostate.segmentation.training:TASK",
            "trainer": {
                "max_steps": 60,
                "batch_size": 2,
                "device": "cpu",
                "precision": "fp32",
                "progress": False,
                "clip_grad_norm": 1.0,
                "log_every": 1000,
            },
            "optim": {"lr": 2e-3, "weight_decay": 0.0, "schedule": "constant", "warmup_steps": 10},
            "model": {"config": model_config, "matching": "consistent"},
            "data": {
                "root": str(tmp_path),
                "ann_file": str(ann_file),
                "num_frames": 2,
                "image_size": SIZE,
                "hflip": 0.0,
            },
        }
    )
    model = train(recipe).eval()
    gt = json.loads(ann_file.read_text())
    dataset = YTVISClips(YTVISDataConfig(root=str(tmp_path), ann_file=str(ann_file), image_size=SIZE))
    results = []
    with torch.no_grad():
        for video in gt["videos"]:
            frames = torch.stack([dataset._frame(name) for name in video["file_names"]])
            out = model(preprocess_frames(frames, SIZE)[None])
            tracks = instance_tracks(
                out.class_queries_logits[0], out.masks_queries_logits[0], top_k=4, output_size=(SIZE, SIZE)
            )
            results += ytvis_results(tracks, video["id"], category_ids=[1, 2])
    metrics = evaluate_ytvis(gt, results)
    assert metrics["AP50"] > 0.9, metrics
    assert metrics["AP"] > 0.9, metrics
    assert np.isfinite(metrics["AR10"])


def test_image_size_mismatch_is_an_error(tmp_path):
    ann_file = write_ytvis(tmp_path, num_videos=1, frames=2)
    recipe = load_recipe(
        {
            "task": "videostate.segmentation.training:TASK",
            "model": {"config": tiny_config().to_dict()},
            "data": {"root": str(tmp_path), "ann_file": str(ann_file), "image_size": 32},
        }
    )
    with pytest.raises(ValueError, match="image_size"):
        train(recipe)


def test_recipe_file_loads():
    path = Path(__file__).resolve().parents[2] / "configs" / "segmentation_videomt_ytvis19.yaml"
    recipe = load_recipe(path, ["trainer.max_steps=10"])
    assert recipe.model.matching == "consistent" and recipe.model.config["num_blocks"] == 4
    assert (recipe.optim.layer_decay, recipe.optim.schedule, recipe.trainer.clip_grad_norm) == (0.6, "poly", 0.01)
    assert recipe.data.num_frames == 5 and recipe.trainer.max_steps == 10


@pytest.mark.parametrize("num_frames", [1, 2])
def test_every_trainable_weight_gets_a_gradient(tmp_path, num_frames):
    """What DDP needs without find_unused_parameters: one step reaches every weight left trainable."""
    from videostate.segmentation.training import VideomtModelConfig, build

    ann_file = write_ytvis(tmp_path, num_videos=1, frames=3)
    data = YTVISDataConfig(root=str(tmp_path), ann_file=str(ann_file), num_frames=num_frames, image_size=SIZE)
    setup = build(VideomtModelConfig(config=tiny_config(num_labels=2, image_size=SIZE).to_dict()), data)
    setup.model.train()
    setup.train_step(setup.model, setup.collate_fn([setup.dataset[0]]), lambda loss: loss.backward())
    missing = [n for n, p in setup.model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert setup.model.query_updater.weight.requires_grad == (num_frames > 1)


def test_task_starts_from_eomt_or_videomt_weights(tmp_path):
    from transformers import EomtConfig, EomtForUniversalSegmentation

    from videostate.segmentation.training import VideomtModelConfig, build

    ann_file = write_ytvis(tmp_path, num_videos=1, frames=2)
    data = YTVISDataConfig(root=str(tmp_path), ann_file=str(ann_file), num_frames=2, image_size=SIZE)
    eomt = EomtForUniversalSegmentation(EomtConfig(**tiny_config(image_size=SIZE).to_dict()))
    eomt.save_pretrained(tmp_path / "eomt")
    model = build(VideomtModelConfig(eomt=str(tmp_path / "eomt")), data).model
    assert torch.equal(model.query.weight, eomt.query.weight)
    model.save_pretrained(tmp_path / "videomt")
    again = build(VideomtModelConfig(pretrained=str(tmp_path / "videomt")), data).model
    assert torch.equal(again.query_updater.weight, model.query_updater.weight)
    with pytest.raises(ValueError, match="not both"):
        build(VideomtModelConfig(pretrained="a", eomt="b"), data)
