"""VidEoMT speed and memory: our clip forward and online ``step`` beside transformers' model, same weights.

    python benchmarks/videomt.py                       # CPU: ViT-S at 224, 4-frame clips
    python benchmarks/videomt.py --device cuda --dtype bfloat16 --image-size 640 --arch S B L \
        --frames 8 --stream-frames 10000 --compile

Per architecture (random weights; DINOv2 ViT-S/B/L shapes with VidEoMT's segmenter blocks and 200 queries):
frames/s of transformers' ``VideomtForUniversalSegmentation`` on a clip, of ours on the same clip, of
ours frame by frame with ``step`` (optionally ``torch.compile``d), and the peak memory of streaming
``--stream-frames`` frames against 10 frames (flat memory: the two are equal).
"""

from __future__ import annotations

import argparse

import torch
import transformers
from common import describe_device, measure_peak_bytes, measure_time, write_result
from transformers import VideomtForUniversalSegmentation as TransformersVideomt

from videostate.segmentation import VideomtConfig, VideomtForUniversalSegmentation

ARCHS = {
    "S": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, num_blocks=3),
    "B": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_blocks=3),
    "L": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_blocks=4),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build(arch: str, image_size: int, device: torch.device, dtype: torch.dtype):
    config = VideomtConfig(
        **ARCHS[arch], image_size=image_size, patch_size=16, num_queries=200, num_labels=40, num_register_tokens=4
    )
    ours = VideomtForUniversalSegmentation(config).to(device, dtype).eval()
    theirs = TransformersVideomt(config).to(device, dtype).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def stream(model, step, frames: torch.Tensor, count: int) -> None:
    """Feed ``count`` frames (cycling through ``frames (T, C, H, W)``) one at a time, keeping only the state."""
    state = model.init_state(1, device=frames.device, dtype=frames.dtype)
    for i in range(count):
        _, state = step(frames[i % len(frames)][None], state)


@torch.no_grad()
def bench_arch(arch: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    ours, theirs = build(arch, args.image_size, device, dtype)
    video = torch.randn(args.batch, args.frames, 3, args.image_size, args.image_size, device=device, dtype=dtype)
    step = torch.compile(ours.step, mode="reduce-overhead", dynamic=False) if args.compile else ours.step
    frames = video.shape[0] * video.shape[1]

    t_theirs = measure_time(lambda: theirs(pixel_values_videos=video), device, args.repeats)
    t_ours = measure_time(lambda: ours(video), device, args.repeats)
    t_step = measure_time(lambda: stream(ours, step, video[0], args.frames), device, args.repeats)
    peak_short = measure_peak_bytes(lambda: stream(ours, step, video[0], 10), device, {"video": video})
    peak_long = measure_peak_bytes(lambda: stream(ours, step, video[0], args.stream_frames), device, {"video": video})
    row = {
        "arch": arch,
        "parameters": sum(p.numel() for p in ours.parameters()),
        "transformers_clip_frames_per_s": frames / t_theirs,
        "ours_clip_frames_per_s": frames / t_ours,
        "ours_step_frames_per_s": args.frames / t_step,
        "clip_speedup_vs_transformers": t_theirs / t_ours,
        "step_speedup_vs_transformers_clip": (args.frames / t_step) / (frames / t_theirs),
        "step_peak_bytes_10_frames": peak_short,
        f"step_peak_bytes_{args.stream_frames}_frames": peak_long,
    }
    print(
        f"{arch}: transformers {row['transformers_clip_frames_per_s']:.1f} f/s, ours clip "
        f"{row['ours_clip_frames_per_s']:.1f} f/s, ours step {row['ours_step_frames_per_s']:.1f} f/s; "
        f"step peak {peak_short / 2**20:.1f} MiB (10 frames) vs {peak_long / 2**20:.1f} MiB "
        f"({args.stream_frames} frames)"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", choices=sorted(ARCHS), default=["S"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--frames", type=int, default=4, help="frames per clip")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--stream-frames", type=int, default=40, help="frames streamed for the memory check")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the online step (CUDA graphs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    rows = [bench_arch(arch, args, device, dtype) for arch in args.arch]
    payload = {
        **describe_device(device),
        "transformers": transformers.__version__,
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "results": rows,
    }
    name = args.output or f"segmentation_{device.type}.json"
    print(f"wrote {write_result(name, payload)}")


if __name__ == "__main__":
    main()
