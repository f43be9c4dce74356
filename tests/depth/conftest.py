import pytest

from .tiny import save_tiny_teacher


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_depth_anything")
    save_tiny_teacher(path)
    return path
