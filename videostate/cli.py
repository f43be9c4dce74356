"""The ``videostate`` command: ``videostate <command> [options]``; ``videostate <command> --help``.

Commands live in a registry. Each entry names a function ``add_arguments(parser)`` by its import path
(``"package.module:function"``); the function adds the command's options and sets ``func`` (called
with the parsed arguments, returning the exit status) through ``parser.set_defaults``. Only the
chosen command's module is imported, so the command starts fast. A system adds its commands with
one :func:`register_command` line in the table below.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    target: str  # "package.module:function" adding the command's arguments


COMMANDS: dict[str, Command] = {}


def register_command(name: str, help: str, target: str) -> Command:
    """Add ``videostate <name>``; ``target`` is ``"package.module:add_arguments"``."""
    if name in COMMANDS:
        raise ValueError(f"a command named {name!r} is already registered ({COMMANDS[name].target})")
    if ":" not in target:
        raise ValueError(f"target must look like 'package.module:function'; got {target!r}")
    COMMANDS[name] = command = Command(name, help, target)
    return command


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length", type=int, default=1024, help="tokens in the synthetic sequence")
    p.add_argument("--chunk", type=int, default=128, help="tokens per streamed chunk")
    p.add_argument("--dim", type=int, default=128, help="model width")
    p.add_argument("--layers", type=int, default=4, help="layers, alternating Mamba and Mamba-2")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demos

    run_demos(args)
    return 0


register_command(
    "demo", "run every system offline, in chunks and step by step, and compare", "videostate.cli:add_demo_arguments"
)
register_command(
    "train", "train a YAML recipe, with --set dotted.key=value overrides", "videostate.training.cli:add_arguments"
)
register_command(
    "info", "frame count, size, frame rate, rotation and audio of videos", "videostate.data.cli:add_arguments"
)
register_command("metrics", "PSNR, SSIM and ssim_matlab between two videos", "videostate.metrics.cli:add_arguments")
register_command("depth", "colourised depth video, streamed with keyframes", "videostate.depth.cli:add_depth_arguments")
register_command(
    "depth-precompute", "cache teacher depth for training", "videostate.depth.cli:add_depth_precompute_arguments"
)
register_command(
    "depth-eval",
    "teacher alone vs VideoMambaDepth: AbsRel, delta1, flicker, TAE",
    "videostate.depth.cli:add_depth_eval_arguments",
)
register_command(
    "depth-export", "training checkpoint -> VideoMambaDepth folder", "videostate.depth.cli:add_depth_export_arguments"
)
register_command(
    "segment", "segment and track objects in a video with VidEoMT", "videostate.segmentation.cli:add_arguments"
)
register_command(
    "interpolate",
    "raise a video's frame rate with HybridVFI",
    "videostate.interpolation.cli:add_interpolate_arguments",
)
register_command(
    "vfi-train", "train HybridVFI with the seed's flags", "videostate.interpolation.cli:add_train_arguments"
)
register_command(
    "vfi-bench", "evaluate HybridVFI on a VFI test set", "videostate.interpolation.cli:add_bench_arguments"
)
register_command(
    "vlm",
    "VSI-Bench / VSTI-Bench evaluation and scoring of video LLMs with VLM²",
    "videostate.vlm.cli:add_vlm_arguments",
)


def _load(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the options of ``command`` (the others show only their one-line help)."""
    parser = argparse.ArgumentParser(
        prog="videostate",
        description="Video models that carry state through time. "
        "Run 'videostate <command> --help' for a command's options.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for cmd in COMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if cmd.name == command:
            _load(cmd.target)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad input (configs, videos): a message, not a traceback
        parser.exit(2, f"videostate {args.command}: error: {e}\n")


if __name__ == "__main__":
    raise SystemExit(main())
