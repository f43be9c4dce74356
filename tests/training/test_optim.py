import math

import pytest
import torch

from tests.training.tiny import tiny_model
from videostate.training import OptimConfig, build_optimizer, build_scheduler, lr_multiplier, param_groups
from videostate.training.optim import default_layer_id


@pytest.mark.parametrize("schedule", ["cosine", "poly", "constant"])
def test_schedule_follows_the_formulas(schedule):
    cfg = OptimConfig(lr=0.2, schedule=schedule, warmup_steps=4, min_lr_ratio=0.05, power=0.9)
    total = 20
    for s in range(total + 3):
        if s < 4:
            expected = (s + 1) / 4
        elif schedule == "constant":
            expected = 1.0
        else:
            p = min(1.0, (s - 4) / 16)
            shape = 0.5 * (1 + math.cos(math.pi * p)) if schedule == "cosine" else (1 - p) ** 0.9
            expected = 0.05 + 0.95 * shape
        assert lr_multiplier(s, cfg, total) == pytest.approx(expected, abs=1e-15)


def test_scheduler_drives_the_optimizer_lr():
    model = torch.nn.Linear(3, 3)
    cfg = OptimConfig(lr=0.1, warmup_steps=2, schedule="cosine")
    opt = build_optimizer(cfg, param_groups(model, cfg.weight_decay))
    sched = build_scheduler(opt, cfg, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1 * lr_multiplier(s, cfg, 10) for s in range(10)], abs=1e-15)


def test_param_groups_weight_decay_and_layer_decay():
    model = tiny_model()
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    names = {n: g for g in groups for n in g["names"]}
    assert set(names) == {n for n, _ in model.named_parameters()}
    for name, param in model.named_parameters():
        g = names[name]
        assert g["weight_decay"] == (0.05 if param.ndim > 1 and not name.endswith(".bias") else 0.0)
        layer = int(name.split(".")[1]) + 1 if name.startswith("layers.") else 3  # 2 layers: head is 3
        assert g["lr_scale"] == 0.5 ** (3 - layer), name
    opt = build_optimizer(OptimConfig(lr=1e-3, layer_decay=0.5), groups)
    assert sorted({g["lr"] for g in opt.param_groups}) == [2.5e-4, 5e-4, 1e-3]
    assert default_layer_id("patch_embed.proj.weight", 12) == 0
    assert default_layer_id("blocks.3.mixer.in_proj.weight", 12) == 4
    assert default_layer_id("head.weight", 12) == 13
