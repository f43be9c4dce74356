"""VideoMambaDepth vs its Depth Anything V2 teacher: per-frame time, streaming latency, memory over a long stream.

For each architecture (random weights of the published DA2 sizes) and input size:

- ``teacher_ms_per_frame``: the teacher alone on a batch of ``frames`` frames;
- ``offline_ms_per_frame``: the student on one ``frames``-frame clip (teacher encoder + temporal modules +
  student decoder), and ``overhead`` = offline / teacher - 1 (goal: at most 10 %); ``phases_ms_per_frame``
  splits the offline pass into the teacher's encoder, the temporal modules and the decoder; on CUDA also
  ``fast_offline_ms_per_frame``, the same pass replayed from a CUDA graph (``model.fast_clip()``), against
  ``teacher_graph_ms_per_frame``, the teacher replayed from one too, and ``fast_overhead`` = fast offline / the
  faster of the teacher's two - 1;
- ``teacher_step_ms``, ``step_ms`` and ``fast_step_ms``: batch-1 latency of the teacher, of the eager
  ``model.step`` and of ``model.fast_step()`` (CUDA graphs; goal: 4 ms for DA2-S at 518x518 on an H100);
- ``state_bytes``: the per-stream temporal state (per pixel of each scale).

Then ``stream``: ``--stream-frames`` frames through the keyframe streamer of ``videostate depth`` with the fast
step, for the first architecture and size; at checkpoints the memory (CUDA: allocated, reserved and peak bytes;
CPU: the process's resident set and the live tensor bytes) and the keyframes held. Memory is bounded by the
weights, the streamer's states, ``max_keyframes`` keyframe states and the graphs' pool.

Each part is timed and guarded: a failure is recorded in the JSON and the run goes on; parts that would start
after ``--budget-s`` seconds are skipped and recorded so.

    python benchmarks/depth.py --device cuda            # H100: DA2-S and -L, 518x518 and 518x924, bf16
    python benchmarks/depth.py --arch small --sizes 140x140 --frames 4 --stream-frames 200 --threads 1   # CPU
"""

from __future__ import annotations

import argparse
import gc
import os
import time
import traceback

import torch
from common import describe_device, measure_time, write_result

from videostate.depth import DepthAnythingTeacher, VideoMambaDepth
from videostate.depth.streaming import KeyframeConfig, KeyframeStreamer
from videostate.depth.teacher import depth_anything_v2_config
from videostate.ssm.cuda_graph import record

START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f} s] {message}", flush=True)


def memory(device: torch.device) -> dict:
    """CUDA: bytes allocated and reserved now, and the allocator's peak; CPU: the resident set and the bytes of
    all live tensor storages now."""
    if device.type == "cuda":
        return {
            "allocated_bytes": torch.cuda.memory_allocated(device),
            "reserved_bytes": torch.cuda.memory_reserved(device),
            "peak_bytes": torch.cuda.max_memory_allocated(device),
        }
    gc.collect()
    storages = {
        o.untyped_storage().data_ptr(): o.untyped_storage().nbytes() for o in gc.get_objects() if torch.is_tensor(o)
    }
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {"rss_bytes": rss, "live_tensor_bytes": sum(storages.values())}


