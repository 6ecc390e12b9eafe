"""Build context → image, with the docker SDK: skip what is up to date, stream the log, push.

The classic builder (the SDK's build API) is used everywhere: it needs no buildx plugin and no
`# syntax=` image, so it also works offline, and its layer cache gives what the layout needs
(unchanged weight layers reused as they are). A build gets exactly two build args, BASE_IMAGE and
PIP_FIND_LINKS: nothing from the environment reaches an ARG, ENV, label or the history. Registry
credentials come from the docker config (`docker login`), never from the recipe.
"""

from __future__ import annotations

import json
import os
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from artifact_format import manifest as mf
from artifact_format.vocab import Mode, short_id
from packager.errors import ImageError
from packager.image.render import (
    CONTEXT_MTIME,
    LABEL_LAYERS,
    RenderResult,
    identity,
    render,
    worker_code_digest,
)
from packager.source.recipe import LoadedRecipe

if TYPE_CHECKING:
    from packager.pipeline.artifact import Artifact

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

NO_ENGINE_HINT = (
    "start one (`sudo systemctl start docker`, or `sudo dockerd &`) or point DOCKER_HOST at one; "
    "`packager render` works without an engine"
)
_TAR_CHUNK = 1024 * 1024
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
        }


def connect(timeout: int = 600) -> Any:
    """A docker client for DOCKER_HOST (or the default socket), or ImageError saying how to get one."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        where = os.environ.get("DOCKER_HOST") or "the default socket"
        reason = (str(exc).splitlines() or [exc.__class__.__name__])[0][:120]
        raise ImageError(f"no Docker engine reachable at {where} ({reason}): {NO_ENGINE_HINT}") from None
    return client


def engine_problem() -> str | None:
    """The one-line reason no image can be built here, or None when an engine answers."""
    try:
        connect(timeout=10).close()
    except ImageError as exc:
        return str(exc)
    return None


def find_built_image(
    loaded: LoadedRecipe,
    artifact_id: str,
    mode: Mode,
    *,
    artifact_uri: str | None = None,
    base_image: str | None = None,
    client: Any = None,
) -> BuildResult | None:
    """The local image for this artifact and mode if it is up to date, else None.

    Up to date: the tag exists and its labels carry the same artifact id, worker code digest and
    config digest (base image, worker env, requirements, platform) as a build now would.
    """
    import docker

    client = client or connect()
    ident = identity(loaded, artifact_id, mode, artifact_uri=artifact_uri, base_image=base_image)
    try:
        image = client.images.get(ident.tag)
    except docker.errors.ImageNotFound:
        return None
    labels = image.labels or {}
    if any(labels.get(k) != v for k, v in ident.labels.items()):
        return None
    return _result(client, image.id, ident.tag, _tags(loaded, ident.tag), skipped=True)


def build(
    loaded: LoadedRecipe,
    artifact: Artifact | None,
    manifest: mf.Manifest,
    artifact_id: str,
    mode: Mode,
    *,
    push: bool = False,
    out_dir: Path | None = None,
    artifact_uri: str | None = None,
    base_image: str | None = None,
    pip_find_links: str | None = None,
    network: str | None = None,
    no_cache: bool = False,
    quiet: bool = False,
    echo: Callable[[str], None] | None = None,
    client: Any = None,
) -> BuildResult:
    """Build (or find up to date) the image for an artifact and mode, tag it, push it when asked.

    `artifact` (on local disk) is needed for baked mode only, and only when a build happens.
    `no_cache` builds every layer afresh even when an up-to-date image exists. See `build_context`
    for the build itself and `render.render` for the other arguments.

    Raises:
        ImageError: no engine, a render error, the build or a push failed.
    """
    started = time.monotonic()
    client = client or connect()
    say = _sayer(quiet, echo)
    if not no_cache:
        found = find_built_image(
            loaded, artifact_id, mode, artifact_uri=artifact_uri, base_image=base_image, client=client
        )
        if found is not None:
            say(
                f"{found.tag} is up to date (artifact {short_id(artifact_id)}, same worker code): not rebuilt"
            )
            if push:
                found = _push_all(client, found, say)
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
    result = build_context(
        loaded, rendered, push=push, network=network, no_cache=no_cache, quiet=quiet, echo=echo, client=client
    )
    return replace(result, seconds=time.monotonic() - started)


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
    say = _sayer(quiet, echo)
    find_links = rendered.build_args.get("PIP_FIND_LINKS") or None
    image_id = _run_build(
        client,
        rendered,
        platform=loaded.recipe.image.platform,
        network=network or _default_network(find_links),
        no_cache=no_cache,
        say=say,
    )
    result = _result(client, image_id, rendered.tag, _tags(loaded, rendered.tag), skipped=False)
    result = replace(result, context_dir=rendered.context_dir)
    if push:
        result = _push_all(client, result, say)
    return replace(result, seconds=time.monotonic() - started)


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
    return _push_all(client or connect(), image, _sayer(quiet, None))


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


def _result(client: Any, image_id: str, tag: str, tags: tuple[str, ...], *, skipped: bool) -> BuildResult:
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
    )


def _tags(loaded: LoadedRecipe, tag: str) -> tuple[str, ...]:
    repository = tag.rpartition(":")[0]
    return (tag, *(f"{repository}:{extra}" for extra in loaded.recipe.image.tags))


def _adds_layer(created_by: str) -> bool:
    _, nop, rest = created_by.partition("#(nop)")
    if not nop:
        return True  # a RUN, or a base image's own layer
    words = rest.split()
    return bool(words) and words[0] not in _METADATA


def _sayer(quiet: bool, echo: Callable[[str], None] | None) -> Callable[[str], None]:
    if quiet:
        return lambda line: None
    if echo is not None:
        return echo

    def to_stderr(line: str) -> None:
        import click

        click.echo(line, err=True)

    return to_stderr


def _default_network(find_links: str | None) -> str | None:
    if find_links and urlsplit(find_links).hostname in ("127.0.0.1", "localhost", "::1"):
        return "host"
    return None


def _run_build(
    client: Any,
    rendered: RenderResult,
    *,
    platform: str,
    network: str | None,
    no_cache: bool,
    say: Callable[[str], None],
) -> str:
    """Stream the context to the engine and its build log back; the new image's id."""
    import docker

    image_id: str | None = None
    recent: list[str] = []
    try:
        stream = client.api.build(
            fileobj=_context_tar(rendered.context_dir),
            custom_context=True,
            encoding=None,
            tag=rendered.tag,
            buildargs=rendered.build_args,
            platform=_engine_platform(client, platform),
            network_mode=network,
            nocache=no_cache,
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
                    f"docker build of {rendered.tag} failed: {' '.join(detail.split())[:400]}"
                    + (f" (last output: {last[-300:]})" if last else "")
                )
            for line in (chunk.get("stream") or "").rstrip("\n").splitlines():
                recent = [*recent[-9:], line.strip()]
                say(line)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = aux["ID"]
    except docker.errors.APIError as exc:
        raise ImageError(f"docker build of {rendered.tag} failed: {exc.explanation or exc}") from None
    if image_id is None:
        raise ImageError(f"docker build of {rendered.tag} ended without an image")
    return image_id


def _engine_platform(client: Any, platform: str) -> str | None:
    """`platform` for the build, or None when it is the engine's own.

    Docker 20.10's classic builder took `platform` offline with a local base image; it is passed
    only when it differs from the engine's platform all the same, so that an engine that treats any
    platform as a reason to pull the base still builds from a local one.
    """
    info = client.version()
    own = f"{info.get('Os', 'linux')}/{info.get('Arch', 'amd64')}"
    return None if platform == own else platform


def _context_tar(context: Path) -> Iterator[bytes]:
    """The context as an uncompressed tar, streamed: the weights are never copied to a temp file.

    Owners are root and mtimes fixed, so the same files make the same COPY layers on any machine
    and under any user: a layer's bytes depend on what is in it and on nothing else.
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


def _push_all(client: Any, image: BuildResult, say: Callable[[str], None]) -> BuildResult:
    uploaded = sum(_push(client, tag, say) for tag in (image.tags or (image.tag,)))
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
