import pytest
import torch


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """The tiny models here run faster on one thread than with intra-op threads competing for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
