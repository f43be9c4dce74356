"""VLM² overhead: time and memory of the spatial fusion + dual memory as a share of the full forward.

Builds one LLaVA-OneVision architecture with random weights (no download) and wraps it twice: with the
VLM² modules (fusion + memory, the paper's L_w=8, L_e=32) and with both switched off (the transformers
model bit for bit). On a ``frames``-frame video prompt it measures, each part guarded so one failure keeps
the others:

- ``forward``: wall time and peak memory of the full forward (vision tower, [fusion, memory], projector
  and pooling, LLM, logits) with the modules off and on; ``time_overhead = (t_on − t_off) / t_off``;
- ``modules``: the fusion and the memory alone on the vision features (time, peak memory, share of the
  full forward), and the vision tower alone for scale;
- ``modules.dual_memory_aten_ops_per_frame``: the aten ops the memory dispatches per frame (each is at least
  one kernel launch on a GPU);
- ``train_step`` (``--train``): forward + backward with the memory, fusion and projector trainable vs the
  projector alone trainable;
- ``memory_profile`` (``--profile``): the memory's ops with the most self time (device time on CUDA) in one
  ``forward_video``, also printed as a table;
- ``flops``: forward FLOPs per component, counted on the meta device.

The video tokens follow LLaVA-OneVision's video path: SigLIP's ``(image_size / patch_size)²`` patches per
frame, bilinear 2x pooling to ``ceil(side / 2)²``, one newline token per video (384 px, patch 14: 27² =
729 patches → 196 tokens per frame; 32 frames → 6,273 video tokens). The script checks that count
against the tokens the model produces.

Random weights are made on the device in the target dtype without transformers' initialisation (filled
with ``normal_(0, 0.02)``, norms with 1, biases with 0), so a 7B model is ready in seconds.

Presets: ``7b`` (SigLIP-so400m 384/14 + Qwen2-7B, 32 frames; the reference on an H100 in bf16),
``small`` (vision width 1152, few layers, a small LLM; CPU) and ``tiny`` (a few seconds on a CPU, to
check that the script runs). Goal: at most 5% time overhead for ``7b`` on an H100.

    python benchmarks/vlm.py --preset tiny --device cpu
    python benchmarks/vlm.py --preset 7b --device cuda --dtype bfloat16 --train --profile
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
import traceback

import torch
import transformers
from common import OpCounter, describe_device, measure_peak_bytes, measure_time, write_result
from torch.utils.flop_counter import FlopCounterMode

from videostate.vlm import SpatialFeatures, VLM2Config, VLM2ForConditionalGeneration
from videostate.vlm.inputs import video_token_count

PRESETS = {
    "7b": {
        "vision": dict(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=26,
            num_attention_heads=16,
            image_size=384,
            patch_size=14,
        ),
        "text": dict(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=32768,
        ),
        "frames": 32,
        "points": 432,
        "geom_dim": 768,
        "vlm2_heads": {},
    },
    "small": {
        "vision": dict(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=2,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        ),
        "text": dict(
            vocab_size=32000,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=4,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
        ),
        "frames": 8,
        "points": 224,
        "geom_dim": 768,
        "vlm2_heads": {},
    },
    "tiny": {
        "vision": dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=56,
            patch_size=14,
        ),
        "text": dict(
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
        ),
        "frames": 4,
        "points": 56,
        "geom_dim": 48,
        "vlm2_heads": dict(memory_num_heads=4, fusion_num_heads=4, alignment_num_heads=4),
    },
}
PROMPT_TOKENS = 64


def log(message: str) -> None:
    print(f"[vlm bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def llava_config(preset: dict):
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    return LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**preset["vision"]),
        text_config=Qwen2Config(**preset["text"]),
        image_token_index=preset["text"]["vocab_size"] - 2,
        video_token_index=preset["text"]["vocab_size"] - 1,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )


@torch.no_grad()
def fill_random_(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights in place: ``normal_(0, 0.02)`` for matrices and embeddings, 1 for norm weights, 0 for
    biases (what transformers' initialisation gives, without its per-module passes)."""
    torch.manual_seed(seed)
    for module in model.modules():
        norm = isinstance(module, torch.nn.LayerNorm) or "RMSNorm" in type(module).__name__
        for name, p in module.named_parameters(recurse=False):
            if norm and name == "weight":
                p.fill_(1.0)
            elif name == "bias":
                p.zero_()
            else:
                p.normal_(0.0, 0.02)


def build_base(preset: dict, device, dtype):
    """The LLaVA-OneVision model with random weights, created on ``device`` in ``dtype``."""
    from transformers import LlavaOnevisionForConditionalGeneration

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise normally (slower, same kind of weights)
        no_init_weights = contextlib.nullcontext
    with torch.device(device), no_init_weights():
        base = LlavaOnevisionForConditionalGeneration._from_config(llava_config(preset), dtype=dtype)
    if torch.device(device).type != "meta":
        fill_random_(base)
    return base.eval()


