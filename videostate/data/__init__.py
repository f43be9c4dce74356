"""Video I/O, clip sampling and clip-consistent transforms shared by every system."""

from .clips import ClipDataset, ClipSampler, collate_clips
from .video import VideoError, VideoReader, VideoWriter

__all__ = ["ClipDataset", "ClipSampler", "VideoError", "VideoReader", "VideoWriter", "collate_clips"]
