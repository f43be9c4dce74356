"""Commands of the depth system.

- ``videostate depth IN -o OUT.mp4``: stream a video through :class:`VideoMambaDepth` with keyframes and write a
  colourised depth video at the input frame rate (with the input's audio), optionally side by side with the
  input and with the raw depth (``.npz`` or a folder of 16-bit PNGs).
- ``videostate depth-precompute SOURCES... -o CACHE``: cache the teacher's depth for training.
- ``videostate depth-eval IN``: teacher alone vs the model (see :mod:`videostate.depth.evaluation`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a trained VideoMambaDepth folder (config.json + model.safetensors)")
    source.add_argument(
        "--teacher",
        help="a Depth Anything checkpoint (folder or hub id): an untrained student, which reproduces the teacher",
    )
    parser.add_argument("--input-size", type=int, default=518, help="teacher input shorter side (with --teacher)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="model precision"
    )


def load_model(args: argparse.Namespace):
    from .model import VideoMambaDepth
    from .teacher import DepthAnythingTeacher

    dtype = getattr(torch, args.dtype)
    if args.model:
        model = VideoMambaDepth.from_pretrained(args.model)
    else:
        model = VideoMambaDepth(DepthAnythingTeacher.from_pretrained(args.teacher, input_size=args.input_size))
    return model.to(device=args.device, dtype=dtype).eval()


def add_depth_arguments(parser: argparse.ArgumentParser) -> None:
    """``videostate depth``: arguments and handler."""
    parser.add_argument("input", help="video file or folder of numbered frames")
    parser.add_argument("-o", "--output", required=True, help="colourised depth video (.mp4, .mkv, .mov)")
    add_model_arguments(parser)
    parser.add_argument("--side-by-side", action="store_true", help="put the input frame left of the depth")
    parser.add_argument(
        "--raw", help="also save the aligned depth: a .npz file (float16, kept in memory) or a folder of 16-bit PNGs"
    )
    parser.add_argument("--fps", type=float, help="frame rate of a frame folder (a video file's own rate is used)")
    parser.add_argument("--keyframe-interval", type=int, default=32, help="frames between stored keyframes")
    parser.add_argument("--similarity-threshold", type=float, default=0.9, help="cosine similarity of a match")
    parser.add_argument("--ema-decay", type=float, default=0.9, help="EMA weight of the past scale/shift")
    parser.add_argument(
        "--state-change-threshold", type=float, default=0.05, help="largest relative state change for alignment"
    )
    parser.add_argument("--max-keyframes", type=int, default=8, help="keyframes kept (memory bound)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run_depth)


class RawDepthSink:
    """Aligned depth frames to ``path``: ``.npz`` (one float16 array ``depth (N, H, W)``, written at close) or a
    folder of 16-bit PNGs ``%06d.png`` holding ``depth * scale`` with ``scale`` in ``scale.json``."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.frames: list[np.ndarray] = []
        self.scale: float | None = None
        if self.path.suffix != ".npz":
            self.path.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def write(self, depth: np.ndarray) -> None:
        if self.path.suffix == ".npz":
            self.frames.append(depth.astype(np.float16))
        else:
            if self.scale is None:  # the first frame's maximum maps to a quarter of the range: room to grow
                self.scale = 16383.0 / max(float(depth.max()), 1e-6)
                (self.path / "scale.json").write_text(json.dumps({"png_units_per_depth_unit": self.scale}))
            png = np.clip(np.round(depth * self.scale), 0, 65535).astype(np.uint16)
            cv2.imwrite(str(self.path / f"{self.count:06d}.png"), png)
        self.count += 1

    def close(self) -> None:
        if self.path.suffix == ".npz":
            np.savez_compressed(self.path, depth=np.stack(self.frames))


@torch.no_grad()
def depth_video(
    model,
    input_path: str,
    output_path: str,
    *,
    keyframes=None,
    side_by_side: bool = False,
    raw_path: str | None = None,
    fps: float | None = None,
    progress: bool = True,
) -> int:
    """Stream ``input_path`` through ``model`` with a :class:`KeyframeStreamer` and write the colourised depth
    to ``output_path`` at the input frame rate (with its audio). Returns the number of frames written."""
    from videostate.data.cli import describe
    from videostate.data.video import VideoReader, VideoWriter

    from .streaming import KeyframeStreamer
    from .visualize import RunningRange, colorize

    audio = Path(input_path).is_file() and describe(input_path)["audio"] is not None
    param = next(model.parameters())
    streamer = KeyframeStreamer(model, keyframes)
    colour_range = RunningRange()
    raw = RawDepthSink(raw_path) if raw_path else None
    with VideoReader(input_path, fps=fps) as reader:
        writer = VideoWriter(output_path, reader.frame_rate, audio_from=input_path if audio else None)
        with writer:
            for frame in tqdm(reader, total=len(reader), desc="depth", unit="frame", disable=not progress):
                rgb = torch.from_numpy(frame).permute(2, 0, 1)[None].to(param.device, param.dtype) / 255
                depth = streamer(rgb)[0, 0].float().cpu().numpy()
                image = colorize(depth, *colour_range.update(depth))
                writer.write(np.concatenate([frame, image], axis=1) if side_by_side else image)
                if raw is not None:
                    raw.write(depth)
    if raw is not None:
        raw.close()
    return writer.frames_written


def run_depth(args: argparse.Namespace) -> int:
    from .streaming import KeyframeConfig

    keyframes = KeyframeConfig(
        interval=args.keyframe_interval,
        similarity_threshold=args.similarity_threshold,
        ema_decay=args.ema_decay,
        state_change_threshold=args.state_change_threshold,
        max_keyframes=args.max_keyframes,
    )
    model = load_model(args)
    count = depth_video(
        model,
        args.input,
        args.output,
        keyframes=keyframes,
        side_by_side=args.side_by_side,
        raw_path=args.raw,
        fps=args.fps,
        progress=not args.no_progress,
    )
    print(f"wrote {count} frames to {args.output}")
    return 0


def add_depth_precompute_arguments(parser: argparse.ArgumentParser) -> None:
    """``videostate depth-precompute``: arguments and handler."""
    parser.add_argument("sources", nargs="+", help="video files or frame folders (as in the recipe's data.sources)")
    parser.add_argument("-o", "--output", required=True, help="cache folder (one float16 .npy per video)")
    parser.add_argument("--teacher", required=True, help="Depth Anything checkpoint (folder or hub id)")
    parser.add_argument("--input-size", type=int, default=518)
    parser.add_argument("--batch-size", type=int, default=8, help="frames per teacher call")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.set_defaults(func=run_depth_precompute)


def run_depth_precompute(args: argparse.Namespace) -> int:
    from .data import precompute_teacher_depth
    from .teacher import DepthAnythingTeacher

    teacher = DepthAnythingTeacher.from_pretrained(args.teacher, input_size=args.input_size).to(args.device)
    for path in precompute_teacher_depth(
        teacher, args.sources, args.output, batch_size=args.batch_size, device=args.device
    ):
        print(path)
    return 0
