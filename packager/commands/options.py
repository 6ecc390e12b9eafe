"""Arguments and options shared by several commands, so they read the same everywhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

recipe_argument = click.argument(
    "recipe_file", metavar="RECIPE", type=click.Path(dir_okay=False, path_type=str)
)
frozen_option = click.option(
    "--frozen",
    is_flag=True,
    help="Fail instead of re-locking when the lock is missing or has drifted (for CI).",
)
mode_option = click.option(
    "--mode",
    type=click.Choice(["baked", "volume", "cached"]),
    default=None,
    help="Weights baked into the image, on a RunPod network volume, or in RunPod's model cache from"
    " the recipe's `publish` repo (default: the recipe's `mode`).",
)
base_image_option = click.option(
    "--base-image",
    metavar="IMAGE",
    default=None,
    help="Base image instead of the recipe's `image.base` (e.g. a CUDA PyTorch image of your own).",
)


find_links_option = click.option(
    "--find-links",
    "pip_find_links",
    metavar="URL",
    default=None,
    help="Install the worker's packages only from this wheelhouse URL (offline builds); no credentials.",
)


def image_policy_option(default: str) -> Callable[[F], F]:
    """`--image build|render|auto`: what the image stage does (build needs a Docker engine)."""
    return click.option(
        "--image",
        "image_policy",
        type=click.Choice(["build", "render", "auto"]),
        default=default,
        show_default=True,
        help="Build the image, only render its Dockerfile and context, or build when an engine is reachable.",
    )
