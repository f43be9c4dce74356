"""VLM² overhead: time and memory of the spatial fusion + dual memory as a share of the full forward.

Builds a LLaVA-OneVision architecture with random weights (no download), runs the full forward (vision
tower, fusion, memory, projector, LLM) on a ``frames``-frame video prompt, and the same model with the
VLM² modules switched off, and reports:

- ``measured``: wall time and peak memory of the full forward with and without the modules, the
  modules' own time on the vision features, and the overhead ``(t_vlm2 − t_base) / t_base``;
- ``flops``: forward FLOPs counted per component on the meta device (no memory, any size), for the
  7B-sized architecture as well, so the share can be read where it cannot be run.

Presets: ``7b`` (SigLIP-so400m 384/14 + Qwen2-7B, 32 frames, the reference on an H100 in bf16) and
``small`` (same vision width 1152, fewer layers and a small LLM, for a CPU). Goal: at most 5% time
overhead for ``7b`` on an H100.

    python benchmarks/vlm.py --preset small --device cpu
    python benchmarks/vlm.py --preset 7b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from common import describe_device, measure_peak_bytes, measure_time, write_result
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
    },
}
PROMPT_TOKENS = 64


def build(preset: dict, vlm2_on: bool, device, dtype) -> VLM2ForConditionalGeneration:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**preset["vision"]),
        text_config=Qwen2Config(**preset["text"]),
        image_token_index=preset["text"]["vocab_size"] - 2,
        video_token_index=preset["text"]["vocab_size"] - 1,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    with torch.device(device):
        base = LlavaOnevisionForConditionalGeneration(config).to(dtype)
    vlm2 = vlm2_config(preset, vlm2_on)
    return VLM2ForConditionalGeneration(base, vlm2).to(device).eval()


def vlm2_config(preset: dict, on: bool) -> VLM2Config:
    """The paper's setting (L_w=8, L_e=32, CUT3R's 768-d tokens), dropout off for inference."""
    return VLM2Config(
        use_dual_memory=on,
        use_spatial_fusion=on,
        memory_dropout=0.0,
        fusion_dropout=0.0,
        memory_feature_dim=preset["vision"]["hidden_size"],
    )


def inputs(preset: dict, device, dtype) -> dict:
    frames, size = preset["frames"], preset["vision"]["image_size"]
    side = size // preset["vision"]["patch_size"]
    g = torch.Generator().manual_seed(0)
    config = argparse.Namespace(
        model_type="llava_onevision",
        vision_config=argparse.Namespace(image_size=size, patch_size=preset["vision"]["patch_size"]),
    )
    n_video = video_token_count(config, frames)
    text = torch.randint(0, 1000, (1, PROMPT_TOKENS), generator=g)
    video_token = preset["text"]["vocab_size"] - 1
    ids = torch.cat([text[:, :8], torch.full((1, n_video), video_token), text[:, 8:]], dim=1)
    spatial = SpatialFeatures(
        camera_tokens=torch.randn(1, frames, 1, 768, generator=g),
        patch_tokens=torch.randn(1, frames, side * side, 768, generator=g),
        points=torch.randn(1, frames, preset["points"], preset["points"], 3, generator=g),
    )
    return {
        "input_ids": ids.to(device),
        "pixel_values_videos": torch.randn(1, frames, 3, size, size, generator=g).to(device, dtype),
        "spatial_features": spatial.to(device=device, dtype=dtype),
    }


def count_flops(preset: dict) -> dict:
    """Forward FLOPs per component of the preset, counted on the meta device."""
    model = build(preset, True, "meta", torch.bfloat16)
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
        fused, out["spatial_fusion"] = counted(
            lambda: model.spatial_fusion(
                features,
                spatial.patch_tokens.flatten(0, 1),
                spatial.camera_tokens.flatten(0, 1),
                spatial.points.flatten(0, 1),
            )
        )
        per_video = fused.unflatten(0, (1, frames))
        _, out["dual_memory"] = counted(lambda: model.dual_memory.forward_video(per_video))
        _, out["projector"] = counted(lambda: model.project(fused, 1))
        tokens = batch["input_ids"].shape[1]
        embeds = torch.empty(1, tokens, preset["text"]["hidden_size"], device="meta", dtype=torch.bfloat16)
        hidden, llm = counted(lambda: model.base.model.language_model(inputs_embeds=embeds).last_hidden_state)
        _, head = counted(lambda: model.base.lm_head(hidden))
        out["language_model"] = llm + head
    total = sum(out.values())
    share = (out["spatial_fusion"] + out["dual_memory"]) / total
    return {"gflops": {k: v / 1e9 for k, v in out.items()}, "vlm2_share_of_forward": share, "tokens": tokens}


def measure(preset: dict, device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    batch = inputs(preset, device, dtype)
    result = {}
    for name, on in (("base", False), ("vlm2", True)):
        torch.manual_seed(0)
        model = build(preset, on, device, dtype)
        call = {k: v for k, v in batch.items() if on or k != "spatial_features"}

        def forward(model=model, call=call):
            with torch.no_grad():
                return model(**call).logits

        result[f"{name}_forward_s"] = measure_time(forward, device, repeats)
        result[f"{name}_forward_peak_bytes"] = measure_peak_bytes(forward, device, call)
        if on:
            with torch.no_grad():
                features = model.vision_features(batch["pixel_values_videos"])
                sf = batch["spatial_features"]

            def modules(model=model, features=features, sf=sf):
                with torch.no_grad():
                    fused = model.spatial_fusion(
                        features,
                        sf.patch_tokens.flatten(0, 1),
                        sf.camera_tokens.flatten(0, 1),
                        sf.points.flatten(0, 1),
                    )
                    return model.dual_memory.forward_video(fused.unflatten(0, (1, preset["frames"])))[0]

            result["vlm2_modules_s"] = measure_time(modules, device, repeats)
            result["vlm2_modules_peak_bytes"] = measure_peak_bytes(modules, device, {"features": features})
        del model
    result["time_overhead"] = (result["vlm2_forward_s"] - result["base_forward_s"]) / result["base_forward_s"]
    result["modules_share_of_forward"] = result["vlm2_modules_s"] / result["vlm2_forward_s"]
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=None, help="result file name in benchmarks/results/")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    preset = PRESETS[args.preset]
    payload = {
        **describe_device(device),
        "preset": args.preset,
        "vlm2": dataclasses.asdict(vlm2_config(preset, True)),
        "vision": preset["vision"],
        "text": preset["text"],
        "frames": preset["frames"],
        "dtype": args.dtype,
        "measured": measure(preset, device, dtype, args.repeats),
        "flops": {name: count_flops(p) for name, p in PRESETS.items()},
        "goal": "time_overhead <= 0.05 for preset 7b on an H100 in bf16",
    }
    name = args.output or f"vlm_{args.preset}_{device.type}.json"
    print(write_result(name, payload))
    print({k: payload["measured"][k] for k in ("time_overhead", "modules_share_of_forward")})
    print({k: v["vlm2_share_of_forward"] for k, v in payload["flops"].items()})


if __name__ == "__main__":
    main()
