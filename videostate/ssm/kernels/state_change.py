"""How far a streamed state moved in one step, in one read of both states, for inference.

The depth model's keyframe streamer asks every frame for ``(|new - old|^2, |old|^2)`` over its states (343 MB for
DA2-S at 518x518). In PyTorch that is a difference written and read back and two norms, three passes; here one
program reads ``BLOCK`` elements of both tensors, squares and sums in float32, and writes its two partial sums,
which are then summed in float64. H100, DA2-S 518x518: the streamer's float32 norms took about 1 ms of kernels a
frame. Forward only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096  # elements per program


@triton.jit
def state_change_kernel(new_ptr, old_ptr, partial_ptr, n, BLOCK: tl.constexpr):
    program = tl.program_id(0)
    offsets = program.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    new = tl.load(new_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    old = tl.load(old_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    diff = new - old
    tl.store(partial_ptr + 2 * program, tl.sum(diff * diff, axis=0))
    tl.store(partial_ptr + 2 * program + 1, tl.sum(old * old, axis=0))


def state_change_sums(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``(sum (new - old)^2, sum old^2)`` of two tensors of one shape, as a float64 tensor ``(2,)`` on their device."""
    if new.shape != old.shape:
        raise ValueError(f"new and old must have one shape; got {tuple(new.shape)} and {tuple(old.shape)}")
    new, old = new.reshape(-1), old.reshape(-1)  # a copy only where a tensor is not contiguous
    n = new.numel()
    programs = max(1, triton.cdiv(n, BLOCK))
    partial = torch.empty(programs, 2, dtype=torch.float32, device=new.device)
    state_change_kernel[(programs,)](new, old, partial, n, BLOCK=BLOCK)
    return partial.sum(0, dtype=torch.float64)