def vlm2_config(preset: dict, on: bool) -> VLM2Config:
    """The paper's setting (L_w=8, L_e=32, CUT3R's 768-d tokens), dropout off for inference."""
    return VLM2Config(
        use_dual_memory=on,
        use_spatial_fusion=on,
        memory_dropout=0.0,
        fusion_dropout=0.0,
        memory_feature_dim=preset["vision"]["hidden_size"],
        spatial_feature_dim=preset["geom_dim"],
        **preset["vlm2_heads"],
    )


def wrap(base, preset: dict, on: bool, device) -> VLM2ForConditionalGeneration:
    torch.manual_seed(1)
    model = VLM2ForConditionalGeneration(base, vlm2_config(preset, on))
    model.vlm2_modules().to(device)
    return model.eval()


def inputs(preset: dict, device, dtype) -> dict:
    frames, size = preset["frames"], preset["vision"]["image_size"]
    side = size // preset["vision"]["patch_size"]
    g = torch.Generator().manual_seed(0)
    n_video = video_token_count(llava_config(preset), frames)
    text = torch.randint(0, min(1000, preset["text"]["vocab_size"] - 2), (1, PROMPT_TOKENS), generator=g)
    video_token = preset["text"]["vocab_size"] - 1
    ids = torch.cat([text[:, :8], torch.full((1, n_video), video_token), text[:, 8:]], dim=1)
    geom = preset["geom_dim"]
    spatial = SpatialFeatures(
        camera_tokens=torch.randn(1, frames, 1, geom, generator=g),
        patch_tokens=torch.randn(1, frames, side * side, geom, generator=g),
        points=torch.randn(1, frames, preset["points"], preset["points"], 3, generator=g),
    )
    return {
        "input_ids": ids.to(device),
        "pixel_values_videos": torch.randn(1, frames, 3, size, size, generator=g).to(device, dtype),
        "spatial_features": spatial.to(device=device, dtype=dtype),
    }


def fuse(model: VLM2ForConditionalGeneration, features: torch.Tensor, sf: SpatialFeatures) -> torch.Tensor:
    return model.spatial_fusion(
        features, sf.patch_tokens.flatten(0, 1), sf.camera_tokens.flatten(0, 1), sf.points.flatten(0, 1)
    )


def count_flops(preset: dict) -> dict:
    """Forward FLOPs per component of the preset, counted on the meta device."""
    model = wrap(build_base(preset, "meta", torch.bfloat16), preset, True, "meta")
    batch = inputs(preset, "cpu", torch.bfloat16)
    frames = preset["frames"]
    pixels = batch["pixel_values_videos"].to("meta")
    spatial = batch["spatial_features"].to(device="meta")
    out = {}

    def counted(fn):
        with FlopCounterMode(display=False) as counter:
            result = fn()
        return result, counter.get_total_flops()

    with torch.no_grad():
        features, out["vision_tower"] = counted(lambda: model.vision_features(pixels))
        fused, out["spatial_fusion"] = counted(lambda: fuse(model, features, spatial))
        _, out["dual_memory"] = counted(lambda: model.dual_memory.forward_video(fused.unflatten(0, (1, frames))))
        _, out["projector"] = counted(lambda: model.project(fused, 1))
        tokens = batch["input_ids"].shape[1]
        embeds = torch.empty(1, tokens, preset["text"]["hidden_size"], device="meta", dtype=torch.bfloat16)
        hidden, llm = counted(lambda: model.base.model.language_model(inputs_embeds=embeds).last_hidden_state)
        _, head = counted(lambda: model.base.lm_head(hidden))
        out["language_model"] = llm + head
    total = sum(out.values())
    share = (out["spatial_fusion"] + out["dual_memory"]) / total
    return {"gflops": {k: v / 1e9 for k, v in out.items()}, "vlm2_share_of_forward": share, "tokens": tokens}


def guarded(results: dict, errors: dict, name: str, fn, device) -> None:
    """Run one part; on failure record the error and go on (memory freed)."""
    log(f"{name} ...")
    start = time.perf_counter()
    try:
        results[name] = fn()
        log(f"{name} done in {time.perf_counter() - start:.1f} s: {results[name]}")
    except Exception as e:  # one failed part must not lose the others
        errors[name] = f"{type(e).__name__}: {e}"
        log(f"{name} FAILED: {errors[name]}")
        traceback.print_exc()
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def forward_part(model, batch: dict, on: bool, device, repeats: int) -> dict:
    call = {k: v for k, v in batch.items() if on or k != "spatial_features"}

    def forward():
        with torch.no_grad():
            return model(**call).logits

    return {
        "seconds": measure_time(forward, device, repeats),
        "peak_bytes": measure_peak_bytes(forward, device, call),
    }


