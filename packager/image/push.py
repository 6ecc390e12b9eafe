"""Pushing an image's tags to its registry with the credentials of the user's docker config, and
telling whether the registry already has it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from packager.errors import ImageError
from packager.image.built import BuildResult, sayer
from packager.image.engine import connect

if TYPE_CHECKING:
    pass


def is_pushed(image: BuildResult, client: Any = None) -> bool:
    """Whether the registry serves this very image under its tag (one manifest request)."""
    import docker

    client = client or connect()
    repo_digests = client.api.inspect_image(image.image_id).get("RepoDigests") or []
    try:
        remote = client.api.inspect_distribution(image.tag)["Descriptor"]["digest"]
    except docker.errors.APIError:
        return False
    return f"{image.tag.rpartition(':')[0]}@{remote}" in repo_digests


def push(image: BuildResult, *, quiet: bool = False, client: Any = None) -> BuildResult:
    """Push every tag of a built image; the result counts the layers actually uploaded."""
    return push_all(client or connect(), image, sayer(quiet, None))


def push_all(client: Any, image: BuildResult, say: Callable[[str], None]) -> BuildResult:
    """The weights image first (a baked image's parent, so the worker's push finds its layers
    there), then every tag of the image; counts the layers uploaded."""
    import docker

    tags = image.tags or (image.tag,)
    if image.weights_tag:
        try:
            client.images.get(image.weights_tag)
            tags = (image.weights_tag, *tags)
        except docker.errors.ImageNotFound:
            say(f"{image.weights_tag} is not on this engine: its layers go up with {image.tag}")
    uploaded = sum(_push(client, tag, say) for tag in tags)
    return replace(image, pushed=True, uploaded_layers=uploaded)


def _push(client: Any, tag: str, say: Callable[[str], None]) -> int:
    import docker

    repository, _, name = tag.rpartition(":")
    uploaded: set[str] = set()
    try:
        for chunk in client.api.push(repository, tag=name, stream=True, decode=True):
            if "error" in chunk:
                detail = (chunk.get("errorDetail") or {}).get("message") or chunk["error"]
                raise ImageError(
                    f"push of {tag} failed: {' '.join(detail.split())[:300]} "
                    "(for a private registry, `docker login` first)"
                )
            status = chunk.get("status", "")
            if status == "Pushed" and chunk.get("id"):
                uploaded.add(chunk["id"])
            if status in ("Pushed", "Layer already exists") or "digest:" in status:
                say(f"{chunk.get('id', '')}: {status}".lstrip(": "))
    except docker.errors.APIError as exc:
        raise ImageError(f"push of {tag} failed: {exc.explanation or exc}") from None
    return len(uploaded)
