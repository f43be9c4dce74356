import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """The tiny models here are faster on one thread, and intra-op threads contend with parallel test runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
