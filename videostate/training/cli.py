"""``videostate train RECIPE.yaml [--set key=value ...]``: train a recipe (see :mod:`.recipe`)."""

from __future__ import annotations

import argparse

import yaml


def add_overrides_argument(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--set KEY=VALUE ...`` (repeatable) into ``args.overrides``, for :func:`.recipe.load_recipe`."""
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        help=help or "override a recipe value by dotted key, e.g. --set optim.lr=1e-4 trainer.max_steps=200",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe: task, trainer, optim, model and data sections")
    add_overrides_argument(parser)
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="stop after this many optimizer steps (resume later from the checkpoint)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .recipe import load_recipe, recipe_to_dict, train

    recipe = load_recipe(args.recipe, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False), end="")
        return 0
    train(recipe, steps=args.steps)
    return 0
