"""A tiny stateful model and sequence-regression data for the trainer tests."""

import torch
from torch import nn

from videostate.ssm import MambaStack

DIM = 8


def tiny_model(seed: int = 0, dtype=torch.float32) -> MambaStack:
    torch.manual_seed(seed)
    return MambaStack(
        DIM, ["mamba", "mamba2"], mamba_cfg={"d_state": 4}, mamba2_cfg={"headdim": 4, "d_state": 8, "chunk_size": 4}
    ).to(dtype)


class SequenceData(torch.utils.data.Dataset):
    """Random sequences ``x (L, DIM)`` with targets: the running mean of x (needs memory)."""

    def __init__(self, n=16, length=12, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, length, DIM, generator=g)
        self.y = self.x.cumsum(1) / torch.arange(1, length + 1)[None, :, None]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def noisy_step(model: nn.Module, batch, backward):
    """MSE on inputs with fresh noise from the global torch RNG (so resume must restore the RNG)."""
    x, y = batch
    out = model(x + 0.01 * torch.randn_like(x))
    loss = (out - y).pow(2).mean()
    backward(loss)
    return {"loss": loss}
