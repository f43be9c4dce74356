"""HybridVFI speed and memory: interpolation throughput per phase, size and backbone, and training memory.

Each measurement builds a random-weight model and interpolates one frame pair (batch 1): the best
time of up to ``--repeats`` runs after one warm-up, the frames per second that gives for 2x
up-conversion (each call yields one new frame beside one input frame: 2 output frames), and the
peak memory the call adds. 4K estimates the flow at a quarter of the size (``flow_scale 0.25``,
the ``--scale`` of ``videostate interpolate`` and the X-TEST 4K protocol); the other sizes at full
size. Training memory is one step (forward, CompositeLoss with the perceptual term off, backward,
AdamW step) at ``--train-crop`` crops, batch ``--train-batch`` (the seed reports about 20.6 GB for
phase 1 at 256x256, batch 4). Phase 3 has phase 2's model.

Two backbones are measured: ``scan_from_stage=0`` (the seed's model: the Mamba-2 scan runs on every
stage, the full-resolution one included) and ``--fast-scan-from-stage`` (the scan on the smallest
maps only). Results are printed as soon as measured, most important first (phase 2 at 1080p), and
the result file is rewritten after each one. Every measurement has a time limit (``--limit``) and
the whole run a budget (``--budget``); what does not fit is recorded as skipped.

GPU (the reference run; bf16 autocast):   python benchmarks/interpolation.py
CPU (small sizes; the reference scan):    python benchmarks/interpolation.py --device cpu \\
                                              --sizes 64x64,128x128 --train-crop 64 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import time
import warnings

import torch
from common import describe_device, measure_peak_bytes, write_result

from videostate.interpolation import CompositeLoss, HybridVFI, HybridVFIConfig
from videostate.ssm import resolve

NAMED_SIZES = {"720p": (720, 1280), "1080p": (1080, 1920), "4k": (2160, 3840)}
GOALS = {
    "phase2_1080p_output_frames_per_s_2x": ">= 30 (H100)",
    "4k_peak_bytes": "< 40 GB",
    "phase1_training_256_batch4": "about 20.6 GB (seed, RTX 5090)",
}


class MeasurementTimeout(Exception):
    pass


def parse_size(text: str) -> tuple[str, int, int]:
    if text in NAMED_SIZES:
        return (text, *NAMED_SIZES[text])
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must be one of {sorted(NAMED_SIZES)} or HxW; got {text!r}") from None
    return text, h, w


def is_oom(error: Exception) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`MeasurementTimeout` in this thread after ``seconds`` (checked between Python
    statements, so a long chain of kernel launches is interrupted; one long kernel is waited for)."""

    def expire(signum, frame):
        raise MeasurementTimeout(f"over the {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_runs(fn, device, repeats: int, limit: float) -> tuple[float, int, float]:
    """One warm-up run, then up to ``repeats`` timed runs while within half the limit.

    Returns (best seconds, timed runs, warm-up seconds)."""
    start = time.perf_counter()
    fn()
    sync(device)
    warm = time.perf_counter() - start
    best, runs = float("inf"), 0
    while runs < repeats and (runs == 0 or time.perf_counter() - start < limit / 2):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best, runs = min(best, time.perf_counter() - t0), runs + 1
    return best, runs, warm


def measure(fn, device, inputs: dict, repeats: int, limit: float) -> dict:
    """Time ``fn`` and its peak memory (CUDA: the allocator's peak over the timed runs; CPU: one
    tracked run), guarded by a time limit and out-of-memory errors."""
    out = {}
    try:
        with time_limit(limit):
            if device.type == "cuda":
                sync(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            seconds, runs, warm = timed_runs(fn, device, repeats, limit)
            out.update(seconds=seconds, timed_runs=runs, warmup_seconds=warm)
            if device.type == "cuda":
                out["peak_bytes"] = torch.cuda.max_memory_allocated(device) - base
            else:
                out["peak_bytes"] = measure_peak_bytes(fn, device, inputs)
    except MeasurementTimeout as e:
        out["error"] = str(e)
    except (RuntimeError, torch.OutOfMemoryError) as e:
        if not is_oom(e):
            raise
        out["error"] = "out of memory"
    finally:
        sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def build_model(phase: int, scan_from_stage: int, device) -> HybridVFI:
    torch.manual_seed(0)
    return HybridVFI(HybridVFIConfig(phase=phase, scan_from_stage=scan_from_stage)).to(device)


def inference_row(phase, scan_from_stage, size, device, bf16, repeats, limit) -> dict:
    name, h, w = size
    model = build_model(phase, scan_from_stage, device).eval()
    flow_scale = 0.25 if name == "4k" and model.config.use_flow else 1.0
    g = torch.Generator().manual_seed(0)
    img0 = torch.rand(1, 3, h, w, generator=g).to(device)
    img1 = torch.rand(1, 3, h, w, generator=g).to(device)

    @torch.no_grad()
    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(img0, img1, 0.5, flow_scale=flow_scale)

    row = {
        "kind": "inference",
        "phase": phase,
        "scan_from_stage": scan_from_stage,
        "size": name,
        "height": h,
        "width": w,
        "flow_scale": flow_scale,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    result = measure(run, device, {"img0": img0, "img1": img1}, repeats, limit)
    if "seconds" in result:
        result.update(interpolated_frames_per_s=1 / result["seconds"], output_frames_per_s_2x=2 / result["seconds"])
    return {**row, **result}


def training_row(phase, scan_from_stage, crop, batch, device, bf16, limit) -> dict:
    model = build_model(phase, scan_from_stage, device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the perceptual term is off: no VGG weights here
        loss_fn = CompositeLoss(phase, lap_levels=min(5, crop.bit_length() - 3)).to(device)
    g = torch.Generator().manual_seed(1)
    data = {k: torch.rand(batch, 3, crop, crop, generator=g).to(device) for k in ("img0", "img1", "gt")}

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model.predict(data["img0"], data["img1"], 0.5)
        total, _ = loss_fn(out.frame.float(), data["gt"], out.flow.float() if loss_fn.uses_flow else None)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    row = {"kind": "training", "phase": phase, "scan_from_stage": scan_from_stage, "crop": crop, "batch": batch}
    return {**row, **measure(step, device, data, repeats=1, limit=limit)}


def plan(args, sizes) -> list[tuple]:
    """Measurements, most important first: phase 2 (every size, the first one first; the fast backbone
    before the seed's), then training memory, then the other phases."""
    backbones = list(dict.fromkeys([args.fast_scan_from_stage, 0]))
    phases = [int(p) for p in args.phases.split(",")]
    ordered = sorted(phases, key=lambda p: p != 2)

    def inference(phase):
        return [("inference", phase, s, size) for size in sizes for s in backbones]

    training = [("training", p, s, None) for p in sorted(phases) for s in backbones]
    return inference(ordered[0]) + training + [job for p in ordered[1:] for job in inference(p)]


def summary(rows: list[dict]) -> str:
    lines = [f"{'kind':<10}{'phase':>6}{'scan@':>6}{'size':>10}{'ms':>10}{'out fps 2x':>12}{'peak GB':>10}  note"]
    for r in rows:
        size = r.get("size") or f"{r.get('crop')}b{r.get('batch')}"
        ms = f"{1000 * r['seconds']:.1f}" if "seconds" in r else "-"
        fps = f"{r['output_frames_per_s_2x']:.1f}" if "output_frames_per_s_2x" in r else "-"
        peak = f"{r['peak_bytes'] / 1e9:.2f}" if "peak_bytes" in r else "-"
        lines.append(
            f"{r['kind']:<10}{r['phase']:>6}{r['scan_from_stage']:>6}{size:>10}{ms:>10}{fps:>12}{peak:>10}  "
            f"{r.get('error', '')}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="1080p,720p,4k", help="comma-separated 720p/1080p/4k or HxW, first first")
    parser.add_argument("--phases", default="2,1", help="comma-separated phases (3 has phase 2's model)")
    parser.add_argument("--fast-scan-from-stage", type=int, default=2, help="the second backbone measured")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    parser.add_argument("--train-crop", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--limit", type=float, default=25.0, help="seconds allowed to one measurement")
    parser.add_argument("--budget", type=float, default=200.0, help="seconds allowed to the whole run")
    parser.add_argument("--output", default=None, help="result file name (default interpolation_<device>.json)")
    args = parser.parse_args()
    started = time.perf_counter()
    device = torch.device(args.device)
    bf16 = device.type == "cuda" if args.bf16 is None else args.bf16
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    ssd = resolve("ssd_scan", "auto", device)
    header = {
        **describe_device(device),
        "bf16": bf16,
        "ssd_scan_backend": f"{ssd.__module__}.{ssd.__qualname__}",
        "model": "HybridVFI default config, random weights; scan_from_stage as given per row",
        "limit_s": args.limit,
        "budget_s": args.budget,
        "goals": GOALS,
    }
    print({k: header[k] for k in ("device", "torch", "bf16", "ssd_scan_backend")}, flush=True)
    name = args.output or f"interpolation_{device.type}.json"
    rows = []
    for kind, phase, scan_from_stage, size in plan(args, sizes):
        left = args.budget - (time.perf_counter() - started)
        base = {"kind": kind, "phase": phase, "scan_from_stage": scan_from_stage}
        if kind == "inference":
            base.update(size=size[0], height=size[1], width=size[2])
        else:
            base.update(crop=args.train_crop, batch=args.train_batch)
        if left < 5:
            row = {**base, "error": "skipped: run budget spent"}
        else:
            limit = min(args.limit, left)
            try:
                if kind == "inference":
                    row = inference_row(phase, scan_from_stage, size, device, bf16, args.repeats, limit)
                else:
                    row = training_row(phase, scan_from_stage, args.train_crop, args.train_batch, device, bf16, limit)
            except Exception as e:  # one failure must not lose the other measurements
                row = {**base, "error": f"{type(e).__name__}: {e}"[:300]}
        print(row, flush=True)
        rows.append(row)
        path = write_result(
            name,
            {
                **header,
                "elapsed_s": time.perf_counter() - started,
                "inference": [r for r in rows if r["kind"] == "inference"],
                "training": [r for r in rows if r["kind"] == "training"],
            },
        )
    print(summary(rows), flush=True)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
