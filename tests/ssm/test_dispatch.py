import pytest
import torch

from videostate.ssm import dispatch


@pytest.fixture
def toy_op():
    dispatch.register("toy_op", "reference", lambda: "reference")
    dispatch.register("toy_op", "fast", lambda: "fast", available=lambda device: device.type == "cuda")
    yield "toy_op"
    dispatch._REGISTRY.pop("toy_op")


def test_auto_picks_reference_on_cpu_and_fast_on_cuda(toy_op, monkeypatch):
    monkeypatch.setattr(dispatch, "load_fast_backends", lambda: None)
    for var in dispatch.DISABLE_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    assert dispatch.resolve(toy_op, "auto", torch.device("cpu"))() == "reference"
    assert dispatch.resolve(toy_op, "auto", torch.device("cuda"))() == "fast"
    assert dispatch.resolve(toy_op, "reference", torch.device("cuda"))() == "reference"


@pytest.mark.parametrize("var", dispatch.DISABLE_ENV_VARS)
def test_environment_switches_fast_paths_off(toy_op, monkeypatch, var):
    monkeypatch.setattr(dispatch, "load_fast_backends", lambda: None)
    monkeypatch.setenv(var, "1")
    assert dispatch.fused_disabled()
    assert dispatch.resolve(toy_op, "auto", torch.device("cuda"))() == "reference"


def test_explicit_backend_errors(toy_op, monkeypatch):
    monkeypatch.setattr(dispatch, "load_fast_backends", lambda: None)
    with pytest.raises(ValueError, match="backend 'fast' for toy_op cannot run on device cpu"):
        dispatch.resolve(toy_op, "fast", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"must be 'auto' or one of \['reference', 'fast'\]; got 'slow'"):
        dispatch.resolve(toy_op, "slow", torch.device("cpu"))
    with pytest.raises(KeyError, match="no implementation registered for op 'missing'"):
        dispatch.resolve("missing", "auto", torch.device("cpu"))


def test_inference_kernel_only_for_cuda_inference(monkeypatch):
    """Forward-only kernels of other layers are offered only without gradients, on CUDA tensors of a float dtype
    they take, with the fast paths on."""
    cpu = torch.ones(2)
    with torch.no_grad():
        assert dispatch.inference_kernel("mlp", cpu) is None  # CPU tensors
    if torch.cuda.is_available() and dispatch.kernel_module("mlp") is not None:
        cuda = cpu.cuda()
        assert dispatch.inference_kernel("mlp", cuda) is None  # gradients recorded
        with torch.no_grad():
            assert dispatch.inference_kernel("mlp", cuda) is dispatch.kernel_module("mlp")
            assert dispatch.inference_kernel("mlp", cuda.double()) is None
            monkeypatch.setenv("VIDEOSTATE_DISABLE_FUSED", "1")
            assert dispatch.inference_kernel("mlp", cuda) is None
