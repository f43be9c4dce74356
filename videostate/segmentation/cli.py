"""``videostate segment IN -o overlay.mp4 --model MODEL [--json results.json]``.

Streams the video frame by frame through VidEoMT (constant memory) and draws each confident track in its
own colour (the query index is the track id, so colours stay with objects). With ``--json`` a second
streaming pass writes YouTube-VIS results: the ``--top-k`` (track, class) pairs by frame-averaged score over
the whole video, with one RLE mask per frame.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import rle
from .inference import overlay, stream_video, track_colors
from .postprocess import OnlineTracks, resize_masks, video_class_probs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="video file or folder of numbered frames")
    parser.add_argument(
        "-o", "--output", required=True, help="overlay video to write (.mp4); keeps the input's fps and audio"
    )
    parser.add_argument(
        "--model", required=True, help="a folder saved with save_pretrained (config.json + model.safetensors)"
    )
    parser.add_argument("--json", help="also write YouTube-VIS results (RLE masks) for the whole video here")
    parser.add_argument("--threshold", type=float, default=0.5, help="running class score to draw a track")
    parser.add_argument("--top-k", type=int, default=10, help="tracks kept in --json")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    parser.add_argument("--fps", type=float, help="frame rate of an image folder")
    parser.add_argument("--video-id", type=int, default=1, help="video_id written in --json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.cli import describe
    from ..data.video import VideoReader, VideoWriter
    from .model import VideomtForUniversalSegmentation

    model = VideomtForUniversalSegmentation.from_pretrained(args.model).to(args.device, DTYPES[args.dtype]).eval()
    reader = VideoReader(args.input, format="tensor", fps=args.fps)
    size = (reader.height, reader.width)
    colors = track_colors(model.config.num_queries)
    tracker = OnlineTracks(threshold=args.threshold, output_size=size)
    audio_from = args.input if describe(args.input)["audio"] is not None else None
    with VideoWriter(args.output, reader.frame_rate, audio_from=audio_from) as writer:
        frames = tqdm(reader, total=len(reader), desc="segment", unit="frame")
        for frame, outputs in stream_video(model, frames, args.device):
            track_map, _ = tracker.update(outputs.class_queries_logits[0, 0], outputs.masks_queries_logits[0, 0])
            rgb = (frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            writer.write(overlay(rgb, track_map.cpu().numpy(), colors, args.alpha))
    print(f"wrote {args.output} ({len(reader)} frames at {reader.fps:g} fps)")
    if args.json:
        results = _ytvis_tracks(model, reader, tracker, args)
        Path(args.json).write_text(json.dumps(results))
        print(f"wrote {args.json} ({len(results)} tracks)")
    return 0


def _ytvis_tracks(model, reader, tracker: OnlineTracks, args) -> list[dict]:
    """Top-k (query, class) pairs by the whole video's averaged logits; their masks from a second pass,
    RLE-encoded frame by frame (memory stays bounded)."""
    probs = video_class_probs((tracker.logit_sum / tracker.frames)[None])[:, :-1]
    k = min(args.top_k, probs.numel())
    scores, flat = probs.flatten().topk(k)
    queries, labels = flat // probs.shape[1], flat % probs.shape[1]
    segmentations: list[list[dict]] = [[] for _ in range(k)]
    size = (reader.height, reader.width)
    frames = tqdm(reader, total=len(reader), desc="tracks", unit="frame")
    for _, outputs in stream_video(model, frames, args.device):
        masks = (resize_masks(outputs.masks_queries_logits[0, 0, queries].float(), size) > 0).cpu().numpy()
        for i in range(k):
            segmentations[i].append(rle.encode(masks[i]))
    return [
        {"video_id": args.video_id, "category_id": int(c) + 1, "score": float(s), "segmentations": segs}
        for c, s, segs in zip(labels.tolist(), scores.tolist(), segmentations, strict=True)
    ]
