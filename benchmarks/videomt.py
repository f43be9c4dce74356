"""VidEoMT speed and memory: transformers' model, our clip forward, our eager ``step`` and our fast step.

    python benchmarks/videomt.py                       # CPU: ViT-S at 224, 4-frame clips
    python benchmarks/videomt.py --device cuda --dtype bfloat16 --image-size 640 --arch S B L \
        --frames 8 --step-frames 64 --stream-frames 10000 --checkpoint-every 1000 --stream-arch S

Per architecture (random weights; DINOv2 ViT-S/B/L shapes with VidEoMT's segmenter blocks and 200 queries),
in one run with the same weights: frames/s of transformers' ``VideomtForUniversalSegmentation`` on a clip, of
ours on the same clip, of ours frame by frame with the eager ``step`` and with ``model.fast_step()`` (a CUDA
graph on CUDA), with their ratios; the largest difference between the fast and the eager step over a clip;
where the eager step's time goes (aten ops per frame; on CUDA, kernels and their GPU time per frame against
the wall time); and for ``--stream-arch`` the memory of streaming ``--stream-frames`` frames through the fast
step, allocated and reserved every ``--checkpoint-every`` frames (flat memory: equal at every checkpoint).
Each part is guarded: a failure is recorded under ``errors`` and the other parts still run. The result file
is rewritten after every architecture.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
import traceback

import torch
import transformers
from common import OpCounter, TensorMemoryTracker, describe_device, measure_time, write_result
from transformers import VideomtForUniversalSegmentation as TransformersVideomt

from videostate.segmentation import VideomtConfig, VideomtForUniversalSegmentation

ARCHS = {
    "S": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, num_blocks=3),
    "B": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_blocks=3),
    "L": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_blocks=4),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MiB = 2**20


def log(message: str) -> None:
    print(message, flush=True)


def build(arch: str, image_size: int, device: torch.device, dtype: torch.dtype):
    """Ours (random weights, made on ``device``) and transformers' model with the same weights."""
    config = VideomtConfig(
        **ARCHS[arch], image_size=image_size, patch_size=16, num_queries=200, num_labels=40, num_register_tokens=4
    )
    with torch.device(device):
        ours = VideomtForUniversalSegmentation(config).to(dtype).eval()
        theirs = TransformersVideomt(config).to(dtype).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def stream(model, step, frames: torch.Tensor, count: int):
    """Feed ``count`` frames (cycling through ``frames (T, C, H, W)``) one at a time, keeping only the state."""
    state = model.init_state(1, device=frames.device, dtype=frames.dtype)
    for i in range(count):
        _, state = step(frames[i % len(frames)][None], state)
    return state


def max_difference(ours, fast, clip: torch.Tensor) -> dict:
    """Largest |fast - eager| over the clip's frames, for the mask and class logits and the propagated queries."""
    eager_state = fast_state = ours.init_state(1, device=clip.device, dtype=clip.dtype)
    diff = {"masks_queries_logits": 0.0, "class_queries_logits": 0.0, "propagated": 0.0}
    for frame in clip:
        eager, eager_state = ours.step(frame[None], eager_state)
        out, fast_state = fast(frame[None], fast_state)
        for name in ("masks_queries_logits", "class_queries_logits"):
            gap = (getattr(out, name).float() - getattr(eager, name).float()).abs().max().item()
            diff[name] = max(diff[name], gap)
        gap = (fast_state.propagated.float() - eager_state.propagated.float()).abs().max().item()
        diff["propagated"] = max(diff["propagated"], gap)
    return diff


def eager_step_profile(ours, clip: torch.Tensor, device: torch.device, wall_per_frame: float | None) -> dict:
    """Where the eager step's time goes: aten ops per frame; on CUDA, kernels and GPU busy time per frame."""
    counter = OpCounter()
    state = ours.init_state(1, device=clip.device, dtype=clip.dtype)
    with counter:
        ours.step(clip[0][None], state)
    row = {"eager_step_aten_ops_per_frame": counter.count}
    if device.type != "cuda":
        return row
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    frames = min(4, len(clip))
    stream(ours, ours.step, clip, frames)
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        stream(ours, ours.step, clip, frames)
        torch.cuda.synchronize(device)
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    busy = sum(e.time_range.elapsed_us() for e in kernels) / 1e6 / frames
    row["eager_step_cuda_kernels_per_frame"] = len(kernels) / frames
    row["eager_step_gpu_busy_s_per_frame"] = busy
    if wall_per_frame:
        row["eager_step_wall_s_per_frame"] = wall_per_frame
        row["eager_step_gpu_busy_fraction"] = busy / wall_per_frame
    return row


