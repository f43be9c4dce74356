"""VLM²: dual working/episodic memory and view-consistent geometry fusion inside a transformers video LLM."""

from .config import VLM2Config
from .fusion import CoordinateInjection, CrossAttentionFusion, SpatialFusion, ViewpointAwareAlignment
from .memory import DualMemoryModule, DualMemoryState, EpisodicMemory, MemoryBank, MemoryTrace, WorkingMemory
from .model import VLM2ForConditionalGeneration, load_vlm3r_weights
from .spatial import SpatialFeatures

__all__ = [
    "CoordinateInjection",
    "CrossAttentionFusion",
    "DualMemoryModule",
    "DualMemoryState",
    "EpisodicMemory",
    "MemoryBank",
    "MemoryTrace",
    "SpatialFeatures",
    "SpatialFusion",
    "VLM2Config",
    "VLM2ForConditionalGeneration",
    "ViewpointAwareAlignment",
    "WorkingMemory",
    "load_vlm3r_weights",
]
