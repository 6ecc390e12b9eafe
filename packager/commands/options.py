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
_base_image_option = click.option(
    "--base-image",
    metavar="IMAGE",
    default=None,
    help="Base image instead of the recipe's `image.base` (e.g. a CUDA PyTorch image of your own).",
)
_find_links_option = click.option(
    "--find-links",
    "pip_find_links",
    metavar="URL",
    default=None,
    help="Install the worker's packages only from this wheelhouse URL (offline builds); no credentials.",
)


def image_inputs_options(command: F) -> F:
    """`--base-image` and `--find-links`: what the image is built from, for every command that renders one."""
    return _base_image_option(_find_links_option(command))


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


def shown_option(
    flag: str, value_type: Any, default: object, help_text: str, dest: str | None = None
) -> Callable[[F], F]:
    """An option with a default that `--help` shows: the assumptions a command prices or plans with."""
    names = (flag, dest) if dest else (flag,)
    return click.option(*names, type=value_type, default=default, show_default=True, help=help_text)


def value_option(
    flag: str, metavar: str, help_text: str, dest: str | None = None, value_type: Any = None
) -> Callable[[F], F]:
    """An option that takes one value and stays None unless given (the command then picks its default)."""
    names = (flag, dest) if dest else (flag,)
    return click.option(*names, metavar=metavar, type=value_type, default=None, help=help_text)
