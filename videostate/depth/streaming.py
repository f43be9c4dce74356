"""Streaming inference with keyframe anchoring and EMA scale/shift alignment (one stream per streamer).

Every ``interval`` frames the stream stores a keyframe: a descriptor (the teacher's features, globally
average-pooled per scale, concatenated and L2-normalised), the states after that frame and its output depth.
For each new frame:

1. the nearest keyframe by cosine similarity of descriptors is found;
2. **reset**: when it is above ``similarity_threshold``, it is not the keyframe the stream currently descends
   from (its *anchor*), and the anchor itself is no longer similar (the view has left the anchor's view and
   returned to another stored one), the states are reset to that keyframe's and it becomes the anchor;
3. the model steps from the states;
4. **alignment**: when a keyframe matched (step 1) and the relative change of the state norm in this step is
   below ``state_change_threshold`` (the state is settled), the least-squares ``(a*, b*)`` mapping the raw depth
   onto the keyframe's depth updates ``(a, b)`` by an EMA with ``ema_decay``; the output is ``a * raw + b``.

Keyframes are evicted oldest first beyond ``max_keyframes``, so memory stays bounded on any length.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch.linalg import vector_norm

from videostate.ssm import StreamState
from videostate.ssm.dispatch import inference_kernel
from videostate.ssm.validation import at_least_float32

from .losses import scale_and_shift
from .teacher import check_rgb


@dataclasses.dataclass
class KeyframeConfig:
    """Keyframe and alignment rules of :class:`KeyframeStreamer`.

    Attributes:
        interval: store a keyframe every ``interval`` frames (the seed's ``Δ_k``), starting at frame 0.
        similarity_threshold: cosine similarity above which a keyframe matches the current frame.
        ema_decay: weight of the previous ``(a, b)`` in the EMA update.
        state_change_threshold: largest relative state-norm change ``|s_new - s_old| / |s_old|`` of a step
            that still allows an alignment update.
        max_keyframes: keyframes kept (oldest evicted first).
    """

    interval: int = 32
    similarity_threshold: float = 0.9
    ema_decay: float = 0.9
    state_change_threshold: float = 0.05
    max_keyframes: int = 8

    def __post_init__(self):
        if self.interval < 1 or self.max_keyframes < 1:
            raise ValueError(f"interval and max_keyframes must be >= 1; got {self.interval}, {self.max_keyframes}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1); got {self.ema_decay}")
        if self.state_change_threshold < 0:
            raise ValueError(f"state_change_threshold must be >= 0; got {self.state_change_threshold}")


@dataclasses.dataclass
class Keyframe:
    """``descriptor (D,)`` unit norm; ``states`` after the keyframe; ``depth (1, 1, H, W)`` output there."""

    id: int
    frame_index: int
    descriptor: torch.Tensor
    states: StreamState
    depth: torch.Tensor


def frame_descriptor(features: list[torch.Tensor]) -> torch.Tensor:
    """Per-scale global average pools of ``(1, C_i, h_i, w_i)`` maps, concatenated and L2-normalised: ``(D,)``."""
    pooled = torch.cat([f.mean(dim=(-2, -1)).flatten() for f in features])
    return F.normalize(pooled.float(), dim=0)


def state_change_terms(new: StreamState, old: StreamState) -> torch.Tensor | None:
    """``(|new - old|^2, |old|^2)`` over the floating tensors of two states, as a float64 tensor ``(2,)`` on their
    device (no host synchronisation); ``None`` when the states do not have the same tensors (before the first
    frame).

    Each tensor's sums are float32 reductions (float64 for float64 states), summed in float64: the states are large
    (343 MB for DA2-S at 518x518), and float64 copies of them took 3.9 ms a frame on an H100, more than the step. For
    inference on CUDA one Triton pass reads each pair (:mod:`videostate.ssm.kernels.state_change`)."""
    a, b = new.tensors(), old.tensors()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return None
    names = [k for k in a if a[k].is_floating_point()]
    kernels = inference_kernel("state_change", *(t for k in names for t in (a[k], b[k])))
    if kernels is not None:
        return sum(kernels.state_change_sums(a[k], b[k]) for k in names)
    diff = sum(vector_norm(at_least_float32(a[k]) - at_least_float32(b[k])).double().square() for k in names)
    norm = sum(vector_norm(at_least_float32(b[k])).double().square() for k in names)
    return torch.stack([diff, norm])


def relative_change(terms: torch.Tensor | None) -> float:
    """``sqrt(diff / norm)`` from :func:`state_change_terms` (``inf`` for ``None`` or a zero ``norm``)."""
    if terms is None:
        return float("inf")
    diff, norm = terms.tolist()
    return float("inf") if norm == 0 else math.sqrt(diff / norm)


def relative_state_change(new: StreamState, old: StreamState) -> float:
    """``|new - old| / |old|`` over every tensor of the two states (``inf`` when ``old`` is all zero, or when the
    states do not have the same tensors, e.g. before the first frame)."""
    return relative_change(state_change_terms(new, old))


class KeyframeBank:
    """Stored keyframes, the nearest-keyframe search and the reset rule."""

    def __init__(self, config: KeyframeConfig):
        self.config = config
        self.keyframes: list[Keyframe] = []
        self.anchor: int | None = None  # id of the keyframe the stream descends from
        self._next_id = 0

    def similarities(self, descriptor: torch.Tensor) -> list[float]:
        """Cosine similarity of ``descriptor (D,)`` to each stored keyframe, oldest first (one host transfer)."""
        if not self.keyframes:
            return []
        stored = torch.stack([k.descriptor for k in self.keyframes])
        return F.cosine_similarity(stored, descriptor[None], dim=1).tolist()

    def nearest(
        self, descriptor: torch.Tensor, similarities: list[float] | None = None
    ) -> tuple[Keyframe | None, float]:
        """The keyframe of highest cosine similarity to ``descriptor (D,)`` and that similarity (``similarities``:
        the values of :meth:`similarities`, when already computed)."""
        sims = self.similarities(descriptor) if similarities is None else similarities
        if not sims:
            return None, float("-inf")
        best = max(range(len(sims)), key=sims.__getitem__)
        return self.keyframes[best], sims[best]

    def reset_target(self, descriptor: torch.Tensor, similarities: list[float] | None = None) -> Keyframe | None:
        """The keyframe to reset the states to, or ``None`` (see the module's rule 2)."""
        sims = self.similarities(descriptor) if similarities is None else similarities
        best, sim = self.nearest(descriptor, sims)
        threshold = self.config.similarity_threshold
        if best is None or sim <= threshold or best.id == self.anchor:
            return None
        anchor = [s for k, s in zip(self.keyframes, sims, strict=True) if k.id == self.anchor]
        if anchor and anchor[0] > threshold:
            return None
        return best

    def add(self, frame_index: int, descriptor: torch.Tensor, states: StreamState, depth: torch.Tensor) -> Keyframe:
        keyframe = Keyframe(self._next_id, frame_index, descriptor, states.clone(), depth.detach().clone())
        self._next_id += 1
        self.keyframes.append(keyframe)
        if len(self.keyframes) > self.config.max_keyframes:
            self.keyframes.pop(0)
        self.anchor = keyframe.id
        return keyframe


class ScaleShiftEMA:
    """The output alignment ``(a, b)``, updated as an EMA of least-squares fits to keyframe depth."""

    def __init__(self, decay: float):
        self.decay = decay
        self.scale = 1.0
        self.shift = 0.0

    def update(self, raw: torch.Tensor, reference: torch.Tensor) -> None:
        """Move ``(a, b)`` towards the fit of ``raw (1, 1, H, W)`` onto ``reference``."""
        scale, shift = scale_and_shift(raw.double(), reference.double())
        if float(scale) == 0.0:  # singular fit (constant depth): no information
            return
        self.scale = self.decay * self.scale + (1 - self.decay) * float(scale)
        self.shift = self.decay * self.shift + (1 - self.decay) * float(shift)

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        return self.scale * raw + self.shift


@dataclasses.dataclass
class StepReport:
    """What happened on one frame: ``reset_to`` (keyframe id or None), ``matched`` (keyframe id or None),
    ``similarity``, ``state_change``, ``aligned`` (whether ``(a, b)`` was updated), ``stored`` (new keyframe id)."""

    reset_to: int | None
    matched: int | None
    similarity: float
    state_change: float
    aligned: bool
    stored: int | None


class KeyframeStreamer:
    """Frame-by-frame depth from a :class:`~videostate.depth.model.VideoMambaDepth` with keyframes.

    ``streamer(rgb_frame (1, 3, H, W))`` in [0, 1] -> aligned ``depth (1, 1, H, W)``; ``streamer.report`` tells
    what the rules did on that frame.

    ``fast=True`` runs the model's encoder and step through :meth:`VideoMambaDepth.fast_step` (CUDA graphs on a
    CUDA model, captured on the first frame; the same values as the eager model). The keyframe rules stay in
    Python between the two graphs: the reset decision needs the frame's descriptor before the step.
    """

    def __init__(self, model, config: KeyframeConfig | None = None, *, fast: bool = False):
        self.model = model
        self.config = config or KeyframeConfig()
        self.fast = model.fast_step() if fast else None
        self.reset()

    def reset(self) -> None:
        """Start a new video."""
        self.bank = KeyframeBank(self.config)
        self.alignment = ScaleShiftEMA(self.config.ema_decay)
        self.states = self.model.init_states(1)
        self.frame_index = 0
        self.report: StepReport | None = None

    @torch.no_grad()
    def __call__(self, rgb_frame: torch.Tensor) -> torch.Tensor:
        check_rgb("rgb_frame", rgb_frame)
        if rgb_frame.shape[0] != 1:
            raise ValueError(
                f"a KeyframeStreamer runs one stream: rgb_frame must be (1, 3, H, W); got {tuple(rgb_frame.shape)}"
            )
        features = (self.model if self.fast is None else self.fast).frame_features(rgb_frame)
        descriptor = frame_descriptor(features)

        sims = self.bank.similarities(descriptor)
        target = self.bank.reset_target(descriptor, sims)
        if target is not None:  # steps never write into their input states, so the keyframe's stay intact
            self.states = target.states
            self.bank.anchor = target.id
        matched, similarity = self.bank.nearest(descriptor, sims)
        if similarity <= self.config.similarity_threshold:
            matched = None

        previous, size = self.states, tuple(rgb_frame.shape[-2:])
        if self.fast is None:
            raw, self.states = self.model.step_features(features, size, previous)
            terms = state_change_terms(self.states, previous)
        else:
            raw, self.states, terms = self.fast.step_features(features, size, previous, change=True)
        change = relative_change(terms)
        aligned = matched is not None and change < self.config.state_change_threshold
        if aligned:
            self.alignment.update(raw, matched.depth)
        depth = self.alignment(raw)

        stored = None
        if self.frame_index % self.config.interval == 0:
            stored = self.bank.add(self.frame_index, descriptor, self.states, depth).id
        self.report = StepReport(
            None if target is None else target.id,
            None if matched is None else matched.id,
            similarity,
            change,
            aligned,
            stored,
        )
        self.frame_index += 1
        return depth
