"""Tiny VideoMamba configurations and random weights for the tests."""

import torch

TINY = {"img_size": 16, "patch_size": 8, "depth": 2, "embed_dim": 16, "channels": 3, "num_frames": 4}
PATCHES = 4  # (16 // 8) ** 2


def randomize(model, seed=0):
    """Perturb every parameter (embeddings, biases, norms, A_log, D ...) so none is left at a constant."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return model


def video(batch, frames, size=16, seed=1, dtype=torch.float64):
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def float_state_dict(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
