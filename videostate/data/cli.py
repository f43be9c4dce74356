"""``videostate info VIDEO ...``: frame count, size, frame rate, rotation and audio of videos or frame folders."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", help="video files or folders of numbered images")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    parser.set_defaults(func=run)


def describe(path: str) -> dict:
    """The facts ``videostate info`` prints for one video (a frame folder needs no PyAV)."""
    from .video import VideoReader, require_av

    with VideoReader(path) as reader:
        info = {
            "path": str(path),
            "frames": len(reader),
            "width": reader.width,
            "height": reader.height,
            "fps": round(reader.fps, 6),
            "frame_rate": str(reader.frame_rate),
            "rotation": reader.rotation,
            "duration_s": round(len(reader) / reader.fps, 6),
            "audio": None,
        }
        if reader.path.is_file():
            with require_av(f"reading the video file {reader.path}").open(str(reader.path)) as container:
                if container.streams.audio:
                    audio = container.streams.audio[0]
                    info["audio"] = {"codec": audio.codec_context.name, "sample_rate": audio.rate}
    return info


def run(args: argparse.Namespace) -> int:
    for path in args.videos:
        info = describe(path)
        if args.json:
            print(json.dumps(info))
        else:
            audio = (
                "no audio"
                if info["audio"] is None
                else f"audio {info['audio']['codec']} {info['audio']['sample_rate']} Hz"
            )
            print(
                f"{info['path']}: {info['frames']} frames, {info['width']}x{info['height']}, "
                f"{info['fps']:.3f} fps ({info['frame_rate']}), {info['duration_s']:.2f} s, "
                f"rotation {info['rotation']}, {audio}"
            )
    return 0
