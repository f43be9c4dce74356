"""VidEoMT video segmentation: the model (on transformers' VidEoMT), its loss with Hungarian matching,
post-processing into tracks / semantic / panoptic maps, and YouTube-VIS export and evaluation."""

from .evaluation import evaluate_ytvis
from .fast_step import VideomtFastStep
from .loss import VideomtHungarianMatcher, VideomtLoss
from .model import (
    VideomtConfig,
    VideomtForUniversalSegmentation,
    VideomtState,
    VideomtVideoOutput,
    flatten_frames,
    from_frame_major,
    to_frame_major,
    unflatten_frames,
)
from .postprocess import (
    OnlineTracks,
    PanopticVideo,
    Track,
    instance_tracks,
    panoptic_video,
    semantic_video,
    ytvis_results,
)

__all__ = [
    "OnlineTracks",
    "PanopticVideo",
    "Track",
    "VideomtConfig",
    "VideomtFastStep",
    "VideomtForUniversalSegmentation",
    "VideomtHungarianMatcher",
    "VideomtLoss",
    "VideomtState",
    "VideomtVideoOutput",
    "evaluate_ytvis",
    "flatten_frames",
    "from_frame_major",
    "instance_tracks",
    "panoptic_video",
    "semantic_video",
    "to_frame_major",
    "unflatten_frames",
    "ytvis_results",
]