def modules_part(model, batch: dict, preset: dict, device, repeats: int) -> dict:
    pixels, sf, frames = batch["pixel_values_videos"], batch["spatial_features"], preset["frames"]
    with torch.no_grad():
        features = model.vision_features(pixels)
        fused = fuse(model, features, sf)

    def tower():
        with torch.no_grad():
            return model.vision_features(pixels)

    def fusion():
        with torch.no_grad():
            return fuse(model, features, sf)

    def memory():
        with torch.no_grad():
            return model.dual_memory.forward_video(fused.unflatten(0, (1, frames)))[0]

    def both():
        with torch.no_grad():
            return model.dual_memory.forward_video(fuse(model, features, sf).unflatten(0, (1, frames)))[0]

    out = {"tokens_per_frame": features.shape[1], "feature_dim": features.shape[2]}
    for name, fn in (("vision_tower", tower), ("spatial_fusion", fusion), ("dual_memory", memory), ("vlm2", both)):
        out[f"{name}_s"] = measure_time(fn, device, repeats)
        out[f"{name}_peak_bytes"] = measure_peak_bytes(fn, device, {"features": features, "fused": fused})
    counter = OpCounter()
    with counter:
        memory()
    out["dual_memory_aten_ops_per_frame"] = counter.count / frames
    return out


