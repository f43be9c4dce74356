"""The dual memory's frame loop never waits on the device: no op reads a tensor value back to the host."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from videostate.vlm import DualMemoryModule


class HostReads(TorchDispatchMode):
    """Counts ops that copy a tensor value to the host (``.item()``, ``bool(t)``, index checks)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_detector_sees_a_host_read():
    with HostReads() as reads:
        torch.tensor([1.0]).item()
    assert reads.count == 1


def test_memory_frame_loop_reads_nothing_back():
    torch.manual_seed(0)
    memory = DualMemoryModule(dim=16, num_heads=2, L_w=3, L_e=4).eval()
    features = torch.randn(2, 9, 5, 16)  # more frames than either memory holds: FIFO and replacement both run
    with torch.no_grad(), HostReads() as reads:
        memory.forward_video(features)
    assert reads.count == 0
