"""VideoMamba encoders: offline throughput and memory, streaming latency and memory over long streams.

Offline: clips/s and peak memory of Ti/S/M on ``(batch, 3, T, size, size)`` clips (on CUDA also replayed from a
CUDA graph, ``model.fast()``), and the ratio of the measured time to the bandwidth floor: the bytes each layer must
move (its weights once, the hidden and float32 residual streams in and out) divided by the measured copy bandwidth.

Training: clips/s and peak memory of one optimiser step (forward, backward and AdamW) on ``(train_batch, 3, 8,
size, size)`` clips, float32 weights under bfloat16 autocast on CUDA, where the scan's backward kernels run; on CUDA
also with the forward and backward replayed from CUDA graphs (``model.fast_train()``).

Streaming: per-chunk latency of 1-frame chunks carrying the state (``clamp_temporal_pos=True``, so a
stream may outlast the temporal table), eager and on CUDA also replayed from CUDA graphs (``model.fast_step()``),
and the memory held after 10 chunks and after the last one,
which must be the same. Writes ``benchmarks/results/videomamba_<device>.json``.

    python benchmarks/videomamba.py --device cuda      # H100: bf16, Ti/S/M x 8/16/32/64 frames, 224 px
    python benchmarks/videomamba.py --device cpu       # small settings (see --help)
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from common import TensorMemoryTracker, describe_device, measure_peak_bytes, measure_time, write_result

from videostate.backbones.videomamba import SIZES, VideoMambaEncoder
from videostate.ssm import backends, fused_disabled

DEFAULTS = {
    "cuda": {
        "dtype": "bfloat16",
        "frames": [8, 16, 32, 64],
        "img_size": 224,
        "batch": 32,
        "train_batch": 16,
        "chunks": 200,
    },
    "cpu": {"dtype": "float32", "frames": [2, 4], "img_size": 64, "batch": 1, "train_batch": 1, "chunks": 30},
}
TRAIN_FRAMES = 8


def build(size: str, frames: int, img_size: int, device, dtype, **kwargs) -> VideoMambaEncoder:
    embed_dim, depth = SIZES[size]
    model = VideoMambaEncoder(img_size=img_size, embed_dim=embed_dim, depth=depth, num_frames=frames, **kwargs)
    return model.to(device=device, dtype=dtype).eval()


def copy_bandwidth(device: torch.device, repeats: int) -> float:
    """Bytes/s of a large device-to-device copy (read + write)."""
    src = torch.empty(256 * 2**20 if device.type == "cuda" else 32 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = measure_time(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() / seconds


def floor_bytes(model: VideoMambaEncoder, batch: int, tokens: int, frames: int, img_size: int, dtype) -> int:
    """Bytes a perfectly fused model must move: the clip read once, every parameter once, and per layer
    the hidden (model dtype) and residual (float32) streams read and written."""
    act = torch.finfo(dtype).bits // 8
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    clip = batch * 3 * frames * img_size * img_size * act
    per_layer = batch * tokens * model.embed_dim * 2 * (act + 4)
    return clip + params + len(model.layers) * per_layer


@torch.no_grad()
def offline_case(size, frames, args, device, dtype, bandwidth) -> dict:
    model = build(size, frames, args.img_size, device, dtype)
    x = torch.randn(args.batch, 3, frames, args.img_size, args.img_size, device=device, dtype=dtype)
    seconds = measure_time(lambda: model(x), device, args.repeats)
    tokens = 1 + frames * model.patch_embed.num_patches
    floor = floor_bytes(model, args.batch, tokens, frames, args.img_size, dtype)
    fast = {}
    if device.type == "cuda":  # model.fast(): the pass replayed from a CUDA graph
        fast_forward = model.fast()
        fast_seconds = measure_time(lambda: fast_forward(x), device, args.repeats)
        fast = {"fast_clips_per_s": args.batch / fast_seconds, "fast_seconds_per_batch": fast_seconds}
        del fast_forward
        torch.cuda.empty_cache()
    return {
        "size": size,
        "frames": frames,
        "img_size": args.img_size,
        "batch": args.batch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "clips_per_s": args.batch / seconds,
        "seconds_per_batch": seconds,
        "peak_bytes": measure_peak_bytes(lambda: model(x), device, {"x": x}),
        "floor_bytes": floor,
        "time_over_bandwidth_floor": seconds / (floor / bandwidth),
        **fast,
    }


def training_case(size, args, device, dtype) -> dict:
    """One optimiser step: float32 weights, the clip in ``dtype``, the forward under autocast to ``dtype`` (none
    for float32); the loss is the mean square of the encoder's outputs. On CUDA also with the forward and backward
    replayed from CUDA graphs (``model.fast_train()``), the loss and the optimiser eager; its peak includes the
    graphs' recording."""
    model = build(size, TRAIN_FRAMES, args.img_size, device, torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.train_batch, 3, TRAIN_FRAMES, args.img_size, args.img_size, device=device, dtype=dtype)

    def step_of(forward):
        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                outputs = forward(x)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            loss = sum(out.float().square().mean() for out in outputs)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    step = step_of(model)
    seconds = measure_time(step, device, args.repeats)
    fast = {}
    if device.type == "cuda":
        fast_step = step_of(model.fast_train())
        fast_peak = measure_peak_bytes(fast_step, device, {"x": x})
        fast_seconds = measure_time(fast_step, device, args.repeats)
        fast = {"fast_clips_per_s": args.train_batch / fast_seconds, "fast_seconds_per_step": fast_seconds,
                "fast_peak_bytes": fast_peak}  # fmt: skip
    return {
        "size": size,
        "frames": TRAIN_FRAMES,
        "img_size": args.img_size,
        "batch": args.train_batch,
        "weights": "float32",
        "autocast": args.dtype if dtype != torch.float32 else None,
        "clips_per_s": args.train_batch / seconds,
        "seconds_per_step": seconds,
        "peak_bytes": measure_peak_bytes(step, device, {"x": x}),
        **fast,
    }


