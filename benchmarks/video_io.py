"""Video I/O throughput and memory: ``VideoReader`` decode, random access and ``VideoWriter`` encode.

For every video in ``../shared/data/videos`` (skipped when absent) and for a generated 1080p clip:
sequential decode frames/s, random access ms/frame (seek + decode), H.264 encode frames/s, and the
peak resident memory each adds (a bounded reader holds one frame, not the video). Writes
``benchmarks/results/video_io_<device>.json``.

    python benchmarks/video_io.py
    python benchmarks/video_io.py --frames 300 --preset medium
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the repo

from benchmarks.common import describe_device, write_result
from videostate.data.video import VideoReader, VideoWriter

SAMPLE_VIDEOS = Path(__file__).resolve().parents[1] / "../shared/data/videos"  # beside the repository


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(fn: Callable[[], object], repeats: int) -> tuple[float, int]:
    """Best wall time of ``repeats`` runs (s) and the most resident memory a run added (bytes).

    FFmpeg's buffers are not tensors, so memory is the process's resident-set high-water mark
    (Linux), reset before each run; :func:`reexec_with_fixed_mmap_threshold` makes freed buffers
    leave the resident set so the mark follows live memory.
    """
    best, peak = float("inf"), 0
    for _ in range(repeats):
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS") * 1024
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        peak = max(peak, _status_kib("VmHWM") * 1024 - base)
    return best, peak


def reexec_with_fixed_mmap_threshold() -> None:
    """Restart once with glibc's mmap threshold at 64 KiB, so large freed buffers return to the system."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and sys.platform.startswith("linux"):
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])


def moving_frames(num_frames: int, height: int, width: int):
    """A textured 1080p pattern panning 8 px per frame (views of one wide buffer: cheap to make)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0 : width + 8 * num_frames]
    base = np.stack([(x * 3) % 256, (y * 2) % 256, ((x + y) // 4) % 256], -1).astype(np.uint8)
    base = np.clip(base.astype(np.int16) + rng.integers(-12, 13, base.shape, dtype=np.int16), 0, 255).astype(np.uint8)
    for i in range(num_frames):
        yield base[:, 8 * i : 8 * i + width]


def encode(path: Path, frames, fps: Fraction, preset: str) -> int:
    with VideoWriter(path, fps, preset=preset) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.frames_written


def decode_all(path: Path) -> int:
    count = 0
    with VideoReader(path) as reader:
        for _ in reader:
            count += 1
    return count


def random_access(path: Path, indices: list[int]) -> None:
    with VideoReader(path) as reader:
        for i in indices:
            reader[i]


def bench_video(path: Path, preset: str, repeats: int) -> dict:
    with VideoReader(path) as reader:
        n, width, height, rate = len(reader), reader.width, reader.height, reader.frame_rate
    with av.open(str(path)) as container:
        codec = container.streams.video[0].codec_context.name
    decode_s, decode_peak = measure(lambda: decode_all(path), repeats)
    indices = np.random.default_rng(0).integers(0, n, 20).tolist()
    random_s, _ = measure(lambda: random_access(path, indices), repeats)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "reencoded.mp4"

        def reencode():
            with VideoReader(path) as reader:
                encode(out, reader, rate, preset)

        transcode_s, transcode_peak = measure(reencode, 1)
    frame_bytes = width * height * 3
    return {
        "video": path.name,
        "codec": codec,
        "frames": n,
        "size": f"{width}x{height}",
        "decode_fps": n / decode_s,
        "decode_peak_mib": decode_peak / 2**20,
        "whole_video_rgb_mib": n * frame_bytes / 2**20,
        "random_access_ms_per_frame": 1000 * random_s / len(indices),
        "transcode_fps": n / transcode_s,
        "transcode_peak_mib": transcode_peak / 2**20,
        "encoder": f"libx264 preset={preset} crf=18 yuv420p",
    }


def bench_generated(num_frames: int, preset: str, repeats: int) -> dict:
    height, width = 1080, 1920
    list(moving_frames(1, height, width))  # warm the pattern code
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generated_1080p.mp4"
        encode_s, encode_peak = measure(
            lambda: encode(path, moving_frames(num_frames, height, width), Fraction(30), preset), 1
        )
        row = bench_video(path, preset, repeats)
    row.update(
        video=f"generated 1080p pan ({num_frames} frames, 30 fps)",
        encode_fps=num_frames / encode_s,
        encode_peak_mib=encode_peak / 2**20,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=120, help="frames in the generated 1080p clip")
    parser.add_argument("--preset", default="medium", help="x264 preset for the encode measurements")
    parser.add_argument("--repeats", type=int, default=3, help="decode timings keep the best of this many runs")
    args = parser.parse_args()
    device = torch.device("cpu")  # decoding and encoding run on the CPU (FFmpeg)
    load_at_start = os.getloadavg()
    rows = []
    if SAMPLE_VIDEOS.is_dir():
        for path in sorted(SAMPLE_VIDEOS.iterdir()):
            if path.suffix.lower() in (".mp4", ".mkv", ".mov", ".avi", ".webm"):
                rows.append(bench_video(path, args.preset, args.repeats))
                print(rows[-1], flush=True)
    else:
        print(f"{SAMPLE_VIDEOS} not found: sample videos skipped")
    rows.append(bench_generated(args.frames, args.preset, args.repeats))
    print(rows[-1], flush=True)
    env = describe_device(device)
    env.update(
        pyav=av.__version__,
        ffmpeg=str(av.ffmpeg_version_info),
        cpu_count=os.cpu_count(),
        load_average_at_start=load_at_start,  # other processes on the machine slow every number
    )
    path = write_result(f"video_io_{device.type}.json", {**env, "results": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    reexec_with_fixed_mmap_threshold()
    main()
