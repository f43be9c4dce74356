"""The dual memory's frame loop never waits on the device: no op reads a tensor value back to the host."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from videostate.vlm import DualMemoryModule


class HostReads(TorchDispatchMode):
    """Counts reads of tensor values by the host: ops that copy one (``.item()``, ``bool(t)``, index checks)
    and ``.tolist()`` (which reads a CPU tensor without an op)."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self._tolist = torch.Tensor.tolist

    def __enter__(self):
        def tolist(tensor):
            self.count += 1
            return self._tolist(tensor)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_detector_sees_host_reads():
    original = torch.Tensor.tolist
    with HostReads() as reads:
        torch.tensor([1.0]).item()
        torch.tensor([1, 2]).tolist()
    assert reads.count == 2 and torch.Tensor.tolist is original


def test_memory_frame_loop_reads_nothing_back():
    torch.manual_seed(0)
    memory = DualMemoryModule(dim=16, num_heads=2, L_w=3, L_e=4).eval()
    features = torch.randn(2, 9, 5, 16)  # more frames than either memory holds: FIFO and replacement both run
    with torch.no_grad(), HostReads() as reads:
        memory.forward_video(features)
    assert reads.count == 0


def test_a_carried_state_and_padding_are_read_before_the_frame_loop_only():
    torch.manual_seed(0)
    memory = DualMemoryModule(dim=16, num_heads=2, L_w=3, L_e=4).eval()
    features = torch.randn(2, 9, 5, 16)
    reads = []
    with torch.no_grad():
        _, state = memory.forward_video(features[:, :2])
        for frames in (3, 9):  # the lengths and the entry counts, however many frames run
            with HostReads() as counter:
                memory.forward_video(features[:, :frames], state, num_frames=torch.tensor([frames, 1]))
            reads.append(counter.count)
    assert reads == [2, 2]
