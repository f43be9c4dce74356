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
