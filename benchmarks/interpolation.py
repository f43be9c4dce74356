"""HybridVFI speed and memory: interpolation throughput per phase and size, and training memory.

For each phase and frame size, one random-weight model interpolates one frame pair (batch 1) and
the script records the best time of ``--repeats`` runs, the frames per second that gives for 2x
up-conversion (each model call yields one new frame beside one input frame: 2 output frames), and
the peak memory the call adds. 4K runs the flow estimator at a quarter of the size (``flow_scale
0.25``, the X-TEST 4K protocol); the other sizes at full size. Training memory is one forward and
backward pass of the phase's model and CompositeLoss (perceptual term off) at ``--train-crop``
crops, batch ``--train-batch`` (the seed reports about 20.6 GB for phase 1 at 256x256, batch 4).

GPU (the reference run; bf16 autocast):   python benchmarks/interpolation.py
CPU (small sizes; the reference scan):    python benchmarks/interpolation.py --device cpu --sizes 64x64,128x128 \\
                                              --train-crop 64 --repeats 1
"""

from __future__ import annotations

import argparse
import warnings

import torch
from common import describe_device, measure_peak_bytes, measure_time, write_result

from videostate.interpolation import CompositeLoss, HybridVFI, HybridVFIConfig

NAMED_SIZES = {"720p": (720, 1280), "1080p": (1080, 1920), "4k": (2160, 3840)}


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


def inference_row(model, phase, size, device, bf16, repeats) -> dict:
    name, h, w = size
    flow_scale = 0.25 if name == "4k" and model.config.use_flow else 1.0
    g = torch.Generator().manual_seed(0)
    img0 = torch.rand(1, 3, h, w, generator=g).to(device)
    img1 = torch.rand(1, 3, h, w, generator=g).to(device)

    @torch.no_grad()
    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(img0, img1, 0.5, flow_scale=flow_scale)

    row = {"phase": phase, "size": name, "height": h, "width": w, "flow_scale": flow_scale}
    try:
        seconds = measure_time(run, device, repeats)
        row.update(
            seconds_per_frame=seconds,
            interpolated_frames_per_s=1 / seconds,
            output_frames_per_s_2x=2 / seconds,
            peak_bytes=measure_peak_bytes(run, device, {"img0": img0, "img1": img1}),
        )
    except (RuntimeError, torch.OutOfMemoryError) as e:
        if not is_oom(e):
            raise
        row["error"] = "out of memory"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def training_row(phase, crop, batch, device, bf16) -> dict:
    torch.manual_seed(0)
    model = HybridVFI(HybridVFIConfig(phase=phase)).to(device).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the perceptual term is off: no VGG weights here
        loss_fn = CompositeLoss(phase, lap_levels=min(5, crop.bit_length() - 3)).to(device)
    g = torch.Generator().manual_seed(1)
    batch_data = {k: torch.rand(batch, 3, crop, crop, generator=g).to(device) for k in ("img0", "img1", "gt")}

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model.predict(batch_data["img0"], batch_data["img1"], 0.5)
        total, _ = loss_fn(out.frame.float(), batch_data["gt"], out.flow.float() if loss_fn.uses_flow else None)
        total.backward()
        model.zero_grad(set_to_none=True)

    row = {"phase": phase, "crop": crop, "batch": batch}
    try:
        row["peak_bytes"] = measure_peak_bytes(step, device, batch_data)
        row["seconds_per_step"] = measure_time(step, device, repeats=1)
    except (RuntimeError, torch.OutOfMemoryError) as e:
        if not is_oom(e):
            raise
        row["error"] = "out of memory"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="720p,1080p,4k", help="comma-separated 720p/1080p/4k or HxW")
    parser.add_argument("--phases", default="1,2", help="comma-separated phases (3 has phase 2's model)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    parser.add_argument("--train-crop", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--output", default=None, help="result file name (default interpolation_<device>.json)")
    args = parser.parse_args()
    device = torch.device(args.device)
    bf16 = device.type == "cuda" if args.bf16 is None else args.bf16
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    phases = [int(p) for p in args.phases.split(",")]
    inference, training = [], []
    for phase in phases:
        torch.manual_seed(0)
        model = HybridVFI(HybridVFIConfig(phase=phase)).to(device).eval()
        params = sum(p.numel() for p in model.parameters())
        for size in sizes:
            row = {"parameters": params, **inference_row(model, phase, size, device, bf16, args.repeats)}
            print(row, flush=True)
            inference.append(row)
        del model
        row = training_row(phase, args.train_crop, args.train_batch, device, bf16)
        print(row, flush=True)
        training.append(row)
    payload = {
        **describe_device(device),
        "bf16": bf16,
        "model": "HybridVFI default config, random weights",
        "inference": inference,
        "training": training,
        "goals": {
            "phase2_1080p_output_frames_per_s_2x": ">= 30 (H100)",
            "4k_peak_bytes": "< 40 GB",
            "phase1_training_256_batch4": "about 20.6 GB (seed, RTX 5090)",
        },
    }
    path = write_result(args.output or f"interpolation_{device.type}.json", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
