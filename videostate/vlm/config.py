"""Configuration of the VLM² modules added to a transformers video LLM."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .fusion import GATE_TYPES
from .memory import MEMORY_MODES

TUNABLE_PARTS = ("mm_vision_tower", "mm_mlp_adapter", "mm_language_model", "fusion_block", "dual_memory")


@dataclasses.dataclass
class VLM2Config:
    """Fields of the VLM² additions (names follow the VLM-3R/LLaVA training arguments).

    Attributes:
        use_dual_memory: add the working/episodic memory (Algorithm 1) after the fusion block.
        memory_mode: ``"dual"`` (Algorithm 1), or the paper's memory ablations ``"working_only"``
            (``M_t = M^w_t``: no episodic memory, no gate) and ``"episodic_only"`` (``M_t = M^e_t``: no
            working memory, no gate; the episodic memory still stores ``M_t``, so it holds no frame
            features and reads 0 until training moves its zero-initialised biases). Only the parameters of
            the mode are created, so ``dual_memory`` in ``mm_tunable_parts`` trains exactly those
            (``videostate.vlm.memory``).
        memory_L_w: working memory capacity in frames (8 is the paper's best).
        memory_L_e: episodic memory capacity in frames (32 is the paper's best).
        memory_feature_dim: width of the memory's tokens; must equal the vision tower's feature width
            (the fusion output), 1152 for SigLIP-so400m.
        memory_num_heads: heads of each memory retrieval attention.
        memory_dropout: attention dropout of the memory retrievals.
        use_spatial_fusion: fuse 3D features (camera tokens, patch tokens, point maps) into the visual
            tokens before the projector, as VLM-3R does.
        spatial_feature_dim: width of the 3D model's tokens (768 for CUT3R).
        fusion_num_heads: heads of the cross-attention fusion (VLM-3R: 18).
        fusion_dropout: dropout on the fused output (VLM-3R: 0.1).
        alignment_num_heads: heads of the viewpoint alignment attention.
        use_viewpoint_alignment: align geometry tokens with the view tokens before fusion.
        use_coordinate_injection: inject pooled 3D points into the visual tokens before fusion.
        coordinate_gate_type: ``"sigmoid"`` or ``"softmax"`` gate of the coordinate injection.
        memory_consistency_weight: weight of the memory consistency loss added to the language-model loss
            in training (``videostate.vlm.memory_utils``; 0 turns it off).
        memory_utilization_weight: weight of the memory utilisation loss (0 turns it off); it balances
            the gate, so it needs ``memory_mode="dual"``.
        tune_dual_memory: train the memory (same as listing ``"dual_memory"`` in ``mm_tunable_parts``).
        mm_tunable_parts: comma-separated parts to train, from ``mm_vision_tower``, ``mm_mlp_adapter``
            (projector), ``mm_language_model``, ``fusion_block``, ``dual_memory``; every other
            parameter is frozen.
    """

    use_dual_memory: bool = True
    memory_mode: str = "dual"
    memory_L_w: int = 8
    memory_L_e: int = 32
    memory_feature_dim: int = 1152
    memory_num_heads: int = 8
    memory_dropout: float = 0.1
    use_spatial_fusion: bool = True
    spatial_feature_dim: int = 768
    fusion_num_heads: int = 18
    fusion_dropout: float = 0.1
    alignment_num_heads: int = 8
    use_viewpoint_alignment: bool = True
    use_coordinate_injection: bool = True
    coordinate_gate_type: str = "sigmoid"
    memory_consistency_weight: float = 0.0
    memory_utilization_weight: float = 0.0
    tune_dual_memory: bool = False
    mm_tunable_parts: str = "dual_memory"

    def __post_init__(self):
        if self.memory_L_w < 1 or self.memory_L_e < 1:
            raise ValueError(f"memory_L_w and memory_L_e must be at least 1; got {self.memory_L_w}, {self.memory_L_e}")
        if self.memory_mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {MEMORY_MODES}; got {self.memory_mode!r}")
        if self.memory_utilization_weight > 0 and self.memory_mode != "dual":
            raise ValueError(
                "memory_utilization_weight balances the gate between the two memories, so it needs "
                f"memory_mode='dual'; got memory_mode={self.memory_mode!r}, "
                f"memory_utilization_weight={self.memory_utilization_weight}"
            )
        if self.coordinate_gate_type not in GATE_TYPES:
            raise ValueError(f"coordinate_gate_type must be one of {GATE_TYPES}; got {self.coordinate_gate_type!r}")
        if not 0.0 <= self.memory_dropout < 1.0 or not 0.0 <= self.fusion_dropout < 1.0:
            raise ValueError(
                f"dropouts must lie in [0, 1); got memory_dropout={self.memory_dropout}, "
                f"fusion_dropout={self.fusion_dropout}"
            )
        if self.memory_consistency_weight < 0 or self.memory_utilization_weight < 0:
            raise ValueError(
                f"memory loss weights must be >= 0; got memory_consistency_weight={self.memory_consistency_weight}, "
                f"memory_utilization_weight={self.memory_utilization_weight}"
            )
        self.tunable_parts()  # validates the names

    def tunable_parts(self) -> set[str]:
        """The parts to train: ``mm_tunable_parts`` plus ``dual_memory`` when ``tune_dual_memory``."""
        parts = {p.strip() for p in self.mm_tunable_parts.split(",") if p.strip()}
        unknown = sorted(parts - set(TUNABLE_PARTS))
        if unknown:
            raise ValueError(f"mm_tunable_parts must name parts from {TUNABLE_PARTS}; got unknown {unknown}")
        if self.tune_dual_memory:
            parts.add("dual_memory")
        return parts

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> VLM2Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown VLM2Config fields {unknown}; expected a subset of {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_model_args(cls, args) -> VLM2Config:
        """From LLaVA/VLM-3R-style training arguments (a ``ModelArguments`` dataclass or a
        ``SimpleNamespace``): every attribute named like a field is taken, the others are ignored (those
        arguments also configure the rest of the training run)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: getattr(args, n) for n in names if hasattr(args, n)})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> VLM2Config:
        return cls.from_dict(json.loads(Path(path).read_text()))
