"""Helpers around the dual memory: auxiliary memory losses and a picture of what the memory did.

Both work on a :class:`~videostate.vlm.memory.MemoryTrace` (``DualMemoryModule.trace_video``, or
``VLM2ForConditionalGeneration.last_memory_trace``).

The losses are optional regularisers the VLM² paper does not define; they are this library's choice,
off by default (weights ``memory_consistency_weight``, ``memory_utilization_weight`` of ``VLM2Config``):

- memory consistency: consecutive memory outputs of one video should agree,
  ``mean over pairs (t−1, t) that both read memory of 1 − cos(M_{t−1}, M_t)`` (whole frames);
- memory utilisation: on average a video should read both memories,
  ``mean over videos of (γ̄ − 1/2)²`` with ``γ̄`` the video's mean gate over the frames that read memory
  (``γ̄ = 1``: working memory only, ``0``: episodic only). It needs the gate, so a trace of a
  ``"working_only"`` or ``"episodic_only"`` memory raises; the consistency loss works in every mode.

:func:`plot_memory` draws one video's gate, retrieval norms and episodic slots over time into a PNG
(needs matplotlib, an optional dependency).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .memory import MemoryTrace


def _zero(trace: MemoryTrace) -> torch.Tensor:
    """A zero that keeps the graph of the trace (so ``backward`` works when nothing is penalised)."""
    return trace.memory.sum() * 0.0


def memory_consistency_loss(trace: MemoryTrace, eps: float = 1e-8) -> torch.Tensor:
    """Mean ``1 − cos(M_{t−1}, M_t)`` over consecutive frames of a video that both read memory (0 if none)."""
    pairs = trace.read[:, 1:] & trace.read[:, :-1]
    if not bool(pairs.any()):
        return _zero(trace)
    flat = trace.memory.flatten(2)
    prev, curr = flat[:, :-1], flat[:, 1:]
    cos = (prev * curr).sum(-1) / (prev.norm(dim=-1) * curr.norm(dim=-1)).clamp_min(eps)
    return (1.0 - cos)[pairs].mean()


def memory_utilization_loss(trace: MemoryTrace) -> torch.Tensor:
    """Mean over videos that read memory of ``(γ̄ − 1/2)²``, ``γ̄`` the video's mean gate (0 if none)."""
    if trace.mode != "dual":
        raise ValueError(
            "the memory utilisation loss balances the gate between the working and episodic memories, so it "
            f"needs a trace of a 'dual' memory; got one of a {trace.mode!r} memory (it has no gate)"
        )
    read = trace.read.to(trace.gate.dtype)
    frames = read.sum(dim=1)
    videos = frames > 0
    if not bool(videos.any()):
        return _zero(trace)
    mean_gate = (trace.gate * read).sum(dim=1)[videos] / frames[videos]
    return ((mean_gate - 0.5) ** 2).mean()


def plot_memory(trace: MemoryTrace, path: str | Path, video: int = 0, title: str | None = None) -> Path:
    """Save a PNG of video ``video`` of ``trace``: the mean gate per frame, the retrieval norms of the
    working and episodic memories, and which frame each episodic slot holds over time (a cross marks
    each frame whose ``M_t`` replaced the most similar stored entry). A trace without an episodic memory
    (``"working_only"``) has no slot panel.

    Needs matplotlib; returns the path written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plot_memory needs matplotlib (pip install matplotlib)") from e
    batch, frames = trace.gate.shape
    if not 0 <= video < batch:
        raise ValueError(f"video must index the {batch} videos of the trace; got {video}")
    if frames == 0:
        raise ValueError("the trace has no frames to plot")
    active = trace.active[video].cpu()
    t = torch.arange(frames)[active]
    read = trace.read[video].cpu()[active]
    gate = trace.gate[video].detach().float().cpu()[active]
    slots = trace.episodic_frames()[video].float()
    slots[slots == -1] = float("nan")
    replaced = (trace.replaced[video].cpu() >= 0) & trace.active[video].cpu()

    panels = 3 if trace.L_e else 2
    fig, axes = plt.subplots(panels, 1, figsize=(8, 8 * panels / 3), sharex=True, constrained_layout=True)
    axes[0].plot(t[read], gate[read], "o-", color="tab:purple")
    axes[0].axhline(0.5, color="grey", lw=0.8, ls="--")
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel("mean gate γ\n(1: working, 0: episodic)")
    axes[1].plot(t, trace.working_norm[video].float().cpu()[active], "o-", label="working  |M^w|")
    axes[1].plot(t, trace.episodic_norm[video].float().cpu()[active], "s-", label="episodic |M^e|")
    axes[1].set_ylabel("retrieval norm\n(per token)")
    axes[1].legend(loc="upper left")
    if not trace.L_e:
        axes[1].set_xlabel("frame")
        return _save(fig, plt, path, title or f"VLM² memory, video {video}")
    image = axes[2].imshow(
        slots.T.numpy(), aspect="auto", origin="lower", interpolation="nearest", cmap="viridis",
        extent=(-0.5, frames - 0.5, -0.5, trace.L_e - 0.5), vmin=-2, vmax=max(frames - 1, 0),
    )  # fmt: skip
    steps = torch.arange(frames)[replaced]
    axes[2].plot(steps, [trace.L_e - 1] * len(steps), "x", color="red", label="replacement")
    axes[2].set_ylabel("episodic slot\n(oldest at 0)")
    axes[2].set_xlabel("frame")
    if len(steps):
        axes[2].legend(loc="lower right")
    fig.colorbar(image, ax=axes[2], label="frame stored (-2: before)")
    return _save(fig, plt, path, title or f"VLM² memory, video {video}")


def _save(fig, plt, path: str | Path, title: str) -> Path:
    fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