def profile_part(model, batch: dict, preset: dict, device, rows: int = 20) -> dict:
    """The ops of one ``dual_memory.forward_video`` with the most self time (device time on CUDA, else CPU
    time), printed as a table."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        fused = fuse(model, model.vision_features(batch["pixel_values_videos"]), batch["spatial_features"])
    per_video = fused.unflatten(0, (1, preset["frames"]))

    def memory():
        with torch.no_grad():
            model.dual_memory.forward_video(per_video)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    memory()  # warm-up
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        memory()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    print(prof.key_averages().table(sort_by=key, row_limit=rows), flush=True)
    return {
        "sort_by": key,
        "total_self_ms": sum(getattr(e, key) for e in events) / 1e3,
        "top": [{"op": e.key, "calls": e.count, "self_ms": getattr(e, key) / 1e3} for e in events[:rows]],
    }


def train_part(model, batch: dict, on: bool, device, repeats: int) -> dict:
    """Forward + backward of the language-model loss; trainable: projector (+ memory and fusion when on)."""
    model.config.mm_tunable_parts = "mm_mlp_adapter,dual_memory,fusion_block" if on else "mm_mlp_adapter"
    trainable = model.apply_tunable_parts()
    call = {k: v for k, v in batch.items() if on or k != "spatial_features"}
    call["labels"] = batch["input_ids"]

    def step():
        model.zero_grad(set_to_none=True)
        loss = model(**call).loss
        loss.backward()
        return loss.detach()

    try:
        return {
            "seconds": measure_time(step, device, repeats),
            "peak_bytes": measure_peak_bytes(step, device, call),
            "trainable_parameters": sum(p.numel() for n, p in model.named_parameters() if n in trainable),
        }
    finally:
        model.zero_grad(set_to_none=True)
        model.requires_grad_(False)


def summary(measured: dict) -> str:
    def ms(part, key="seconds"):
        value = measured.get(part, {}).get(key) if isinstance(measured.get(part), dict) else None
        return "-" if value is None else f"{1000 * value:.1f}"

    def gib(part, key="peak_bytes"):
        value = measured.get(part, {}).get(key) if isinstance(measured.get(part), dict) else None
        return "-" if value is None else f"{value / 2**30:.2f}"

    rows = [
        ("full forward, modules off", ms("forward_off"), gib("forward_off")),
        ("full forward, modules on", ms("forward_on"), gib("forward_on")),
        ("vision tower alone", ms("modules", "vision_tower_s"), gib("modules", "vision_tower_peak_bytes")),
        ("spatial fusion alone", ms("modules", "spatial_fusion_s"), gib("modules", "spatial_fusion_peak_bytes")),
        ("dual memory alone", ms("modules", "dual_memory_s"), gib("modules", "dual_memory_peak_bytes")),
        ("fusion + memory", ms("modules", "vlm2_s"), gib("modules", "vlm2_peak_bytes")),
        ("train step, projector", ms("train_off"), gib("train_off")),
        ("train step, + memory + fusion", ms("train_on"), gib("train_on")),
    ]
    lines = [f"{'part':34s} {'ms':>10s} {'peak GiB':>10s}"] + [f"{a:34s} {b:>10s} {c:>10s}" for a, b, c in rows]
    for key in ("time_overhead", "modules_share_of_forward", "train_time_overhead"):
        if key in measured:
            lines.append(f"{key:34s} {100 * measured[key]:>9.2f}%")
    ops = measured.get("modules", {}).get("dual_memory_aten_ops_per_frame")
    if ops is not None:
        lines.append(f"{'dual memory aten ops per frame':34s} {ops:>10.1f}")
    return "\n".join(lines)


def measure(preset: dict, args, device, dtype, measured: dict, errors: dict, save) -> None:
    """Build the model once, then time and measure each part into ``measured`` (saved after each)."""
    log(f"building {args.preset} LLaVA-OneVision on {device} in {args.dtype}")
    start = time.perf_counter()
    base = build_base(preset, device, dtype)
    measured["build_s"] = time.perf_counter() - start
    measured["base_parameters"] = sum(p.numel() for p in base.parameters())
    off, on = wrap(base, preset, False, device), wrap(base, preset, True, device)
    measured["vlm2_parameters"] = sum(p.numel() for p in on.vlm2_modules().parameters())
    log(f"built in {measured['build_s']:.1f} s: {measured['base_parameters'] / 1e9:.2f} B base parameters")
    batch = inputs(preset, device, dtype)
    expected = video_token_count(base.config, preset["frames"])
    with torch.no_grad():
        produced = off.encode_video(batch["pixel_values_videos"]).shape[1]
    if produced != expected:
        raise RuntimeError(f"the model produced {produced} video tokens; the placeholders expect {expected}")
    measured["video_tokens"], measured["sequence_length"] = produced, batch["input_ids"].shape[1]
    log(f"{preset['frames']} frames -> {produced} video tokens; sequence of {measured['sequence_length']} tokens")
    save()

    guarded(measured, errors, "forward_off", lambda: forward_part(off, batch, False, device, args.repeats), device)
    guarded(measured, errors, "forward_on", lambda: forward_part(on, batch, True, device, args.repeats), device)
    if "forward_on" in measured and "forward_off" in measured:
        t_on, t_off = measured["forward_on"]["seconds"], measured["forward_off"]["seconds"]
        measured["time_overhead"] = (t_on - t_off) / t_off
    save()
    guarded(measured, errors, "modules", lambda: modules_part(on, batch, preset, device, args.repeats), device)
    if "modules" in measured and "forward_on" in measured:
        measured["modules_share_of_forward"] = measured["modules"]["vlm2_s"] / measured["forward_on"]["seconds"]
    save()
    if args.train:
        guarded(measured, errors, "train_off", lambda: train_part(off, batch, False, device, 2), device)
        guarded(measured, errors, "train_on", lambda: train_part(on, batch, True, device, 2), device)
        if "train_on" in measured and "train_off" in measured:
            t_on, t_off = measured["train_on"]["seconds"], measured["train_off"]["seconds"]
            measured["train_time_overhead"] = (t_on - t_off) / t_off
        save()
    if args.profile:
        guarded(measured, errors, "memory_profile", lambda: profile_part(on, batch, preset, device), device)
        save()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train", action="store_true", help="also time a forward + backward training step")
    parser.add_argument("--profile", action="store_true", help="also profile the dual memory's ops")
    parser.add_argument("--output", default=None, help="result file name in benchmarks/results/")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    preset = PRESETS[args.preset]
    name = args.output or f"vlm_{args.preset}_{device.type}.json"
    measured, errors = {}, {}
    payload = {
        **describe_device(device),
        "preset": args.preset,
        "transformers": transformers.__version__,
        "vlm2": dataclasses.asdict(vlm2_config(preset, True)),
        "vision": preset["vision"],
        "text": preset["text"],
        "frames": preset["frames"],
        "dtype": args.dtype,
        "measured": measured,
        "errors": errors,
        "goal": "time_overhead <= 0.05 for preset 7b on an H100 in bf16",
    }

    def save():
        return write_result(name, payload)

    try:
        measure(preset, args, device, dtype, measured, errors, save)
    except Exception as e:  # building or the token check failed: still count FLOPs and write what there is
        errors["build"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    payload["flops"] = {}
    guarded(payload["flops"], errors, args.preset, lambda: count_flops(preset), torch.device("cpu"))
    path = save()
    print(summary(measured), flush=True)
    if args.preset in payload["flops"]:
        share = payload["flops"][args.preset]["vlm2_share_of_forward"]
        print(f"{'FLOP share of fusion + memory':34s} {100 * share:>9.2f}%")
    print(f"errors: {errors or 'none'}")
    print(path, flush=True)


if __name__ == "__main__":
    main()
