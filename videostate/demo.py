"""``videostate demo``: run each system offline, in chunks and step by step, and compare.

Each system adds a function returning its rows and a line in :func:`run_demos`.

The state-space core's demo streams a synthetic sequence through a stack of Mamba and Mamba-2
layers three ways and reports the largest difference from the offline pass and the throughput.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from .ssm import MambaStack


def synthetic_sequence(batch: int, length: int, dim: int, *, generator: torch.Generator) -> torch.Tensor:
    """A smooth multi-frequency signal with noise, ``(batch, length, dim)``."""
    t = torch.arange(length, dtype=torch.float32)[None, :, None]
    freq = torch.rand(batch, 1, dim, generator=generator) * 0.2 + 0.01
    phase = torch.rand(batch, 1, dim, generator=generator) * 2 * math.pi
    noise = 0.1 * torch.randn(batch, length, dim, generator=generator)
    return torch.sin(freq * t + phase) + noise


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """``(fn(), seconds)``, synchronising CUDA around the call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


@torch.no_grad()
def ssm_streaming_demo(
    length: int = 1024,
    dim: int = 128,
    layers: int = 4,
    chunk: int = 128,
    batch: int = 2,
    seed: int = 0,
    device: str = "cpu",
) -> list[dict]:
    """Offline vs chunked vs step-by-step through a Mamba / Mamba-2 stack.

    Returns one row per mode: ``mode``, ``tokens_per_s`` and ``max_abs_diff`` from the offline output.
    """
    if length < 1 or chunk < 1:
        raise ValueError(f"length and chunk must be positive; got length={length}, chunk={chunk}")
    torch.manual_seed(seed)
    dev = torch.device(device)
    kinds = [("mamba", "mamba2")[i % 2] for i in range(layers)]
    model = MambaStack(dim, kinds, mamba2_cfg={"headdim": 32, "d_state": 64, "chunk_size": 64}).to(dev).eval()
    x = synthetic_sequence(batch, length, dim, generator=torch.Generator().manual_seed(seed)).to(dev)
    tokens = batch * length
    model(x[:, : min(length, chunk)])  # warm-up, so the first timed mode pays no one-off costs

    offline, t_offline = timed(lambda: model(x), dev)

    def chunked():
        state, outs = model.init_state(batch), []
        for start in range(0, length, chunk):
            out, state = model(x[:, start : start + chunk], state)
            outs.append(out)
        return torch.cat(outs, dim=1)

    def stepwise():
        state, outs = model.init_state(batch), []
        for i in range(length):
            out, state = model.step(x[:, i], state)
            outs.append(out)
        return torch.stack(outs, dim=1)

    rows = [{"mode": "offline", "tokens_per_s": tokens / t_offline, "max_abs_diff": 0.0}]
    for mode, fn in ((f"chunks of {chunk}", chunked), ("step by step", stepwise)):
        out, seconds = timed(fn, dev)
        rows.append(
            {
                "mode": mode,
                "tokens_per_s": tokens / seconds,
                "max_abs_diff": (out - offline).abs().max().item(),
            }
        )
    return rows


def format_table(title: str, rows: list[dict], unit: str = "tokens_per_s") -> str:
    """Rows with ``mode``, ``max_abs_diff`` and the rate ``unit`` (``tokens_per_s`` or ``frames_per_s``)."""
    width = max(18, *(len(r["mode"]) + 2 for r in rows))
    lines = [title, f"{'mode':<{width}}{'max |diff| vs offline':>24}{unit.replace('_per_s', '/s'):>14}"]
    lines += [f"{r['mode']:<{width}}{r['max_abs_diff']:>24.3e}{r[unit]:>14,.1f}" for r in rows]
    return "\n".join(lines)


def run_demos(args) -> None:
    """Print every system's demo table (``args`` from ``videostate demo``)."""
    from .backbones.videomamba_demo import videomamba_streaming_demo
    from .depth.demo import depth_streaming_demo
    from .interpolation.demo import interpolation_demo
    from .segmentation.demo import segmentation_demo
    from .vlm.demo import vlm_streaming_demo

    rows = ssm_streaming_demo(
        length=args.length,
        dim=args.dim,
        layers=args.layers,
        chunk=args.chunk,
        batch=args.batch,
        seed=args.seed,
        device=args.device,
    )
    title = (
        f"Mamba/Mamba-2 stack: {args.layers} layers, width {args.dim}, batch {args.batch}, "
        f"{args.length} tokens, device {args.device}"
    )
    print(format_table(title, rows))

    rows = videomamba_streaming_demo(seed=args.seed, device=args.device)
    print()
    print(format_table(f"VideoMamba-Ti (random weights), 8 frames of {rows[0]['source']} at 64 px", rows))
    print(f"carried state: {rows[1]['state_bytes'] / 2**20:.2f} MiB per stream, the same after every chunk")

    rows = depth_streaming_demo(seed=args.seed, device=args.device)
    print()
    print(
        format_table(f"VideoMambaDepth (tiny random teacher), 16 frames of {rows[0]['source']}", rows, "frames_per_s")
    )

    rows = segmentation_demo(seed=args.seed, device=args.device)
    print()
    print(format_table("VidEoMT (tiny random model), 16 frames at 64 px: propagated queries", rows, "frames_per_s"))

    rows = interpolation_demo(seed=args.seed, device=args.device)
    print()
    print(
        format_table("HybridVFI (random weights): a batch of timesteps vs one call per timestep", rows, "frames_per_s")
    )

    rows = vlm_streaming_demo(seed=args.seed, device=args.device)
    print()
    print(format_table(f"VLM² dual memory (tiny random LLaVA-OneVision), 8 frames of {rows[0]['source']}", rows))
    print(f"memory held per video: {rows[-1]['memory_bytes'] / 2**10:.0f} KiB (bounded by L_w + L_e frames)")