def memory_stream(ours, fast, clip: torch.Tensor, count: int, every: int, device: torch.device) -> dict:
    """Stream ``count`` frames through the fast step ``fast``; memory every ``every`` frames.

    CUDA: the caching allocator's allocated and reserved bytes. CPU: bytes of live tensors created during the
    stream (:class:`TensorMemoryTracker`; nothing is reserved).
    """
    state = ours.init_state(1, device=clip.device, dtype=clip.dtype)
    _, state = fast(clip[0][None], state)  # set-up (and capture) if not done yet, before the first checkpoint
    tracker = TensorMemoryTracker() if device.type != "cuda" else None
    checkpoints = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with tracker if tracker is not None else contextlib.nullcontext():
        for i in range(1, count + 1):
            _, state = fast(clip[i % len(clip)][None], state)
            if i % every == 0 or i == count:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    point = {
                        "frame": i,
                        "allocated_bytes": torch.cuda.memory_allocated(device),
                        "reserved_bytes": torch.cuda.memory_reserved(device),
                    }
                else:
                    point = {"frame": i, "allocated_bytes": tracker.current, "reserved_bytes": None}
                checkpoints.append(point)
                log(
                    f"    frame {i}: allocated {point['allocated_bytes'] / MiB:.2f} MiB"
                    + (f", reserved {point['reserved_bytes'] / MiB:.2f} MiB" if point["reserved_bytes"] else "")
                )
    seconds = time.perf_counter() - start
    first = checkpoints[0]
    return {
        "frames": count,
        "fast_step_cuda_graph": fast.cuda_graph,
        "frames_per_s": count / seconds,
        "checkpoints": checkpoints,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else tracker.peak,
        "allocated_flat": all(p["allocated_bytes"] == first["allocated_bytes"] for p in checkpoints),
        "reserved_flat": all(p["reserved_bytes"] == first["reserved_bytes"] for p in checkpoints),
    }


def guarded(row: dict, part: str, fn):
    """Run one part of the benchmark; a failure is logged and recorded in ``row["errors"]``, not raised."""
    log(f"  {part} ...")
    try:
        return fn()
    except Exception as error:  # one failing part must not lose the others
        traceback.print_exc()
        row.setdefault("errors", {})[part] = f"{type(error).__name__}: {error}"
        log(f"  {part} FAILED: {error}")
        return None