class Parts:
    """Runs named parts of a row: each is guarded (an error is recorded, the others go on) and skipped once the
    time budget is spent."""

    def __init__(self, row: dict, budget_s: float):
        self.row, self.budget_s = row, budget_s

    def __call__(self, name: str, fn) -> None:
        if time.perf_counter() - START > self.budget_s:
            self.row.setdefault("skipped", []).append(name)
            log(f"  {name}: skipped (time budget {self.budget_s:.0f} s spent)")
            return
        try:
            fn()
            log(f"  {name}: done")
        except Exception as exc:  # one failing part must not lose the others
            self.row.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            log(f"  {name}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
            traceback.print_exc()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def build(arch: str, size: tuple[int, int], device, dtype) -> VideoMambaDepth:
    torch.manual_seed(0)
    with torch.device(device):
        teacher = DepthAnythingTeacher.from_config(depth_anything_v2_config(arch), input_size=min(size))
    if teacher.network_size(*size) != size:
        raise ValueError(
            f"size {size} must be a network size (multiples of 14); it would run at {teacher.network_size(*size)}"
        )
    return VideoMambaDepth(teacher).to(device=device, dtype=dtype).eval()


def bench(arch, size, frames, device, dtype, repeats, budget_s) -> dict:
    row = {"arch": arch, "size": list(size)}
    model = build(arch, size, device, dtype)
    teacher = model.teacher
    row["student_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    row["teacher_params"] = sum(p.numel() for p in teacher.parameters())
    part = Parts(row, budget_s)

    def offline():
        n = frames
        while True:
            try:
                clip = torch.rand(1, n, 3, *size, device=device, dtype=dtype)
                row["teacher_ms_per_frame"] = (
                    1e3 * measure_time(lambda clip=clip: teacher.predict_depth(clip[0]), device, repeats) / n
                )
                row["offline_ms_per_frame"] = 1e3 * measure_time(lambda clip=clip: model(clip), device, repeats) / n
                break
            except torch.OutOfMemoryError:
                if n <= 1:
                    raise
                n //= 2
                torch.cuda.empty_cache()
                log(f"  out of memory at {2 * n} frames; trying {n}")
        row["frames"] = n
        row["overhead"] = row["offline_ms_per_frame"] / row["teacher_ms_per_frame"] - 1
        if device.type == "cuda":
            fast = model.fast_clip()
            row["fast_offline_ms_per_frame"] = 1e3 * measure_time(lambda: fast(clip), device, repeats) / n
            graph, _ = record(lambda: teacher.predict_depth(clip[0]), device)
            row["teacher_graph_ms_per_frame"] = 1e3 * measure_time(graph.replay, device, repeats) / n
            teacher_best = min(row["teacher_ms_per_frame"], row["teacher_graph_ms_per_frame"])
            row["fast_overhead"] = row["fast_offline_ms_per_frame"] / teacher_best - 1
            del fast, graph
            torch.cuda.empty_cache()
        feats = model.encode(clip)
        residuals, _ = model.temporal_mix(feats, None)
        mixed = [f + r for f, r in zip(feats, residuals, strict=True)]
        row["phases_ms_per_frame"] = {
            "encode": 1e3 * measure_time(lambda: model.encode(clip), device, repeats) / n,
            "temporal": 1e3 * measure_time(lambda: model.temporal_mix(feats, None), device, repeats) / n,
            "residual_add": 1e3
            * measure_time(lambda: [f + r for f, r in zip(feats, residuals, strict=True)], device, repeats)
            / n,
            "decode": 1e3 * measure_time(lambda: model.decode(mixed, size), device, repeats) / n,
            "teacher_backbone": 1e3
            * measure_time(lambda: teacher.model.backbone(teacher.preprocess(clip[0])), device, repeats)
            / n,
        }

    def steps():
        frame = torch.rand(1, 3, *size, device=device, dtype=dtype)
        row["teacher_step_ms"] = 1e3 * measure_time(lambda: teacher.predict_depth(frame), device, repeats * 3)
        _, states = model.step(frame, model.init_states(1))
        row["state_bytes"] = sum(t.numel() * t.element_size() for t in states.tensors().values())
        row["step_ms"] = 1e3 * measure_time(lambda: model.step(frame, states), device, repeats * 3)
        fast = model.fast_step()
        fast_states = [fast(frame, states)[1]]  # captures the graphs

        def fast_step():
            fast_states[0] = fast(frame, fast_states[0])[1]

        row["fast_step_ms"] = 1e3 * measure_time(fast_step, device, repeats * 10)
        row["fast_cuda_graph"] = fast.cuda_graph

    with torch.no_grad():
        part("offline", offline)
        part("steps", steps)
    return row


def stream(arch, size, stream_frames, device, dtype, budget_s) -> dict:
    """``stream_frames`` random frames through the fast keyframe streamer; memory at checkpoints."""
    row = {"arch": arch, "size": list(size), "frames": stream_frames, "fast": True}
    model = build(arch, size, device, dtype)
    config = KeyframeConfig()
    row["keyframe_config"] = {"interval": config.interval, "max_keyframes": config.max_keyframes}
    streamer = KeyframeStreamer(model, config, fast=True)
    checkpoints = [n for n in (1, 10, 100, 300, 1000, 3000, 10000, 30000, 100000) if n <= stream_frames]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    row["checkpoints"], resets = [], 0
    start = time.perf_counter()
    for i in range(1, stream_frames + 1):
        streamer(torch.rand(1, 3, *size, device=device, dtype=dtype))
        resets += streamer.report.reset_to is not None
        if i in checkpoints:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            row["checkpoints"].append(
                {"frames": i, **memory(device), "keyframes": len(streamer.bank.keyframes), "resets": resets}
            )
            log(f"  streamed {i} frames: {row['checkpoints'][-1]}")
        if time.perf_counter() - START > budget_s:
            row["stopped_at"] = i
            log(f"  stream stopped at {i} frames: time budget {budget_s:.0f} s spent")
            break
    row["ms_per_frame"] = 1e3 * (time.perf_counter() - start) / i
    states = streamer.states
    row["state_bytes"] = sum(t.numel() * t.element_size() for t in states.tensors().values())
    row["bound_state_bytes"] = (config.max_keyframes + 1) * row["state_bytes"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", default=["small", "large"], choices=["small", "base", "large"])
    parser.add_argument("--sizes", nargs="+", default=["518x518", "518x924"], help="HxW network input sizes")
    parser.add_argument("--frames", type=int, default=32, help="frames of the offline clip (halved on out of memory)")
    parser.add_argument("--stream-frames", type=int, default=10000, help="frames streamed for the memory check")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the first architecture")
    parser.add_argument("--large-repeats", type=int, default=2, help="timed runs of the large architecture")
    parser.add_argument("--budget-s", type=float, default=190.0, help="start no part after this many seconds")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    sizes = [tuple(int(v) for v in spec.lower().split("x")) for spec in args.sizes]
    payload = {**describe_device(device), "dtype": str(dtype).removeprefix("torch."), "results": [], "stream": None}
    stream_budget = args.budget_s
    # The stream runs first, with the time it needs reserved by the per-architecture rows after it.
    jobs = [("stream", args.arch[0], sizes[0])] + [("bench", a, s) for a in args.arch for s in sizes]
    for kind, arch, size in jobs:
        log(f"{kind} DA2-{arch} {size[0]}x{size[1]}")
        try:
            if kind == "stream":
                payload["stream"] = stream(arch, size, args.stream_frames, device, dtype, stream_budget * 0.5)
            else:
                repeats = args.large_repeats if arch == "large" else args.repeats
                payload["results"].append(bench(arch, size, args.frames, device, dtype, repeats, args.budget_s))
        except Exception as exc:
            log(f"  FAILED {type(exc).__name__}: {str(exc)[:300]}")
            traceback.print_exc()
            entry = {"arch": arch, "size": list(size), "errors": {kind: f"{type(exc).__name__}: {exc}"}}
            payload["stream" if kind == "stream" else "results"] = (
                entry if kind == "stream" else [*payload["results"], entry]
            )
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write_result(f"depth_{device.type}.json", payload)  # after every job, so a later failure loses nothing

    print(
        "\narch   size      teacher  offline  overhead  graphed: teacher student overhead  step   fast   teacher_b1"
        "  (ms/frame; step latencies in ms)"
    )
    for r in payload["results"]:

        def f(key, r=r):
            return f"{r[key]:7.2f}" if isinstance(r.get(key), float) else "    n/a"

        def percent(key, r=r):
            return f"{100 * r[key]:+7.1f}%" if key in r else "     n/a"

        print(
            f"{r['arch']:6s} {r['size'][0]}x{r['size'][1]:<4d} {f('teacher_ms_per_frame')} "
            f"{f('offline_ms_per_frame')} {percent('overhead')}  {f('teacher_graph_ms_per_frame')} "
            f"{f('fast_offline_ms_per_frame')} {percent('fast_overhead')} {f('step_ms')} {f('fast_step_ms')} "
            f"{f('teacher_step_ms')}"
        )
        if "phases_ms_per_frame" in r:
            print("       phases ms/frame: " + ", ".join(f"{k} {v:.3f}" for k, v in r["phases_ms_per_frame"].items()))
        for key in ("errors", "skipped"):
            if r.get(key):
                print(f"       {key}: {r[key]}")
    s = payload["stream"]
    if s:
        print(
            f"stream DA2-{s['arch']} {s['size'][0]}x{s['size'][1]} (fast): "
            f"{s.get('ms_per_frame', float('nan')):.2f} ms/frame"
        )
        for c in s.get("checkpoints", []):
            mib = {k.removesuffix("_bytes"): v >> 20 for k, v in c.items() if k.endswith("bytes")}
            print(f"  {c['frames']:6d} frames: {mib} MiB, keyframes {c['keyframes']}, resets {c['resets']}")
        if "errors" in s:
            print(f"  errors: {s['errors']}")
    print(f"wrote {write_result(f'depth_{device.type}.json', payload)}")


if __name__ == "__main__":
    main()
