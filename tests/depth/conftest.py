import pytest
import torch

from .tiny import save_tiny_teacher


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_depth_anything")
    save_tiny_teacher(path)
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models here are far too small to gain from intra-op threads, and lose much to them on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
