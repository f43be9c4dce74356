"""VLM²: dual working/episodic memory and view-consistent geometry fusion inside a transformers video LLM."""

from .fusion import CoordinateInjection, CrossAttentionFusion, SpatialFusion, ViewpointAwareAlignment
from .memory import DualMemoryModule, DualMemoryState, EpisodicMemory, MemoryBank, WorkingMemory

__all__ = [
    "CoordinateInjection",
    "CrossAttentionFusion",
    "DualMemoryModule",
    "DualMemoryState",
    "EpisodicMemory",
    "MemoryBank",
    "SpatialFusion",
    "ViewpointAwareAlignment",
    "WorkingMemory",
]
