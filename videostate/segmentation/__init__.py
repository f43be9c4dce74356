"""VidEoMT video segmentation: model (on transformers' VidEoMT), loss with Hungarian matching,
post-processing into tracks, YouTube-VIS evaluation."""

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

__all__ = [
    "VideomtConfig",
    "VideomtForUniversalSegmentation",
    "VideomtHungarianMatcher",
    "VideomtLoss",
    "VideomtState",
    "VideomtVideoOutput",
    "flatten_frames",
    "from_frame_major",
    "to_frame_major",
    "unflatten_frames",
]
