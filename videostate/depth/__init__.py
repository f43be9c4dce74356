"""VideoMambaDepth-SSM: temporally consistent, streaming video depth distilled from a Depth Anything teacher."""

from .decoder import DPTDecoder
from .model import VideoMambaDepth, VideoMambaDepthConfig, VideoMambaDepthOutput, VideoMambaDepthState
from .teacher import DepthAnythingTeacher
from .temporal import MambaBlock, SpatialPreMix, TemporalMambaScale, temporal_detokenize, temporal_tokenize

__all__ = [
    "DPTDecoder",
    "DepthAnythingTeacher",
    "MambaBlock",
    "SpatialPreMix",
    "TemporalMambaScale",
    "VideoMambaDepth",
    "VideoMambaDepthConfig",
    "VideoMambaDepthOutput",
    "VideoMambaDepthState",
    "temporal_detokenize",
    "temporal_tokenize",
]
