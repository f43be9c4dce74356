import argparse

import cv2
import numpy as np
import pytest
import torch
import yaml

from videostate.depth import VideoMambaDepth, VideoMambaDepthConfig
from videostate.depth.cli import add_depth_export_arguments
from videostate.depth.data import DepthDataConfig, DepthVideoDataset, collate_depth, precompute_teacher_depth
from videostate.depth.losses import depth_to_disparity, midas_se_loss, state_smooth_loss, temporal_gradient_loss
from videostate.depth.training import DepthModelConfig, build_model, make_train_step
from videostate.training.recipe import load_recipe, train

from .tiny import load_tiny_teacher

FRAMES, H, W = 6, 28, 42


def write_rgbd_sequence(root):
    """Frames whose red channel encodes the column and depth PNGs (mm) that encode it too."""
    (root / "image").mkdir(parents=True)
    (root / "depth").mkdir()
    rng = np.random.default_rng(0)
    columns = np.broadcast_to(np.arange(W, dtype=np.uint8)[None, :] * 5, (H, W))
    for i in range(FRAMES):
        rgb = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
        rgb[..., 0] = columns
        cv2.imwrite(str(root / "image" / f"{i:05d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        depth = (np.arange(W, dtype=np.uint16)[None, :] + 1) * 100 + np.zeros((H, 1), np.uint16)
        cv2.imwrite(str(root / "depth" / f"{i:05d}.png"), depth)
    return root


@pytest.fixture(scope="module")
def rgbd_sequence(tmp_path_factory):
    return write_rgbd_sequence(tmp_path_factory.mktemp("rgbd"))


def data_config(root, **kw):
    base = dict(
        sources=(str(root / "image"),),
        depth_sources=(str(root / "depth"),),
        clip_length=4,
        chunk_size=2,
        p_single_frame=0.0,
        crop_size=(28, 28),
        flow_preset="ultrafast",
    )
    base.update(kw)
    return DepthDataConfig(**base)


def test_dataset_crops_rgb_and_depth_at_one_window(rgbd_sequence):
    dataset = DepthVideoDataset(data_config(rgbd_sequence))
    sample = dataset[0]
    assert sample["clip"].shape == (4, 3, 28, 28) and sample["depth"].shape == (4, 1, 28, 28)
    assert sample["static"].shape == (3, 28, 28) and sample["static"].dtype == torch.bool
    column_from_rgb = torch.round(sample["clip"][:, 0] * 255 / 5)
    column_from_depth = sample["depth"][:, 0] * 10 - 1
    torch.testing.assert_close(column_from_depth, column_from_rgb)
    assert sample["valid"].all() and not sample["has_teacher"]
    batch = collate_depth([sample, dataset[0]])
    assert batch["clip"].shape == (2, 4, 3, 28, 28) and len(batch["meta"]) == 2


def test_dataset_errors(rgbd_sequence, tmp_path):
    with pytest.raises(ValueError, match="one folder per source"):
        DepthDataConfig(sources=("a", "b"), depth_sources=("c",))
    (tmp_path / "depth").mkdir()
    cv2.imwrite(str(tmp_path / "depth" / "0.png"), np.ones((H, W), np.uint16))
    with pytest.raises(ValueError, match="6 frames but its depth folder has 1"):
        DepthVideoDataset(data_config(rgbd_sequence, depth_sources=(str(tmp_path / "depth"),)))


def test_teacher_cache_round_trip(rgbd_sequence, teacher_dir, tmp_path):
    teacher = load_tiny_teacher(teacher_dir)
    (path,) = precompute_teacher_depth(teacher, [rgbd_sequence / "image"], tmp_path, batch_size=4, progress=False)
    cache = np.load(path)
    assert cache.shape == (FRAMES, H, W) and cache.dtype == np.float16
    from videostate.data.video import VideoReader

    with VideoReader(rgbd_sequence / "image", format="tensor") as reader:
        expected = teacher.predict_depth(reader.read_clip([4]))[0, 0]
    torch.testing.assert_close(torch.from_numpy(cache[4].astype(np.float32)), expected, rtol=2e-3, atol=2e-3)
    config = data_config(rgbd_sequence, depth_sources=(), teacher_cache=str(tmp_path), crop_size=(28, 42))
    sample = DepthVideoDataset(config)[0]
    assert sample["has_teacher"]
    frames = sample["meta"]["frame_indices"]
    torch.testing.assert_close(sample["teacher"][:, 0], torch.from_numpy(cache[frames].astype(np.float32)))


def tiny_student(teacher_dir):
    torch.manual_seed(0)
    model = VideoMambaDepth(load_tiny_teacher(teacher_dir), VideoMambaDepthConfig(num_blocks=(1, 1, 1, 1), d_state=4))
    with torch.no_grad():
        for proj in model.temporal_out:
            proj.weight.normal_(0, 0.3 * proj.in_features)  # read-out multiplier 1 / C
    return model


def test_train_step_gradient_equals_the_written_objective(rgbd_sequence, teacher_dir):
    data_cfg = data_config(rgbd_sequence, chunk_size=4)
    model_cfg = DepthModelConfig(teacher=str(teacher_dir), tgm_weight=2.0, state_weight=0.5, gradient_weight=0.5)
    batch = collate_depth([DepthVideoDataset(data_cfg)[0]])
    model = tiny_student(teacher_dir)
    calls = []
    logs = make_train_step(model_cfg, data_cfg)(model, batch, lambda loss: (calls.append(1), loss.backward()))
    assert len(calls) == 1 and logs["single_frame"] == 0.0
    assert logs["images/student_vs_target"].shape == (1, 3, 28, 56)
    got = [p.grad.clone() for p in model.parameters() if p.requires_grad]

    model.zero_grad()
    out = model(batch["clip"], output_temporal=True)
    target, valid = depth_to_disparity(batch["depth"][:, :, 0], batch["valid"][:, :, 0])
    pred = out.depth[:, :, 0]
    expected = (
        midas_se_loss(pred, target, valid, 0.5)
        + 2.0 * temporal_gradient_loss(pred, target, valid)
        + 0.5 * state_smooth_loss(out.temporal, batch["static"])
    )
    expected.backward()
    assert logs["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    for g, p in zip(got, [p for p in model.parameters() if p.requires_grad], strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_single_frame_batches_use_the_se_loss_only(rgbd_sequence, teacher_dir):
    data_cfg = data_config(rgbd_sequence, depth_sources=(), p_single_frame=1.0, static_masks=False)
    batch = collate_depth([DepthVideoDataset(data_cfg)[0]])
    model = tiny_student(teacher_dir)
    calls = []
    step = make_train_step(DepthModelConfig(teacher=str(teacher_dir)), data_cfg)
    logs = step(model, batch, lambda loss: (calls.append(1), loss.backward()))
    assert len(calls) == 1 and logs["single_frame"] == 1.0 and logs["tgm"] == 0.0 and logs["state"] == 0.0
    teacher_depth = model.teacher.predict_depth(batch["clip"][:, 0])[:, 0]
    expected = midas_se_loss(model(batch["clip"][:, :1])[:, :, 0], teacher_depth[:, None])
    assert logs["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_recipe_trains_checkpoints_and_exports(rgbd_sequence, teacher_dir, tmp_path):
    raw = {
        "task": "videostate.depth.training:TASK",
        "trainer": {"max_steps": 2, "batch_size": 1, "output_dir": str(tmp_path), "progress": False},
        "optim": {"lr": 1e-3},
        "model": {"teacher": str(teacher_dir), "temporal": {"num_blocks": [1, 1, 1, 1], "d_state": 4}},
        "data": {
            "sources": [str(rgbd_sequence / "image")],
            "depth_sources": [str(rgbd_sequence / "depth")],
            "clip_length": 4,
            "chunk_size": 2,
            "crop_size": [28, 28],
            "clips_per_video": 2,
            "flow_preset": "ultrafast",
        },
    }
    recipe = load_recipe(raw, ["model.input_size=28"])
    assert len(DepthVideoDataset(recipe.data)) == 2
    model = train(recipe)
    assert isinstance(model, VideoMambaDepth)
    (checkpoint,) = (tmp_path / "checkpoints").iterdir()
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    parser = argparse.ArgumentParser()
    add_depth_export_arguments(parser)
    args = parser.parse_args(
        [str(tmp_path / "recipe.yaml"), str(checkpoint), "-o", str(tmp_path / "out"), "--set", "model.input_size=28"]
    )
    assert args.func(args) == 0
    exported = VideoMambaDepth.from_pretrained(tmp_path / "out")
    for (name, a), b in zip(model.state_dict().items(), exported.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_random_teacher_is_seeded_apart_and_gives_a_live_depth():
    from videostate.depth.training import random_teacher

    from .tiny import INPUT_SIZE, tiny_depth_anything_config

    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    first = random_teacher(tiny_depth_anything_config(), INPUT_SIZE, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global stream is not consumed
    torch.manual_seed(2)
    second = random_teacher(tiny_depth_anything_config(), INPUT_SIZE, seed=0)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    third = random_teacher(tiny_depth_anything_config(), INPUT_SIZE, seed=1)
    assert not torch.equal(third.model.head.conv3.weight, first.model.head.conv3.weight)
    depth = first.predict_depth(torch.rand(2, 3, 28, 42, generator=torch.Generator().manual_seed(0)))
    assert (depth > 0).float().mean() > 0.9 and depth.std() > 0.05 * depth.mean()


def test_runs_that_differ_in_use_temporal_share_the_random_teacher(monkeypatch):
    from videostate.depth import training

    from .tiny import INPUT_SIZE, tiny_depth_anything_config

    monkeypatch.setattr(training, "depth_anything_v2_config", lambda size: tiny_depth_anything_config())
    torch.manual_seed(1)
    temporal = build_model(DepthModelConfig(teacher_architecture="small", input_size=INPUT_SIZE))
    torch.manual_seed(2)
    baseline = build_model(
        DepthModelConfig(
            teacher_architecture="small", input_size=INPUT_SIZE, temporal=VideoMambaDepthConfig(use_temporal=False)
        )
    )
    own, shared = temporal.state_dict(), baseline.state_dict()
    assert set(shared) < set(own) and any(k.startswith("temporal.") for k in set(own) - set(shared))
    for name, value in shared.items():
        assert torch.equal(own[name], value), name


def test_param_groups_put_the_decoder_at_its_scale_and_the_temporal_modules_at_lr(teacher_dir):
    from videostate.depth.training import depth_param_groups
    from videostate.training import OptimConfig, build_optimizer

    model = tiny_student(teacher_dir)
    cfg = DepthModelConfig(teacher=str(teacher_dir), decoder_lr_scale=0.1)
    optimizer = build_optimizer(OptimConfig(lr=1e-3, weight_decay=0.05), depth_param_groups(model, cfg, 0.05))
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(lr_of) == len(trainable)  # every trainable parameter once, the frozen teacher in none
    for name, p in trainable.items():
        lr = 1e-4 if name.startswith("decoder.") else 1e-3
        decay = 0.05 if p.ndim > 1 and not name.endswith(".bias") else 0.0
        assert lr_of[id(p)] == (pytest.approx(lr), decay), name
    assert any(n.startswith("temporal.") for n in trainable) and any(n.startswith("decoder.") for n in trainable)


def test_train_step_adds_the_anchor_to_the_teachers_head_output(rgbd_sequence, teacher_dir):
    from videostate.depth.losses import output_anchor_loss

    data_cfg = data_config(rgbd_sequence, chunk_size=4)
    batch = collate_depth([DepthVideoDataset(data_cfg)[0]])
    model = tiny_student(teacher_dir)
    with torch.no_grad():  # move the student's head away from the teacher's so the anchor is not zero
        model.decoder.head.conv3.bias.add_(0.3)
        model.decoder.head.conv3.weight.mul_(1.5)
    logs = {}
    for weight in (0.0, 2.0):
        cfg = DepthModelConfig(teacher=str(teacher_dir), tgm_weight=2.0, state_weight=0.5, anchor_weight=weight)
        logs[weight] = make_train_step(cfg, data_cfg)(model, batch, lambda loss: None)
    # the teacher's head output before its ReLU, computed by the teacher itself (a hook on its last convolution)
    captured = []
    hook = model.teacher.model.head.conv3.register_forward_hook(lambda m, i, o: captured.append(o))
    frames = batch["clip"].flatten(0, 1)
    model.teacher.predict_depth(frames)
    hook.remove()
    student = model(batch["clip"], output_temporal=True).head_output[:, :, 0].flatten(0, 1)
    expected = output_anchor_loss(student, captured[0].reshape(student.shape))
    assert float(expected) > 1e-3
    assert logs[2.0]["anchor"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert logs[2.0]["loss"].item() == pytest.approx(logs[0.0]["loss"].item() + 2.0 * expected.item(), rel=1e-4)
    assert logs[0.0]["anchor"] == 0.0
