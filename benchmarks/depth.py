"""VideoMambaDepth vs its Depth Anything V2 teacher: per-frame time, streaming latency, memory over a long stream.

For each architecture (random weights of the published DA2 sizes) and input size:

- ``teacher_ms_per_frame``: the teacher alone on a batch of ``--frames`` frames;
- ``offline_ms_per_frame``: the student on one ``--frames``-frame clip (teacher encoder + temporal modules +
  student decoder), and ``overhead`` = offline / teacher - 1 (goal: at most 10 %);
- ``teacher_step_ms`` and ``step_ms``: batch-1 latency of the teacher and of ``model.step`` (goal: 4 ms for
  DA2-S at 518x518 on an H100);
- ``stream``: peak memory after 10, 100, 1000, ... frames streamed through the keyframe streamer of
  ``videostate depth`` (CUDA: allocated now and the allocator's peak; CPU: the process's resident set and the
  live tensor bytes), flat once the keyframe bank is full (``interval * max_keyframes`` = 256 frames).

    python benchmarks/depth.py --device cuda --dtype bfloat16            # H100: DA2-S and -L, 518x518, 518x924
    python benchmarks/depth.py --arch small --sizes 140x140 --frames 4 --stream-frames 200 --threads 1   # CPU
"""

from __future__ import annotations

import argparse
import gc
import os

import torch
from common import describe_device, measure_time, write_result

from videostate.depth import DepthAnythingTeacher, VideoMambaDepth
from videostate.depth.streaming import KeyframeConfig, KeyframeStreamer
from videostate.depth.teacher import depth_anything_v2_config


def memory(device: torch.device) -> dict:
    """CUDA: bytes allocated now and the allocator's peak since the stream started; CPU: the resident set and
    the bytes of all live tensor storages now."""
    if device.type == "cuda":
        return {
            "allocated_bytes": torch.cuda.memory_allocated(device),
            "peak_bytes": torch.cuda.max_memory_allocated(device),
        }
    gc.collect()
    storages = {
        o.untyped_storage().data_ptr(): o.untyped_storage().nbytes() for o in gc.get_objects() if torch.is_tensor(o)
    }
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {"rss_bytes": rss, "live_tensor_bytes": sum(storages.values())}


def bench(arch: str, size: tuple[int, int], frames: int, stream_frames: int, device, dtype, repeats: int) -> dict:
    torch.manual_seed(0)
    teacher = DepthAnythingTeacher.from_config(depth_anything_v2_config(arch), input_size=min(size))
    if teacher.network_size(*size) != size:
        raise ValueError(
            f"size {size} must be a network size (multiples of 14); it would run at {teacher.network_size(*size)}"
        )
    model = VideoMambaDepth(teacher).to(device=device, dtype=dtype).eval()
    clip = torch.rand(1, frames, 3, *size, device=device, dtype=dtype)
    frame = clip[:, 0]
    row = {"arch": arch, "size": list(size), "frames": frames}
    row["student_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    row["teacher_params"] = sum(p.numel() for p in teacher.parameters())
    with torch.no_grad():
        row["teacher_ms_per_frame"] = (
            1e3 * measure_time(lambda: teacher.predict_depth(clip[0]), device, repeats) / frames
        )
        row["offline_ms_per_frame"] = 1e3 * measure_time(lambda: model(clip), device, repeats) / frames
        row["overhead"] = row["offline_ms_per_frame"] / row["teacher_ms_per_frame"] - 1
        row["teacher_step_ms"] = 1e3 * measure_time(lambda: teacher.predict_depth(frame), device, repeats)
        states = model.init_states(1)
        _, states = model.step(frame, states)
        row["step_ms"] = 1e3 * measure_time(lambda: model.step(frame, states), device, repeats)
        row["state_bytes"] = sum(t.numel() * t.element_size() for t in states.tensors().values())

        streamer = KeyframeStreamer(model, KeyframeConfig())
        checkpoints = [n for n in (10, 100, 300, 1000, 3000, 10000, 100000) if n <= stream_frames]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        stream = []
        for i in range(1, stream_frames + 1):
            streamer(torch.rand(1, 3, *size, device=device, dtype=dtype))
            if i in checkpoints:
                stream.append({"frames": i, **memory(device), "keyframes": len(streamer.bank.keyframes)})
        row["stream"] = stream
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", default=["small", "large"], choices=["small", "base", "large"])
    parser.add_argument("--sizes", nargs="+", default=["518x518", "518x924"], help="HxW network input sizes")
    parser.add_argument("--frames", type=int, default=32, help="frames of the offline clip")
    parser.add_argument("--stream-frames", type=int, default=10000, help="frames streamed for the memory check")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    rows = []
    for arch in args.arch:
        for spec in args.sizes:
            size = tuple(int(v) for v in spec.lower().split("x"))
            row = bench(arch, size, args.frames, args.stream_frames, device, dtype, args.repeats)
            mib = [{k: v >> 20 for k, v in s.items() if k.endswith("bytes")} for s in row["stream"]]
            print(
                f"DA2-{arch} {size[0]}x{size[1]}: teacher {row['teacher_ms_per_frame']:.2f} ms/frame, "
                f"student offline {row['offline_ms_per_frame']:.2f} ms/frame ({100 * row['overhead']:+.1f} %), "
                f"step {row['step_ms']:.2f} ms (teacher {row['teacher_step_ms']:.2f} ms), "
                f"stream memory (MiB) {mib}",
                flush=True,
            )
            rows.append(row)
    payload = {**describe_device(device), "dtype": str(dtype).removeprefix("torch."), "results": rows}
    path = write_result(f"depth_{device.type}.json", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
