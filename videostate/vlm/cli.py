"""``videostate vlm``: evaluate a video LLM (with or without VLM²) on VSI-Bench / VSTI-Bench, score saved
answers, and encode a video with the memory streamed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .inputs import SIGLIP_MEAN, SIGLIP_STD


def add_vlm_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``vlm`` command's subcommands: ``eval`` and ``score``."""
    sub = parser.add_subparsers(dest="vlm_command", required=True)

    ev = sub.add_parser(
        "eval",
        help="answer and score VSI-Bench / VSTI-Bench questions with a local transformers video LLM",
        description="Samples frames uniformly from {videos}/{dataset}/{scene_name}.mp4, asks the model "
        "(greedy, 16 new tokens) and scores the answers as the official lmms-eval task does. Writes "
        "results.jsonl (per question) and scores.md (table) to --output.",
    )
    ev.add_argument("--base", required=True, help="folder of a transformers LLaVA-OneVision / NeXT-Video model")
    ev.add_argument("--vlm2", default=None, help="folder of saved VLM² modules (omit to run the base model alone)")
    ev.add_argument("--questions", required=True, help="benchmark questions: .json, .jsonl or .parquet")
    ev.add_argument("--videos", required=True, help="folder with {dataset}/{scene_name}.mp4")
    ev.add_argument("--spatial", default=None, help="folder with VLM-3R spatial features {dataset}/{scene_name}.pt")
    ev.add_argument("--benchmark", choices=["vsibench", "vstibench"], default="vsibench")
    ev.add_argument("--frames", type=int, default=32, help="frames sampled uniformly per video (default 32)")
    ev.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    ev.add_argument("--output", required=True, help="folder for results.jsonl and scores.md")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ev.add_argument("--image-mean", type=float, nargs=3, default=list(SIGLIP_MEAN), help="vision normalisation mean")
    ev.add_argument("--image-std", type=float, nargs=3, default=list(SIGLIP_STD), help="vision normalisation std")
    ev.set_defaults(func=run_eval)

    sc = sub.add_parser(
        "score",
        help="score saved answers (JSON lines with question_type, prediction, ground_truth)",
        description="Prints the per-task table and the overall score of a results.jsonl.",
    )
    sc.add_argument("results", help="JSON lines file of answered questions")
    sc.add_argument("--benchmark", choices=["vsibench", "vstibench"], default="vsibench")
    sc.set_defaults(func=run_score)


def load_answerer(args: argparse.Namespace):
    import torch
    from transformers import AutoTokenizer

    from .inputs import VideoPromptEncoder
    from .model import BASE_CLASSES, VLM2ForConditionalGeneration
    from .vsibench import TransformersVideoQA

    dtype = getattr(torch, args.dtype)
    if args.vlm2 is not None:
        model = VLM2ForConditionalGeneration.from_pretrained(args.base, args.vlm2, dtype=dtype)
        config = model.base.config
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(args.base)
        if config.model_type not in BASE_CLASSES:
            raise ValueError(f"{args.base}: model_type must be one of {sorted(BASE_CLASSES)}; got {config.model_type}")
        model = BASE_CLASSES[config.model_type].from_pretrained(args.base, dtype=dtype)
    model = model.to(args.device).eval()
    encoder = VideoPromptEncoder(AutoTokenizer.from_pretrained(args.base), config, args.image_mean, args.image_std)
    return TransformersVideoQA(model, encoder)


def run_eval(args: argparse.Namespace) -> int:
    from .vsibench import evaluate, format_table, load_questions

    if args.spatial is not None and args.vlm2 is None:
        raise SystemExit("--spatial needs --vlm2: the base model alone has no spatial fusion")
    scores = evaluate(
        load_questions(args.questions),
        load_answerer(args),
        args.videos,
        num_frames=args.frames,
        benchmark=args.benchmark,
        spatial_dir=args.spatial,
        output_dir=args.output,
        limit=args.limit,
        progress=True,
    )
    print(format_table(scores, args.benchmark))
    return 0


def run_score(args: argparse.Namespace) -> int:
    from .vsibench import format_table, score_vsibench, score_vstibench

    lines = Path(args.results).read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    scorer = score_vsibench if args.benchmark == "vsibench" else score_vstibench
    print(format_table(scorer(records), args.benchmark))
    return 0
