"""Video frame interpolation with a hybrid Mamba2-Transformer (LGS blocks), in three phases.

:class:`HybridVFI` ``(config)`` interpolates ``forward(img0, img1, timestep=0.5) -> frame`` for images
``(B, 3, H, W)`` in [0, 1] of any size; :mod:`.loss` has the training losses (``LapLoss``,
``Ternary``, ``CompositeLoss``).
"""

from .attention import GatedWindowAttention
from .backbone import HybridBackbone, LGSBlock
from .channel_attention import ECAB, ChannelAttention
from .config import HybridVFIConfig
from .context import ContextNet
from .flow import IFBlock, OpticalFlowEstimator
from .loss import CompositeLoss, FlowSmoothnessLoss, LapLoss, Ternary, VGGPerceptualLoss
from .matvlm import MaTVLMReport, init_mamba2_from_attention
from .mhc import ManifoldHyperConnection, sinkhorn
from .model import HybridVFI, VFIOutput
from .refine import RefineNet
from .ss2d import InterleavedSS2D, interleaved_merge, interleaved_scan
from .vgg import VGG19Features
from .warp import warp

__all__ = [
    "ECAB",
    "ChannelAttention",
    "CompositeLoss",
    "ContextNet",
    "FlowSmoothnessLoss",
    "GatedWindowAttention",
    "HybridBackbone",
    "HybridVFI",
    "HybridVFIConfig",
    "IFBlock",
    "InterleavedSS2D",
    "LGSBlock",
    "LapLoss",
    "MaTVLMReport",
    "ManifoldHyperConnection",
    "OpticalFlowEstimator",
    "RefineNet",
    "Ternary",
    "VFIOutput",
    "VGG19Features",
    "VGGPerceptualLoss",
    "init_mamba2_from_attention",
    "interleaved_merge",
    "interleaved_scan",
    "sinkhorn",
    "warp",
]
