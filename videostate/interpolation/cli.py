"""Commands of the interpolation system, for the ``videostate`` command registry.

- ``videostate interpolate IN -o OUT.mp4 --model DIR --factor 2`` (:func:`add_interpolate_arguments`)
- ``videostate vfi-train --phase 1 --data_path vimeo_triplet ...`` (:func:`add_train_arguments`), the
  seed's training flags
- ``videostate vfi-bench vimeo90k PATH --model DIR`` (:func:`add_bench_arguments`)
"""

from __future__ import annotations

import argparse
import json


def add_interpolate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Raise a video's frame rate with a HybridVFI model; keeps the audio."
    parser.add_argument("input", help="video file or folder of numbered frames")
    parser.add_argument("-o", "--output", required=True, help="output video (.mp4, .mkv, .mov)")
    parser.add_argument("--model", required=True, help="model folder written by HybridVFI.save_pretrained")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--factor", type=int, choices=(2, 4, 8), help="multiply the frame rate (default 2)")
    rate.add_argument("--fps", type=float, help="target frame rate instead of --factor")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="estimate flow at this fraction of the size (0.5 for 2K, 0.25 for 4K)"
    )
    parser.add_argument(
        "--scene-threshold", type=float, default=0.2, help="thumbnail SSIM below which two frames are a scene cut"
    )
    parser.add_argument("--bf16", action="store_true", help="run the model under bfloat16 autocast")
    parser.add_argument("--input-fps", type=float, default=None, help="frame rate of a folder of frames (default 30)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run_interpolate)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_interpolate(args: argparse.Namespace) -> int:
    from .model import HybridVFI
    from .video import interpolate_video

    model = HybridVFI.from_pretrained(args.model, map_location=args.device)
    summary = interpolate_video(
        model,
        args.input,
        args.output,
        factor=None if args.fps is not None else (args.factor or 2),
        fps=args.fps,
        scene_threshold=args.scene_threshold,
        flow_scale=args.scale,
        bf16=args.bf16,
        input_fps=args.input_fps,
        progress=not args.no_progress,
    )
    print(json.dumps(summary))
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Train HybridVFI with the seed's flags (epochs, evaluation, models saved by name)."
    p = parser.add_argument
    p("--phase", type=int, default=1, choices=(1, 2, 3), help="training phase")
    p("--batch_size", type=int, default=8, help="batch size per GPU")
    p("--lr", type=float, default=2e-4, help="base learning rate")
    p("--epochs", type=int, default=300, help="total epochs")
    p("--data_path", required=True, help="Vimeo-90K vimeo_triplet folder")
    p("--x4k_path", default=None, help="X4K1000FPS training frames (phase 3)")
    p("--mixed_ratio", default="2:1", help="Vimeo:X4K sampling ratio")
    p("--crop_size", type=int, default=256, help="training crop size")
    p("--resume", default=None, help="name of a saved model in --ckpt_dir to start from")
    p("--freeze_backbone", type=int, default=0, help="freeze the backbone for N epochs")
    p("--exp_name", default=None, help="experiment name (models, checkpoints and logs)")
    p("--backbone_mode", default="hybrid", choices=("hybrid", "mamba2_only", "gated_attn_only"))
    p("--use_mhc", action="store_true", help="manifold-constrained hyper-connections")
    p("--use_ecab", action=argparse.BooleanOptionalAction, default=True, help="ECA fusion (--no-use_ecab: SE)")
    p("--curriculum", action="store_true", help="curriculum over the X4K frame span (phase 3)")
    p("--curriculum_T", type=int, default=50, help="curriculum length in epochs")
    p("--dry_run", action="store_true", help="one short epoch and a quick evaluation")
    p("--num_workers", type=int, default=8, help="DataLoader workers")
    p("--grad_accum", type=int, default=1, help="gradient accumulation steps")
    p("--eval_interval", type=int, default=3, help="evaluate every N epochs")
    p("--vgg_weights", default=None, help="torchvision VGG-19 weights file for the perceptual loss")
    p("--init_mamba_from_attention", action="store_true", help="MaTVLM initialisation of the Mamba-2 branches")
    p("--ckpt_dir", default="ckpt", help="folder of saved models")
    p("--log_dir", default="log", help="folder of TensorBoard logs and trainer checkpoints")
    p("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p("--device", default="auto")
    p("--seed", type=int, default=0)
    parser.set_defaults(func=run_train)


def train_config_from_args(args: argparse.Namespace):
    """The :class:`~.train.VFITrainConfig` of parsed ``vfi-train`` arguments."""
    from .train import VFITrainConfig

    return VFITrainConfig(**{k: v for k, v in vars(args).items() if k not in ("func", "command")})


def run_train(args: argparse.Namespace) -> int:
    import logging

    from .train import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train(train_config_from_args(args))
    return 0


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from .benchmarks import BENCHMARKS

    parser.epilog = "Evaluate a model on a standard VFI test set, with frame averaging beside it."
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    parser.add_argument("path", help="the test set's folder in its official layout")
    parser.add_argument("--model", required=True, help="model folder written by HybridVFI.save_pretrained")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from .benchmarks import model_interpolator, run_benchmark
    from .model import HybridVFI

    model = HybridVFI.from_pretrained(args.model, map_location=args.device)
    rows = run_benchmark(args.benchmark, args.path, model_interpolator(model, args.device, args.bf16), progress=True)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            metrics = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float))
            print(f"{row['benchmark']:<22} {row['method']:<16} {metrics}  samples {row['samples']}")
    return 0
