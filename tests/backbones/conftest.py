import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: intra-op threads only add synchronisation (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
