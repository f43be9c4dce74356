"""The ``videostate`` command. Each subcommand is registered by a ``add_<name>_command`` function."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def add_demo_command(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="run every system offline, in chunks and step by step, and compare"
    )
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videostate", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_demo_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
