"""VGG-19 feature extractor with torchvision's layer layout, for the perceptual loss.

``VGG19Features.features`` is an ``nn.Sequential`` indexed exactly like ``torchvision.models.vgg19().features``
(conv at 0, 2, 5, 7, 10, ...; ReLU after each conv; max-pool at 4, 9, 18, 27), truncated after
``relu5_1`` (index 29), so a torchvision state dict (``features.N.weight`` / ``features.N.bias``)
loads into it without torchvision.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

# torchvision's configuration "E" (VGG-19): channel counts, "M" = 2x2 max-pool.
VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
# Indices of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 in ``features``.
RELU_X_1 = (1, 6, 11, 20, 29)
# Keys of a torchvision VGG-19 file that the truncated extractor does not use.
UNUSED_PREFIXES = ("classifier.",)
UNUSED_FEATURE_LAYERS = (30, 32, 34)


def build_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for item in VGG19_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU()]
            in_channels = item
    return nn.Sequential(*layers)


class VGG19Features(nn.Module):
    """Frozen VGG-19 up to ``relu5_1``: ``(B, 3, H, W)`` in ``[0, 1]`` -> the five ``reluX_1`` maps.

    Images are normalised with the ImageNet mean and std inside. Build it with :meth:`from_file`.
    """

    def __init__(self):
        super().__init__()
        self.features = build_features()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        """Stays in eval mode: the extractor is a fixed measuring device."""
        return super().train(False)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> VGG19Features:
        """Load torchvision VGG-19 weights from ``path`` (``.pth``/``.pt`` state dict or ``.safetensors``).

        Raises ValueError naming missing, mis-shaped or unexpected keys; the classifier and the conv
        layers after ``relu5_1`` (``features.30/32/34``) are the only keys accepted without use.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"VGG-19 weights file not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError(f"{path} must hold a state dict; got {type(state).__name__}")
        model = cls()
        target = model.state_dict()
        unused = {f"features.{i}.{p}" for i in UNUSED_FEATURE_LAYERS for p in ("weight", "bias")}
        unexpected = sorted(
            k for k in state if k not in target and k not in unused and not k.startswith(UNUSED_PREFIXES)
        )
        missing = sorted(k for k in target if k not in state)
        mismatched = sorted(
            f"{k}: expected {tuple(target[k].shape)}, got {tuple(state[k].shape)}"
            for k in target
            if k in state and state[k].shape != target[k].shape
        )
        if missing or unexpected or mismatched:
            raise ValueError(
                f"{path} is not a torchvision VGG-19 state dict: missing keys {missing}, "
                f"unexpected keys {unexpected}, mismatched shapes {mismatched}"
            )
        model.load_state_dict({k: state[k] for k in target})
        return model

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in RELU_X_1:
                outputs.append(x)
        return outputs
