"""DPT decoder of Depth Anything (neck convolutions, feature fusion, depth head), trainable in the student.

Submodule names follow transformers' ``DepthAnythingNeck`` (``convs``, ``fusion_stage``) and
``DepthAnythingDepthEstimationHead`` (``head``), so the teacher's weights load strictly with
:meth:`DPTDecoder.load_from_depth_anything` and the decoder then reproduces the teacher exactly.

For inference on CUDA the decoder runs channels-last, each convolution without its bias, and the bias, ReLU and
residual adds after it in one pass (:mod:`videostate.ssm.kernels.conv_epilogue`); every module's ``fused`` method
is that path. The values are the layer-by-layer ones up to rounding: one rounding per pass instead of one per op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ssm.dispatch import inference_kernel


def conv_without_bias(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` before its bias is added (channels-last when ``x`` is)."""
    return F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)


class PreActResidual(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` with 3x3 convolutions: ``(batch, C, H, W) -> (batch, C, H, W)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.convolution1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.convolution2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.convolution2(F.relu(self.convolution1(F.relu(x))))

    def fused(self, kernels, x: torch.Tensor, relu_x: torch.Tensor, extra: tuple[torch.Tensor, ...] = (), **kw):
        """``forward(x) + sum(extra)`` from channels-last ``x`` and ``relu_x = relu(x)``, in two convolutions and two
        epilogues; ``kw`` (``relu_copy=True``) goes to the last epilogue."""
        hidden = kernels.conv_epilogue(conv_without_bias(self.convolution1, relu_x), self.convolution1.bias, relu=True)
        out = conv_without_bias(self.convolution2, hidden)
        return kernels.conv_epilogue(out, self.convolution2.bias, (x, *extra), **kw)


class FusionLayer(nn.Module):
    """One fusion step: add the (resized) skip feature through a residual unit, refine, upsample, project."""

    def __init__(self, channels: int, takes_skip: bool = True):
        super().__init__()
        self.projection = nn.Conv2d(channels, channels, 1)
        if takes_skip:  # the coarsest layer has no skip input, hence no residual_layer1
            self.residual_layer1 = PreActResidual(channels)
        self.residual_layer2 = PreActResidual(channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int] | None) -> torch.Tensor:
        """``x (batch, C, h, w)``, ``skip (batch, C, h', w')`` -> ``(batch, C, *size)`` (twice ``h, w`` if no size)."""
        if skip is not None:
            if skip.shape != x.shape:
                skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.residual_layer1(skip)
        x = self.residual_layer2(x)
        resize = {"scale_factor": 2} if size is None else {"size": size}
        x = F.interpolate(x, **resize, mode="bilinear", align_corners=True)
        return self.projection(x)

    def fused(self, kernels, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int] | None) -> torch.Tensor:
        """:meth:`forward` on channels-last maps: the skip's residual unit adds ``x`` in its last epilogue, which
        also writes the ReLU the next unit reads; the resize adds the projection's bias."""
        if skip is not None:
            if skip.shape != x.shape:
                skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x, relu_x = self.residual_layer1.fused(kernels, skip, F.relu(skip), (x,), relu_copy=True)
        else:
            relu_x = F.relu(x)
        x = self.residual_layer2.fused(kernels, x, relu_x)
        size = (2 * x.shape[-2], 2 * x.shape[-1]) if size is None else size
        # The projection before the resize, on a quarter of the pixels: both are linear, the resize's weights sum
        # to one, so they commute, the projection's bias included.
        return kernels.resize_bilinear(conv_without_bias(self.projection, x), size, self.projection.bias)


class FusionStage(nn.Module):
    def __init__(self, channels: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(FusionLayer(channels, takes_skip=i > 0) for i in range(num_layers))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """``features`` fine to coarse, ``(batch, C, H_i, W_i)`` -> the finest fused map ``(batch, C, 2H_0, 2W_0)``."""
        coarse_to_fine = features[::-1]
        fused = None
        for i, (feature, layer) in enumerate(zip(coarse_to_fine, self.layers, strict=True)):
            size = tuple(coarse_to_fine[i + 1].shape[-2:]) if i + 1 < len(coarse_to_fine) else None
            fused = layer(feature, None, size) if fused is None else layer(fused, feature, size)
        return fused

    def fused(self, kernels, features: list[torch.Tensor]) -> torch.Tensor:
        """:meth:`forward` on channels-last maps."""
        coarse_to_fine = features[::-1]
        fused = None
        for i, (feature, layer) in enumerate(zip(coarse_to_fine, self.layers, strict=True)):
            size = tuple(coarse_to_fine[i + 1].shape[-2:]) if i + 1 < len(coarse_to_fine) else None
            fused = (
                layer.fused(kernels, feature, None, size)
                if fused is None
                else layer.fused(kernels, fused, feature, size)
            )
        return fused


class DepthHead(nn.Module):
    """``(batch, C, h, w) -> (batch, 1, *size)``: conv, upsample to ``size``, conv-ReLU-conv, ReLU (relative)
    or ``max_depth * sigmoid`` (metric)."""

    def __init__(self, channels: int, hidden: int, depth_estimation_type: str, max_depth: float):
        super().__init__()
        if depth_estimation_type not in ("relative", "metric"):
            raise ValueError(f"depth_estimation_type must be 'relative' or 'metric'; got {depth_estimation_type!r}")
        self.conv1 = nn.Conv2d(channels, channels // 2, 3, padding=1)
        self.conv2 = nn.Conv2d(channels // 2, hidden, 3, padding=1)
        self.conv3 = nn.Conv2d(hidden, 1, 1)
        self.depth_estimation_type = depth_estimation_type
        self.max_depth = max_depth

    def forward(self, x: torch.Tensor, size: tuple[int, int], activate: bool = True) -> torch.Tensor:
        """Depth, or with ``activate=False`` the head's output before the final activation (see :meth:`activate`)."""
        x = F.interpolate(self.conv1(x), size=size, mode="bilinear", align_corners=True)
        x = self.conv3(F.relu(self.conv2(x)))
        return self.activate(x) if activate else x

    def fused(self, kernels, x: torch.Tensor, size: tuple[int, int], activate: bool = True) -> torch.Tensor:
        """:meth:`forward` from a channels-last map: the resize adds ``conv1``'s bias, and ``conv3`` (to one channel)
        is a dot in ``conv2``'s epilogue."""
        x = kernels.resize_bilinear(conv_without_bias(self.conv1, x), size, self.conv1.bias)
        project = (self.conv3.weight.reshape(-1), self.conv3.bias)
        x = kernels.conv_epilogue(conv_without_bias(self.conv2, x), self.conv2.bias, relu=True, project=project)
        return self.activate(x) if activate else x

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        """The final activation: ``relu(x) * max_depth`` (relative) or ``sigmoid(x) * max_depth`` (metric)."""
        if self.depth_estimation_type == "relative":
            return F.relu(x) * self.max_depth
        return torch.sigmoid(x) * self.max_depth


class DPTDecoder(nn.Module):
    """Depth Anything's DPT decoder.

    Args:
        in_channels: channels of the four input maps, fine to coarse (``neck_hidden_sizes``).
        fusion_hidden_size: channels inside the fusion stage.
        head_hidden_size: hidden channels of the head.
        head_in_index: which fused map feeds the head (-1: the finest, as Depth Anything).
        depth_estimation_type: ``"relative"`` (ReLU output) or ``"metric"`` (sigmoid times ``max_depth``).
        max_depth: output scale (1 for relative models, as transformers).
    """

    def __init__(
        self,
        in_channels: list[int],
        fusion_hidden_size: int,
        head_hidden_size: int,
        head_in_index: int = -1,
        depth_estimation_type: str = "relative",
        max_depth: float = 1.0,
    ):
        super().__init__()
        if head_in_index != -1:
            raise ValueError(f"head_in_index must be -1 (the finest fused map, as Depth Anything); got {head_in_index}")
        self.in_channels = list(in_channels)
        self.convs = nn.ModuleList(nn.Conv2d(c, fusion_hidden_size, 3, padding=1, bias=False) for c in in_channels)
        self.fusion_stage = FusionStage(fusion_hidden_size, len(in_channels))
        self.head = DepthHead(fusion_hidden_size, head_hidden_size, depth_estimation_type, max_depth)
        # Channels-last weights: cuDNN then runs its NHWC kernels on the layer-by-layer path too (H100, bf16, 32
        # frames of DA2-L at 518x518: 1.56 -> 1.40 ms/frame), and the inference path converts no weight. Moves and
        # casts keep the layout; loading copies values into it.
        self.to(memory_format=torch.channels_last)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int], activate: bool = True) -> torch.Tensor:
        """``features``: fine-to-coarse maps ``(batch, C_i, H_i, W_i)``; ``size``: the network input size
        ``(h, w)``. Returns depth ``(batch, 1, h, w)``, or with ``activate=False`` the head's output before its
        final activation (``head.activate`` of it is the depth)."""
        if len(features) != len(self.convs):
            raise ValueError(f"expected {len(self.convs)} feature maps; got {len(features)}")
        for i, (f, c) in enumerate(zip(features, self.in_channels, strict=True)):
            if f.dim() != 4 or f.shape[1] != c:
                raise ValueError(f"feature {i} must have shape (batch, {c}, H, W); got {tuple(f.shape)}")
        kernels = self._epilogue_kernels(features)
        if kernels is not None:
            return self.fused(kernels, features, size, activate)
        fused = self.fusion_stage([conv(f) for conv, f in zip(self.convs, features, strict=True)])
        return self.head(fused, size, activate)

    def fused(self, kernels, features: list[torch.Tensor], size: tuple[int, int], activate: bool = True):
        """:meth:`forward` on channels-last maps with the epilogue ``kernels`` (the inference path on CUDA)."""
        maps = [conv(kernels.channels_last(f)) for conv, f in zip(self.convs, features, strict=True)]
        return self.head.fused(kernels, self.fusion_stage.fused(kernels, maps), size, activate)

    def _epilogue_kernels(self, features: list[torch.Tensor]):
        """:mod:`videostate.ssm.kernels.conv_epilogue` for inference on CUDA without autocast (the maps and weights
        of one dtype), else ``None``."""
        weight = self.head.conv3.weight
        if torch.is_autocast_enabled(weight.device.type) or any(f.dtype != weight.dtype for f in features):
            return None
        return inference_kernel("conv_epilogue", weight, *features)

    def load_from_depth_anything(self, model: nn.Module) -> None:
        """Copy the neck convolutions, fusion stage and head of a ``DepthAnythingForDepthEstimation``
        (strict: any missing or unexpected key is an error). transformers gives the coarsest fusion layer a
        ``residual_layer1`` that its forward never uses; it is not copied."""
        state = {f"convs.{k}": v for k, v in model.neck.convs.state_dict().items()}
        state.update(
            {
                f"fusion_stage.{k}": v
                for k, v in model.neck.fusion_stage.state_dict().items()
                if not k.startswith("layers.0.residual_layer1.")
            }
        )
        state.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
        self.load_state_dict(state, strict=True)
