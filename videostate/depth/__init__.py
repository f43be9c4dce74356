"""VideoMambaDepth-SSM: temporally consistent, streaming video depth distilled from a Depth Anything teacher.

- :mod:`.teacher`: the frozen Depth Anything teacher (``encode_frame``, ``predict_depth``);
- :mod:`.temporal`: ``temporal_tokenize``, ``SpatialPreMix``, ``MambaBlock``, ``TemporalMambaScale``;
- :mod:`.decoder`: the trainable DPT decoder; :mod:`.model`: :class:`VideoMambaDepth`;
- :mod:`.losses`: ``scale_and_shift``, ``midas_se_loss``, ``temporal_gradient_loss``, ``state_smooth_loss``;
- :mod:`.streaming`: keyframes and EMA alignment; :mod:`.flow`: static-pixel masks; :mod:`.metrics`,
  :mod:`.evaluation`: AbsRel, delta1, flicker, TAE; :mod:`.data`, :mod:`.training`: the training task;
  :mod:`.cli`: ``videostate depth``, ``depth-precompute``, ``depth-eval``, ``depth-export``.
"""

from .decoder import DPTDecoder
from .model import VideoMambaDepth, VideoMambaDepthConfig, VideoMambaDepthOutput, VideoMambaDepthState
from .streaming import KeyframeConfig, KeyframeStreamer
from .teacher import DepthAnythingTeacher, depth_anything_v2_config
from .temporal import MambaBlock, SpatialPreMix, TemporalMambaScale, temporal_detokenize, temporal_tokenize

__all__ = [
    "DPTDecoder",
    "DepthAnythingTeacher",
    "KeyframeConfig",
    "KeyframeStreamer",
    "MambaBlock",
    "SpatialPreMix",
    "TemporalMambaScale",
    "VideoMambaDepth",
    "VideoMambaDepthConfig",
    "VideoMambaDepthOutput",
    "VideoMambaDepthState",
    "depth_anything_v2_config",
    "temporal_detokenize",
    "temporal_tokenize",
]