def latency_summary(prefix: str, seconds: list[float]) -> dict:
    """Median and 90th percentile in ms of sorted ``seconds``, keyed ``<prefix>_ms_median`` / ``<prefix>_ms_p90``."""
    return {
        f"{prefix}_ms_median": 1e3 * seconds[len(seconds) // 2],
        f"{prefix}_ms_p90": 1e3 * seconds[int(0.9 * (len(seconds) - 1))],
    }


@torch.no_grad()
def streaming_case(size, args, device, dtype) -> dict:
    model = build(size, 8, args.img_size, device, dtype, pool_type="avg", clamp_temporal_pos=True)
    chunk = torch.randn(args.batch, 3, 1, args.img_size, args.img_size, device=device, dtype=dtype)

    def stream(chunks, on_chunk=None):
        state = model.init_state(args.batch, device=device, dtype=dtype)
        for i in range(chunks):
            *_, state = model(chunk, ssm_state=state, temporal_pos_offset=i)
            if on_chunk is not None:
                on_chunk(i + 1)
        return state

    def latencies(step) -> list[float]:
        """Sorted seconds per chunk of a stream of ``args.chunks`` chunks, after 3 warm-up chunks."""
        times = []
        state = model.init_state(args.batch, device=device, dtype=dtype)
        for i in range(args.chunks + 3):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            *_, state = step(chunk, state, i)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        return sorted(times[3:])

    eager = latencies(lambda x, state, i: model(x, ssm_state=state, temporal_pos_offset=i))
    fast = latencies(model.fast_step()) if device.type == "cuda" else None

    held = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)

        def record(n):
            if n in (10, args.chunks):
                torch.cuda.synchronize(device)
                held[n] = torch.cuda.memory_allocated(device) - base

        stream(args.chunks, record)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        tracker = TensorMemoryTracker()
        tracker.external = {chunk.untyped_storage().data_ptr()}

        def record(n):
            if n in (10, args.chunks):
                held[n] = tracker.current

        with tracker:
            stream(args.chunks, record)
        peak = tracker.peak
    state_bytes = sum(t.numel() * t.element_size() for t in model.init_state(args.batch).tensors().values())
    return {
        "size": size,
        "img_size": args.img_size,
        "batch": args.batch,
        "chunk_frames": 1,
        "chunks": args.chunks,
        **latency_summary("latency", eager),
        **(latency_summary("fast_step_latency", fast) if fast else {}),
        "state_bytes": state_bytes,
        "held_bytes_after_10_chunks": held.get(10),
        "held_bytes_after_last_chunk": held.get(args.chunks),
        "peak_bytes_during_stream": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", help="bfloat16 on cuda, float32 on cpu by default")
    parser.add_argument(
        "--sizes", nargs="+", default=None, choices=list(SIZES), help="default: all on cuda, tiny on cpu"
    )
    parser.add_argument("--frames", type=int, nargs="+", help="offline clip lengths")
    parser.add_argument("--img-size", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--train-batch", type=int, help="clips of a training step")
    parser.add_argument("--chunks", type=int, help="1-frame chunks streamed (at least 10)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    defaults = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sizes = args.sizes or (list(SIZES) if device.type == "cuda" else ["tiny"])
    if args.chunks < 10:
        parser.error(f"--chunks must be at least 10; got {args.chunks}")
    dtype = getattr(torch, args.dtype)

    bandwidth = copy_bandwidth(device, args.repeats)
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)
    offline = []
    for size in args.sizes:
        for frames in args.frames:
            try:
                row = offline_case(size, frames, args, device, dtype, bandwidth)
            except torch.OutOfMemoryError:
                row = {"size": size, "frames": frames, "batch": args.batch, "error": "out of memory"}
                torch.cuda.empty_cache()
            offline.append(row)
            if "error" in row:
                print(f"{size:>6} {frames:3d} frames: out of memory at batch {args.batch}", flush=True)
                continue
            print(
                f"{size:>6} {frames:3d} frames: {row['clips_per_s']:9.1f} clips/s"
                + (f" ({row['fast_clips_per_s']:.1f} from a CUDA graph)" if "fast_clips_per_s" in row else "")
                + f", peak "
                f"{row['peak_bytes'] / 2**20:9.1f} MiB, {row['time_over_bandwidth_floor']:6.1f}x the bandwidth floor",
                flush=True,
            )
    training = []
    for size in args.sizes:
        row = training_case(size, args, device, dtype)
        training.append(row)
        print(
            f"{size:>6} training: {row['clips_per_s']:9.1f} clips/s ({TRAIN_FRAMES} frames, batch {row['batch']})"
            + (f" ({row['fast_clips_per_s']:.1f} from CUDA graphs)" if "fast_clips_per_s" in row else "")
            + f", peak {row['peak_bytes'] / 2**20:9.1f} MiB",
            flush=True,
        )
    streaming = []
    for size in args.sizes:
        row = streaming_case(size, args, device, dtype)
        streaming.append(row)
        print(
            f"{size:>6} stream: {row['latency_ms_median']:.2f} ms per 1-frame chunk (p90 "
            f"{row['latency_ms_p90']:.2f})"
            + (
                f", {row['fast_step_latency_ms_median']:.2f} from CUDA graphs "
                f"(p90 {row['fast_step_latency_ms_p90']:.2f})"
                if "fast_step_latency_ms_median" in row
                else ""
            )
            + f", held {row['held_bytes_after_10_chunks']} B after 10 chunks, "
            f"{row['held_bytes_after_last_chunk']} B after {row['chunks']}",
            flush=True,
        )
    environment = describe_device(device)
    environment.update(
        dtype=args.dtype,
        copy_bandwidth_bytes_per_s=bandwidth,
        selective_scan_backends=backends("selective_scan"),
        fused_disabled=fused_disabled(),
        load_average=os.getloadavg(),
    )
    path = write_result(
        f"videomamba_{device.type}.json",
        {"environment": environment, "offline": offline, "training": training, "streaming": streaming},
    )
    print(f"wrote {path.relative_to(path.parents[2])}")


if __name__ == "__main__":
    main()
