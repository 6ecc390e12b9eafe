"""A built image as the engine reports it: its tags, id, size and the layers that hold the weights,
plus the one-line log sayer that build and push share."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.image.render import (
    LABEL_LAYERS,
)
from packager.source.recipe import LoadedRecipe

if TYPE_CHECKING:
    pass


# Instructions the classic builder records in the history without adding a layer.
_METADATA = ("ARG", "ENV", "LABEL", "CMD", "ENTRYPOINT", "EXPOSE", "USER", "VOLUME", "STOPSIGNAL")


@dataclass(frozen=True)
class Layer:
    """One layer our Dockerfile added: what it holds, its content digest (diff id) and its size."""

    step: str
    digest: str
    size: int


@dataclass(frozen=True)
class BuildResult:
    """An image for an artifact and mode, built now (`skipped` False) or found up to date."""

    tag: str
    image_id: str
    size: int
    layers: tuple[Layer, ...]
    skipped: bool
    pushed: bool
    tags: tuple[str, ...] = ()
    # Layers the push uploaded (the registry had the others); 0 without a push.
    uploaded_layers: int = 0
    seconds: float = 0.0
    context_dir: Path | None = None
    # Baked mode: the weights image this one is built FROM (pushed with it), whether this build
    # made it (False: found by its labels), and the bytes each build sent the engine as context.
    weights_tag: str | None = None
    weights_built: bool = False
    context_bytes: int = 0
    weights_context_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "tags": list(self.tags),
            "image_id": self.image_id,
            "size": self.size,
            "layers": [{"step": x.step, "digest": x.digest, "size": x.size} for x in self.layers],
            "skipped": self.skipped,
            "pushed": self.pushed,
            "uploaded_layers": self.uploaded_layers,
            "seconds": round(self.seconds, 3),
            "context_dir": str(self.context_dir) if self.context_dir else None,
            "weights_tag": self.weights_tag,
            "weights_built": self.weights_built,
            "context_bytes": self.context_bytes,
            "weights_context_bytes": self.weights_context_bytes,
        }


def image_layers(client: Any, image: str) -> tuple[Layer, ...]:
    """The layers our Dockerfile added, named by the image's `packager.layers` label.

    The image's rootfs lists only layers that hold files, base first; the history lists every
    instruction, newest first. Each of our steps adds files, so our layers are the rootfs's top
    `len(steps)`, and their sizes are the history's layer-adding entries in the same order.
    """
    info = client.api.inspect_image(image)
    steps = json.loads(((info.get("Config") or {}).get("Labels") or {}).get(LABEL_LAYERS) or "[]")
    digests = info["RootFS"]["Layers"]
    history = [h for h in client.api.history(image) if _adds_layer(h.get("CreatedBy") or "")]
    if not steps or len(digests) < len(steps) or len(history) < len(steps):
        return ()
    sizes = [int(h.get("Size") or 0) for h in reversed(history[: len(steps)])]
    return tuple(Layer(s, d, n) for s, d, n in zip(steps, digests[-len(steps) :], sizes, strict=True))


def built_result(
    client: Any,
    image_id: str,
    tag: str,
    tags: tuple[str, ...],
    *,
    skipped: bool,
    weights_tag: str | None = None,
) -> BuildResult:
    image = client.images.get(image_id)
    for extra in tags:
        repository, _, name = extra.rpartition(":")
        image.tag(repository, name)
    return BuildResult(
        tag=tag,
        image_id=image_id,
        size=int(image.attrs.get("Size") or 0),
        layers=image_layers(client, image_id),
        skipped=skipped,
        pushed=False,
        tags=tags,
        weights_tag=weights_tag,
    )


def image_tags(loaded: LoadedRecipe, tag: str) -> tuple[str, ...]:
    repository = tag.rpartition(":")[0]
    return (tag, *(f"{repository}:{extra}" for extra in loaded.recipe.image.tags))


def _adds_layer(created_by: str) -> bool:
    _, nop, rest = created_by.partition("#(nop)")
    if not nop:
        return True  # a RUN, or a base image's own layer
    words = rest.split()
    return bool(words) and words[0] not in _METADATA


def sayer(quiet: bool, echo: Callable[[str], None] | None) -> Callable[[str], None]:
    if quiet:
        return lambda line: None
    if echo is not None:
        return echo

    def to_stderr(line: str) -> None:
        import click

        click.echo(line, err=True)

    return to_stderr
