"""Build context → image, with the docker SDK: skip what is up to date, stream the log, push.

The classic builder (the SDK's build API) is used everywhere: it needs no buildx plugin and no
`# syntax=` image, so it also works offline, and its layer cache gives what the layout needs
(unchanged weight layers reused as they are). The classic API sends the whole context on every
build, so a baked image is two builds: the weights image (sent once per artifact and base, then
found by its labels) and the worker image FROM it, whose context is the code alone. Build args:
BASE_IMAGE and PIP_FIND_LINKS (deps), WEIGHTS_IMAGE (baked worker): nothing from the environment
reaches an ARG, ENV, label or the history. Registry
credentials come from the docker config (`docker login`), never from the recipe.
"""

from __future__ import annotations

import os
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import urlsplit

from artifact_format import manifest as mf
from artifact_format.vocab import Mode, short_id
from packager.errors import ImageError
from packager.image.built import BuildResult, Layer, built_result, image_layers, image_tags, sayer
from packager.image.code import worker_code_digest
from packager.image.context import CONTEXT_MTIME
from packager.image.engine import connect, engine_platform, engine_problem
from packager.image.push import is_pushed, push, push_all
from packager.image.render import LABEL_ROLE, LABEL_WEIGHTS, Identity, RenderResult, identity, render
from packager.image.weights import WEIGHTS_CONTEXT
from packager.source.recipe import LoadedRecipe

if TYPE_CHECKING:
    from typing import Unpack

    from packager.convert.artifact import Artifact

__all__ = [
    "BuildResult",
    "Layer",
    "build",
    "build_context",
    "connect",
    "engine_problem",
    "find_built_image",
    "image_layers",
    "is_pushed",
    "push",
    "worker_code_digest",
]


_TAR_CHUNK = 1024 * 1024


def find_built_image(loaded: LoadedRecipe, ident: Identity, client: Any = None) -> BuildResult | None:
    """The local image a build of `ident` (`render.identity`) would make if it is up to date, else None.

    Up to date: the tag exists and its labels carry the same artifact id, worker code digest and
    config digest (base image, worker env, requirements, platform) as a build now would.
    """
    import docker

    client = client or connect()
    try:
        image = client.images.get(ident.tag)
    except docker.errors.ImageNotFound:
        return None
    labels = image.labels or {}
    if any(labels.get(k) != v for k, v in ident.labels.items()):
        return None
    tags = image_tags(loaded, ident.tag)
    return built_result(client, image.id, ident.tag, tags, skipped=True, weights_tag=ident.weights_tag)


class BuildHow(TypedDict, total=False):
    """How a context is built, as `build_context` takes it (and `build` passes it on)."""

    push: bool
    network: str | None
    no_cache: bool
    quiet: bool
    echo: Callable[[str], None] | None
    client: Any


def build(
    loaded: LoadedRecipe,
    artifact: Artifact | None,
    manifest: mf.Manifest,
    artifact_id: str,
    mode: Mode,
    *,
    out_dir: Path | None = None,
    artifact_uri: str | None = None,
    base_image: str | None = None,
    pip_find_links: str | None = None,
    **how: Unpack[BuildHow],
) -> BuildResult:
    """Build (or find up to date) the image for an artifact and mode, tag it, push it when asked.

    `artifact` (on local disk) is needed for baked mode only, and only when a build happens.
    `no_cache` builds every layer afresh even when an up-to-date image exists. See `build_context`
    for the build itself and `render.render` for the other arguments.

    Raises:
        ImageError: no engine, a render error, the build or a push failed.
    """
    started = time.monotonic()
    client = how["client"] = how.get("client") or connect()
    if not how.get("no_cache"):
        ident = identity(loaded, artifact_id, mode, artifact_uri=artifact_uri, base_image=base_image)
        found = find_built_image(loaded, ident, client)
        if found is not None:
            say = sayer(how.get("quiet", False), how.get("echo"))
            say(
                f"{found.tag} is up to date (artifact {short_id(artifact_id)}, same worker code): not rebuilt"
            )
            if how.get("push"):
                found = push_all(client, found, say)
            return replace(found, seconds=time.monotonic() - started)
    rendered = render(
        loaded,
        artifact,
        manifest,
        artifact_id,
        mode,
        out_dir,
        artifact_uri=artifact_uri,
        base_image=base_image,
        pip_find_links=pip_find_links,
    )
    return replace(build_context(loaded, rendered, **how), seconds=time.monotonic() - started)