@torch.no_grad()
def bench_arch(arch: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    row: dict = {"arch": arch}
    built = guarded(row, "build", lambda: build(arch, args.image_size, device, dtype))
    if built is None:
        return row
    ours, theirs = built
    row["parameters"] = sum(p.numel() for p in ours.parameters())
    video = torch.randn(args.batch, args.frames, 3, args.image_size, args.image_size, device=device, dtype=dtype)
    clip = video[0]
    clip_frames = video.shape[0] * video.shape[1]

    def rate(part, fn, frames):
        seconds = guarded(row, part, lambda: measure_time(fn, device, args.repeats))
        return None if seconds is None else frames / seconds

    row["transformers_clip_frames_per_s"] = rate(
        "transformers clip", functools.partial(theirs, pixel_values_videos=video), clip_frames
    )
    theirs = None  # its weights are not needed any more
    row["ours_clip_frames_per_s"] = rate("ours clip", functools.partial(ours, video), clip_frames)
    row["ours_step_frames_per_s"] = rate(
        "eager step", functools.partial(stream, ours, ours.step, clip, args.step_frames), args.step_frames
    )
    fast = ours.fast_step()  # set up (captured) by the untimed warm-up run
    row["ours_fast_step_frames_per_s"] = rate(
        "fast step", functools.partial(stream, ours, fast, clip, args.step_frames), args.step_frames
    )
    row["fast_step_cuda_graph"] = fast.cuda_graph

    def ratio(a, b):
        return row[a] / row[b] if row.get(a) and row.get(b) else None

    row["clip_vs_transformers_clip"] = ratio("ours_clip_frames_per_s", "transformers_clip_frames_per_s")
    row["fast_step_vs_eager_step"] = ratio("ours_fast_step_frames_per_s", "ours_step_frames_per_s")
    row["fast_step_vs_transformers_clip"] = ratio("ours_fast_step_frames_per_s", "transformers_clip_frames_per_s")
    row["eager_step_vs_transformers_clip"] = ratio("ours_step_frames_per_s", "transformers_clip_frames_per_s")
    row["fast_vs_eager_max_abs_diff"] = guarded(row, "fast vs eager values", lambda: max_difference(ours, fast, clip))
    wall = 1 / row["ours_step_frames_per_s"] if row.get("ours_step_frames_per_s") else None
    row.update(guarded(row, "eager step profile", lambda: eager_step_profile(ours, clip, device, wall)) or {})
    if arch in args.stream_arch:
        row["fast_step_stream"] = guarded(
            row,
            f"memory over {args.stream_frames} streamed frames",
            lambda: memory_stream(ours, fast, clip, args.stream_frames, args.checkpoint_every, device),
        )
    return row


def summary(rows: list[dict]) -> str:
    """A table of frames/s and ratios per architecture, then the step profile, memory and failures."""
    columns = [
        ("tf clip", "transformers_clip_frames_per_s", ".1f"),
        ("clip", "ours_clip_frames_per_s", ".1f"),
        ("step", "ours_step_frames_per_s", ".1f"),
        ("fast", "ours_fast_step_frames_per_s", ".1f"),
        ("clip/tf", "clip_vs_transformers_clip", ".2f"),
        ("fast/step", "fast_step_vs_eager_step", ".2f"),
        ("fast/tf", "fast_step_vs_transformers_clip", ".2f"),
    ]

    def cell(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    lines = [
        "frames/s (batch 1 streams for step and fast)",
        f"{'arch':<5}{'params':>9}" + "".join(f"{title:>11}" for title, _, _ in columns) + f"{'max|fast-step|':>16}",
    ]
    for row in rows:
        diff = (row.get("fast_vs_eager_max_abs_diff") or {}).get("masks_queries_logits")
        params = f"{row['parameters'] / 1e6:.1f}M" if "parameters" in row else "-"
        cells = "".join(f"{cell(row.get(key), fmt):>11}" for _, key, fmt in columns)
        lines.append(f"{row['arch']:<5}{params:>9}{cells}{cell(diff, '.3g'):>16}")
    for row in rows:
        arch = row["arch"]
        if "eager_step_aten_ops_per_frame" in row:
            line = f"{arch}: eager step {row['eager_step_aten_ops_per_frame']} aten ops/frame"
            if "eager_step_gpu_busy_fraction" in row:
                busy, wall = row["eager_step_gpu_busy_s_per_frame"], row["eager_step_wall_s_per_frame"]
                line += (
                    f", {row['eager_step_cuda_kernels_per_frame']:.0f} kernels/frame, GPU busy "
                    f"{1e3 * busy:.2f} of {1e3 * wall:.2f} ms/frame ({100 * busy / wall:.0f}%)"
                )
            lines.append(line)
        memory = row.get("fast_step_stream")
        if memory:
            first, last = memory["checkpoints"][0], memory["checkpoints"][-1]
            reserved = "" if last["reserved_bytes"] is None else f", reserved {last['reserved_bytes'] / MiB:.1f} MiB"
            lines.append(
                f"{arch}: {memory['frames']} frames streamed (fast step) at {memory['frames_per_s']:.1f} frames/s; "
                f"allocated {first['allocated_bytes'] / MiB:.2f} MiB at frame {first['frame']}, "
                f"{last['allocated_bytes'] / MiB:.2f} MiB at frame {last['frame']}{reserved}; "
                f"flat: allocated {memory['allocated_flat']}, reserved {memory['reserved_flat']}"
            )
        for part, error in row.get("errors", {}).items():
            lines.append(f"{arch}: {part} failed: {error}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", choices=sorted(ARCHS), default=["S"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--frames", type=int, default=4, help="frames per clip")
    parser.add_argument("--batch", type=int, default=1, help="clips per forward (the steps stream one video)")
    parser.add_argument("--step-frames", type=int, default=8, help="frames streamed per timed step run")
    parser.add_argument("--stream-frames", type=int, default=40, help="frames streamed for the memory check")
    parser.add_argument("--checkpoint-every", type=int, default=10, help="frames between memory checkpoints")
    parser.add_argument(
        "--stream-arch", nargs="*", choices=sorted(ARCHS), default=["S"], help="architectures streamed for memory"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    for name in ("frames", "batch", "step_frames", "stream_frames", "checkpoint_every", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    name = args.output or f"segmentation_{device.type}.json"
    payload = {
        **describe_device(device),
        "transformers": transformers.__version__,
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "results": [],
    }
    for arch in args.arch:
        log(f"{arch}:")
        payload["results"].append(bench_arch(arch, args, device, dtype))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        path = write_result(name, payload)
    log(summary(payload["results"]))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
