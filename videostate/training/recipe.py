"""Recipes: one YAML file describing a training run, and the registry of tasks that can be trained.

A recipe has five sections::

    task: depth                 # a registered task, or "package.module:TASK" / "file.py:TASK" for your own
    trainer: {max_steps: 10000, batch_size: 4, output_dir: runs/depth}   # TrainerConfig
    optim: {lr: 1.0e-4, schedule: cosine, warmup_steps: 500}              # OptimConfig
    model: {...}                # the task's model config dataclass
    data: {...}                 # the task's data config dataclass

Every section is checked against its dataclass (unknown keys are errors). A system makes itself
trainable by calling :func:`register_task` with a :class:`Task`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from .config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from .optim import OptimConfig
from .trainer import Trainer, TrainerConfig, TrainStep


@dataclasses.dataclass
class TaskSetup:
    """What a task builds from its configs: the model, the training data and its step."""

    model: nn.Module
    dataset: Dataset
    train_step: TrainStep
    collate_fn: Callable | None = None
    param_groups: Callable[[OptimConfig], list[dict]] | None = None  # the optimizer's groups (default: the trainer's)


@dataclasses.dataclass(frozen=True)
class Task:
    """A trainable kind of run.

    Attributes:
        name: the name recipes use in ``task:``.
        model_config, data_config: dataclasses of the recipe's ``model`` and ``data`` sections.
        build: ``build(model_config, data_config) -> TaskSetup``.
    """

    name: str
    model_config: type
    data_config: type
    build: Callable[[Any, Any], TaskSetup]


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make ``task`` trainable by name; a second task of the same name is an error."""
    if task.name in _TASKS and _TASKS[task.name] is not task:
        raise ValueError(f"a task named {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def registered_tasks() -> list[str]:
    return sorted(_TASKS)


def _import(module_name: str):
    if not module_name.endswith(".py"):
        return importlib.import_module(module_name)
    path = Path(module_name)
    if not path.is_file():
        raise ImportError(f"no file {path}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_task(name: str) -> Task:
    """A registered task, or the :class:`Task` object at ``"package.module:ATTRIBUTE"`` or
    ``"path/to/file.py:ATTRIBUTE"``."""
    if name in _TASKS:
        return _TASKS[name]
    if ":" in name:
        module_name, _, attr = name.rpartition(":")
        try:
            task = getattr(_import(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"task {name!r}: cannot import {attr!r} from {module_name!r}: {e}") from e
        if not isinstance(task, Task):
            raise ConfigError(f"task {name!r} must name a videostate.training.Task; got {type(task).__name__}")
        return task
    raise ConfigError(
        f"unknown task {name!r}; registered tasks: {registered_tasks()} "
        "(or use 'package.module:TASK' or 'file.py:TASK')"
    )


@dataclasses.dataclass
class Recipe:
    task: str
    trainer: TrainerConfig
    optim: OptimConfig
    model: Any
    data: Any


_SECTIONS = ("task", "trainer", "optim", "model", "data")


def load_recipe(source: str | os.PathLike | Mapping, overrides: Sequence[str] = ()) -> Recipe:
    """A :class:`Recipe` from a YAML file (or a dict) with dotted ``overrides`` applied."""
    raw = dict(source) if isinstance(source, Mapping) else load_yaml(source)
    raw = apply_overrides(raw, overrides)
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown} in the recipe; valid sections: {list(_SECTIONS)}")
    if not isinstance(raw.get("task"), str):
        raise ConfigError(f"the recipe must name its task (task: <name>); got {raw.get('task')!r}")
    task = get_task(raw["task"])
    return Recipe(
        task=raw["task"],
        trainer=from_dict(TrainerConfig, raw.get("trainer"), "trainer"),
        optim=from_dict(OptimConfig, raw.get("optim"), "optim"),
        model=from_dict(task.model_config, raw.get("model"), "model"),
        data=from_dict(task.data_config, raw.get("data"), "data"),
    )


def recipe_to_dict(recipe: Recipe) -> dict:
    return to_dict(recipe)


def train(recipe: Recipe, steps: int | None = None) -> nn.Module:
    """Build the recipe's task and train it (see :meth:`Trainer.fit` for ``steps``)."""
    setup = get_task(recipe.task).build(recipe.model, recipe.data)
    groups = None if setup.param_groups is None else setup.param_groups(recipe.optim)
    trainer = Trainer(
        setup.model,
        setup.train_step,
        setup.dataset,
        recipe.trainer,
        recipe.optim,
        collate_fn=setup.collate_fn,
        groups=groups,
    )
    return trainer.fit(steps)
