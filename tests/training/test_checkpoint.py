import random

import numpy as np
import pytest
import torch

from videostate.training.checkpoint import checkpoints, latest_checkpoint, load_checkpoint, save_checkpoint


def test_save_load_roundtrip_restores_states_and_rng(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)  # noqa: NPY002
    path = save_checkpoint(tmp_path, 12, model=model, optimizer=opt, data={"epoch": 2})
    expected = (torch.rand(3), random.random(), np.random.rand())  # noqa: NPY002
    clone = torch.nn.Linear(4, 3)
    opt2 = torch.optim.AdamW(clone.parameters(), lr=0.1)
    payload = load_checkpoint(path, model=clone, optimizer=opt2)
    assert payload["step"] == 12 and payload["data"] == {"epoch": 2}
    assert torch.equal(clone.weight, model.weight)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    got = (torch.rand(3), random.random(), np.random.rand())  # noqa: NPY002
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_keep_last_and_atomic_files(tmp_path):
    model = torch.nn.Linear(2, 2)
    for step in (1, 5, 10, 100):
        save_checkpoint(tmp_path, step, keep_last=2, model=model)
    assert [p.name for p in checkpoints(tmp_path)] == ["step_00000010.pt", "step_00000100.pt"]
    assert latest_checkpoint(tmp_path).name == "step_00000100.pt"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert latest_checkpoint(tmp_path / "none") is None


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 2)
    path = save_checkpoint(tmp_path, 3, model=model)
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match=r"boom"):
        save_checkpoint(tmp_path, 3, model=model, extra=Unpicklable())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_load_errors_name_the_file_and_keys(tmp_path):
    model = torch.nn.Linear(2, 2)
    with pytest.raises(FileNotFoundError, match=r"step_00000001.pt"):
        load_checkpoint(tmp_path / "step_00000001.pt", model=model)
    path = save_checkpoint(tmp_path, 1, model=model)
    with pytest.raises(KeyError, match=r"has no \['optimizer'\]"):
        load_checkpoint(path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1))
    with pytest.raises(RuntimeError, match=r"Missing key"):
        load_checkpoint(path, model=torch.nn.Sequential(torch.nn.Linear(2, 2)))
    bad = tmp_path / "step_00000002.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*step_00000002.pt"):
        load_checkpoint(bad, model=model)
