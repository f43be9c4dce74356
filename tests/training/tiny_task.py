"""A trainable task over the tiny sequence model, for the recipe and CLI tests."""

import dataclasses

from tests.training.tiny import SequenceData, noisy_step, tiny_model
from videostate.training.recipe import Task, TaskSetup


@dataclasses.dataclass
class TinyModelConfig:
    seed: int = 0


@dataclasses.dataclass
class TinyDataConfig:
    num_sequences: int = 8
    length: int = 5


def build(model: TinyModelConfig, data: TinyDataConfig) -> TaskSetup:
    return TaskSetup(tiny_model(model.seed), SequenceData(data.num_sequences, data.length), noisy_step)


TASK = Task("tiny-sequence", TinyModelConfig, TinyDataConfig, build)


def build_with_groups(model: TinyModelConfig, data: TinyDataConfig) -> TaskSetup:
    """The tiny task with its own optimizer groups: the first parameter at a quarter of the learning rate."""
    setup = build(model, data)
    first, *rest = setup.model.parameters()

    def groups(optim):
        return [
            {"params": [first], "weight_decay": optim.weight_decay, "lr_scale": 0.25},
            {"params": rest, "weight_decay": 0.0, "lr_scale": 1.0},
        ]

    return dataclasses.replace(setup, param_groups=groups)


GROUPED_TASK = Task("tiny-sequence-grouped", TinyModelConfig, TinyDataConfig, build_with_groups)
