import pytest
import torch
from hypothesis import settings

settings.register_profile("videostate", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("videostate")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