def build_context(
    loaded: LoadedRecipe,
    rendered: RenderResult,
    *,
    push: bool = False,
    network: str | None = None,
    no_cache: bool = False,
    quiet: bool = False,
    echo: Callable[[str], None] | None = None,
    client: Any = None,
) -> BuildResult:
    """Build a rendered context for `image.platform`, tag it (and the recipe's extra tags), push.

    `network` is the build containers' network; it defaults to "host" when the find-links URL is
    on the loopback, which a build could not reach otherwise.
    """
    started = time.monotonic()
    client = client or connect()
    say = sayer(quiet, echo)
    find_links = rendered.build_args.get("PIP_FIND_LINKS") or None
    platform = engine_platform(client, loaded.recipe.image.platform)
    network = network or _default_network(find_links)
    deps_args = {k: v for k, v in rendered.build_args.items() if k != "WEIGHTS_IMAGE"}
    weights_built, weights_sent = False, 0
    if rendered.weights is not None:
        weights = rendered.weights
        found = None if no_cache else find_weights_image(client, weights.digest)
        if found is None:
            say(f"building the weights image {weights.tag} (once per artifact and base)")
            build = _Build(weights.context_dir, weights.tag, deps_args, platform, network, no_cache)
            found, weights_sent = _run_build(client, build, say)
            weights_built = True
        else:
            say(f"{weights.tag}: the weights image is up to date (found by its labels): not rebuilt")
        repository, _, name = weights.tag.rpartition(":")
        client.images.get(found).tag(repository, name)
        args = {"WEIGHTS_IMAGE": weights.tag}
        build = _Build(rendered.context_dir, rendered.tag, args, platform, None, no_cache, WEIGHTS_CONTEXT)
    else:
        build = _Build(rendered.context_dir, rendered.tag, deps_args, platform, network, no_cache)
    image_id, sent = _run_build(client, build, say)
    weights_tag = rendered.weights.tag if rendered.weights else None
    tags = image_tags(loaded, rendered.tag)
    result = built_result(client, image_id, rendered.tag, tags, skipped=False, weights_tag=weights_tag)
    result = replace(
        result,
        context_dir=rendered.context_dir,
        weights_built=weights_built,
        context_bytes=sent,
        weights_context_bytes=weights_sent,
    )
    if push:
        result = push_all(client, result, say)
    return replace(result, seconds=time.monotonic() - started)


def find_weights_image(client: Any, digest: str) -> str | None:
    """The id of a local weights image with this weights digest, built by any recipe, or None."""
    wanted = [f"{LABEL_ROLE}=weights", f"{LABEL_WEIGHTS}={digest}"]
    images = client.images.list(filters={"label": wanted})
    return str(images[0].id) if images else None


@dataclass(frozen=True)
class _Build:
    """One call of the engine's build API: a context folder (less `skip`, a top-level entry)."""

    context: Path
    tag: str
    args: dict[str, str]
    platform: str | None
    network: str | None
    no_cache: bool
    skip: str | None = None


def _default_network(find_links: str | None) -> str | None:
    if find_links and urlsplit(find_links).hostname in ("127.0.0.1", "localhost", "::1"):
        return "host"
    return None


def _run_build(client: Any, build: _Build, say: Callable[[str], None]) -> tuple[str, int]:
    """Stream the context to the engine and its build log back: the new image's id, and the bytes
    of context the engine received."""
    import docker

    image_id: str | None = None
    recent: list[str] = []
    sent = [0]

    def counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            sent[0] += len(chunk)
            yield chunk

    try:
        stream = client.api.build(
            fileobj=counted(_context_tar(build.context, build.skip)),
            custom_context=True,
            encoding=None,
            tag=build.tag,
            buildargs=build.args,
            platform=build.platform,
            network_mode=build.network,
            nocache=build.no_cache,
            pull=False,
            rm=True,
            forcerm=True,
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                detail = (chunk.get("errorDetail") or {}).get("message") or chunk["error"]
                last = " | ".join(recent[-3:])
                raise ImageError(
                    f"docker build of {build.tag} failed: {' '.join(detail.split())[:400]}"
                    + (f" (last output: {last[-300:]})" if last else "")
                )
            for line in (chunk.get("stream") or "").rstrip("\n").splitlines():
                recent = [*recent[-9:], line.strip()]
                say(line)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = aux["ID"]
    except docker.errors.APIError as exc:
        raise ImageError(f"docker build of {build.tag} failed: {exc.explanation or exc}") from None
    if image_id is None:
        raise ImageError(f"docker build of {build.tag} ended without an image")
    return image_id, sent[0]


def _context_tar(context: Path, skip: str | None = None) -> Iterator[bytes]:
    """The context as an uncompressed tar, streamed: the weights are never copied to a temp file.

    Owners are root and mtimes fixed, so the same files make the same COPY layers on any machine
    and under any user: a layer's bytes depend on what is in it and on nothing else. `skip` (a
    top-level entry: a baked context's weights-image/) is left out, as its .dockerignore says.
    """
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def writer() -> None:
        try:
            with (
                os.fdopen(write_fd, "wb") as out,
                tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar,
            ):
                for path in sorted(context.rglob("*")):
                    if skip is not None and path.relative_to(context).parts[0] == skip:
                        continue
                    info = tar.gettarinfo(str(path), arcname=path.relative_to(context).as_posix())
                    info.uid = info.gid = 0
                    info.uname = info.gname = "root"
                    info.mtime = CONTEXT_MTIME
                    if info.isfile():
                        with open(path, "rb") as fh:
                            tar.addfile(info, fh)
                    else:
                        tar.addfile(info)
        except BaseException as exc:  # re-raised on the reading side
            failure.append(exc)

    thread = threading.Thread(target=writer, name="context-tar", daemon=True)
    thread.start()
    try:
        with os.fdopen(read_fd, "rb") as fh:
            while chunk := fh.read(_TAR_CHUNK):
                yield chunk
    finally:
        thread.join(timeout=5)
    if failure and not isinstance(failure[0], BrokenPipeError):
        raise ImageError(f"cannot read the build context {context}: {failure[0]}")
