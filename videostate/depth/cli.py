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

from videostate.training.cli import add_overrides_argument


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


def add_depth_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """``videostate depth-eval``: arguments and handler."""
    parser.add_argument("input", help="video file or folder of numbered frames")
    add_model_arguments(parser)
    parser.add_argument("--gt-depth", help="folder of 16-bit ground-truth depth PNGs, one per frame")
    parser.add_argument("--depth-scale", type=float, default=1000.0, help="PNG units per metre")
    parser.add_argument("--max-depth", type=float, default=10.0, help="ground truth beyond this (metres) is invalid")
    parser.add_argument("--trajectory", help="Open3D .log camera-to-world poses (with --gt-depth: TAE)")
    parser.add_argument("--intrinsics", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"), help="for TAE")
    parser.add_argument("--max-frames", type=int, help="evaluate the first frames only")
    parser.add_argument("--flow-preset", default="fast", help="DIS preset of the static masks")
    parser.add_argument("--plots", help="folder for per-frame curve PNGs")
    parser.add_argument("--json", help="also write the metrics to this JSON file")
    parser.set_defaults(func=run_depth_eval)


def run_depth_eval(args: argparse.Namespace) -> int:
    from videostate.data.video import VideoReader, frame_files

    from .data import read_depth_png
    from .evaluation import evaluate_sequence, format_table, load_trajectory_log, plot_curves, predict_sequence

    if (args.trajectory is None) != (args.intrinsics is None) or (args.trajectory and not args.gt_depth):
        raise ValueError("TAE needs --trajectory, --intrinsics and --gt-depth together")
    with VideoReader(args.input) as reader:
        count = len(reader) if args.max_frames is None else min(args.max_frames, len(reader))
        frames = reader.read_clip(range(count))
    gt = poses = K = None
    if args.gt_depth:
        files = frame_files(args.gt_depth)[:count]
        if len(files) != count:
            raise ValueError(f"{args.gt_depth} has {len(files)} depth images; {count} frames are evaluated")
        gt = torch.stack([torch.from_numpy(read_depth_png(f, args.depth_scale)) for f in files])
    if args.trajectory:
        poses = load_trajectory_log(args.trajectory)[:count]
        fx, fy, cx, cy = args.intrinsics
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    model = load_model(args)
    result = evaluate_sequence(
        predict_sequence(model, frames),
        frames,
        gt,
        poses,
        K,
        max_depth=args.max_depth,
        flow_preset=args.flow_preset,
    )
    print(format_table(result))
    if args.plots:
        plot_curves(result, args.plots)
    if args.json:
        Path(args.json).write_text(json.dumps(result.metrics, indent=2))
    return 0


def add_depth_export_arguments(parser: argparse.ArgumentParser) -> None:
    """``videostate depth-export``: arguments and handler."""
    parser.add_argument("recipe", help="the depth recipe the checkpoint was trained with")
    parser.add_argument("checkpoint", help="a training checkpoint (step_<n>.pt)")
    parser.add_argument("-o", "--output", required=True, help="VideoMambaDepth folder to write")
    add_overrides_argument(parser)
    parser.set_defaults(func=run_depth_export)


def run_depth_export(args: argparse.Namespace) -> int:
    from videostate.training import load_checkpoint
    from videostate.training.recipe import load_recipe

    from .training import build_model

    recipe = load_recipe(args.recipe, args.overrides)
    model = build_model(recipe.model)
    load_checkpoint(args.checkpoint, restore_rng=False, model=model)
    model.save_pretrained(args.output)
    print(f"wrote {args.output}")
    return 0
