"""One trainer for every system: loop, AMP, truncated BPTT, DDP, checkpoints, logging, configs."""

from .bptt import BPTTResult, truncated_bptt
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from .distributed import DistInfo, init_distributed, seed_everything
from .grad_checkpoint import disable_gradient_checkpointing, enable_gradient_checkpointing
from .logging import TrainLogger
from .optim import OptimConfig, build_optimizer, build_scheduler, lr_multiplier, param_groups
from .trainer import Trainer, TrainerConfig

__all__ = [
    "BPTTResult",
    "ConfigError",
    "DistInfo",
    "OptimConfig",
    "TrainLogger",
    "Trainer",
    "TrainerConfig",
    "apply_overrides",
    "build_optimizer",
    "build_scheduler",
    "disable_gradient_checkpointing",
    "enable_gradient_checkpointing",
    "from_dict",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "load_yaml",
    "lr_multiplier",
    "param_groups",
    "save_checkpoint",
    "seed_everything",
    "to_dict",
    "truncated_bptt",
]
