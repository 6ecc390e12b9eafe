"""Build context → image, with the docker SDK: skip what is up to date, stream the log, push.

The classic builder (the SDK's `images.build` API) is used everywhere: it needs no buildx plugin
and no `# syntax=` image, so it works offline, and its layer cache gives what the layout needs
(unchanged weight layers reused as they are). The build gets exactly two build args, BASE_IMAGE and
PIP_FIND_LINKS: no secret can reach an ARG, ENV, label or the history through it. Registry
credentials come from the docker config (`docker login`), never from the recipe.
"""

from __future__ import annotations

import os
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packager.errors import ImageError
from packager.naming import Mode
from packager.recipe import LoadedRecipe
from packager.render import (
    CONTEXT_MTIME,
    LABEL_ARTIFACT,
    LABEL_CODE,
    LABEL_CONFIG,
    RenderResult,
    plan,
    render,
    worker_code_digest,
)
from worker_runtime import manifest as mf

__all__ = ["BuildResult", "Layer", "build", "connect", "image_layers", "push", "worker_code_digest"]

NO_ENGINE_HINT = (
    "start one (`sudo systemctl start docker`, or `sudo dockerd &`) or point DOCKER_HOST at one; "
    "`packager render` works without an engine"
)
_TAR_CHUNK = 1024 * 1024
# Instructions the classic builder records in the history without adding a layer.
_METADATA = ("ARG", "ENV", "LABEL", "CMD", "ENTRYPOINT", "EXPOSE", "USER", "VOLUME", "STOPSIGNAL")


@dataclass(frozen=True)
class Layer:
    """One layer our Dockerfile added: what it holds, its content digest (diff id) and size."""

    step: str
    digest: str
    size: int


@dataclass(frozen=True)
class BuildResult:
    tag: str
    image_id: str
    size: int
    layers: tuple[Layer, ...]
    skipped: bool
    pushed: bool
    tags: tuple[str, ...] = ()
    # Layers a push actually uploaded (the registry had the rest); 0 without a push.
    uploaded_layers: int = 0
    seconds: float = 0.0
    context: Path | None = None


def connect(timeout: int = 600):  # type: ignore[no-untyped-def]
    """A docker client for DOCKER_HOST (or the default socket), or ImageError saying how to get one."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        where = os.environ.get("DOCKER_HOST") or "the default socket (/var/run/docker.sock)"
        reason = str(exc).splitlines()[0][:120] if str(exc) else exc.__class__.__name__
        raise ImageError(f"no Docker engine reachable at {where} ({reason}): {NO_ENGINE_HINT}") from None
    return client


def build(
    loaded: LoadedRecipe,
    manifest: mf.Manifest,
    artifact_id: str,
    mode: Mode,
    *,
    push: bool = False,
    artifact_dir: Path | None = None,
    artifact_uri: str | None = None,
    base_image: str | None = None,
    pip_find_links: str | None = None,
    network: str | None = None,
    no_cache: bool = False,
    context_dir: Path | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] | None = None,
    client: Any = None,
) -> BuildResult:
    """Build (or reuse) the image for an artifact and mode, tag it, and push it when asked.

    The build is skipped when an image with the tag exists whose labels carry the same artifact
    id, worker code digest and config digest (`--no-cache` builds anyway). `network` is the build
    containers' network; it defaults to "host" when the find-links URL is on the loopback, which
    the build could not reach otherwise.

    Raises:
        ImageError: no engine, the build or a push failed, or any render error (see `render`).
    """
    started = time.monotonic()
    say = echo or _stderr
    client = client or connect()
    p = plan(
        loaded,
        manifest,
        artifact_id,
        mode,
        artifact_uri=artifact_uri,
        base_image=base_image,
        pip_find_links=pip_find_links,
    )
    tags = (p.tag, *(f"{_repository(p.tag)}:{t}" for t in loaded.recipe.image.tags))
    existing = _existing(client, p.tag)
    context: Path | None = None
    skipped = (
        not no_cache
        and existing is not None
        and all(existing.get(k) == p.labels[k] for k in (LABEL_ARTIFACT, LABEL_CODE, LABEL_CONFIG))
    )
    if skipped:
        image_id = client.images.get(p.tag).id
        if not quiet:
            say(f"{p.tag} is up to date (artifact {artifact_id[:12]}, same worker code): build skipped")
    else:
        rendered = render(
            loaded,
            manifest,
            artifact_id,
            mode,
            context_dir,
            artifact_dir=artifact_dir,
            artifact_uri=artifact_uri,
            base_image=base_image,
            pip_find_links=pip_find_links,
        )
        context = rendered.context
        image_id = _run_build(
            client,
            rendered,
            platform=loaded.recipe.image.platform,
            network=network or _default_network(pip_find_links),
            no_cache=no_cache,
            say=(lambda line: None) if quiet else say,
        )
    image = client.images.get(image_id)
    for tag in tags:
        repo, _, name = tag.rpartition(":")
        image.tag(repo, name)
    uploaded = 0
    if push:
        for tag in tags:
            uploaded += _push(client, tag, say=(lambda line: None) if quiet else say)
    inspect = client.api.inspect_image(image_id)
    return BuildResult(
        tag=p.tag,
        image_id=image_id,
        size=int(inspect.get("Size") or 0),
        layers=image_layers(client, image_id, p.layer_steps),
        skipped=skipped,
        pushed=push,
        tags=tags,
        uploaded_layers=uploaded,
        seconds=time.monotonic() - started,
        context=context,
    )


def push(tag: str, *, quiet: bool = False, client: Any = None) -> int:
    """Push one tag; returns how many layers were uploaded (the registry had the others)."""
    return _push(client or connect(), tag, say=(lambda line: None) if quiet else _stderr)


def image_layers(client: Any, image: str, steps: tuple[str, ...]) -> tuple[Layer, ...]:
    """The layers our Dockerfile added, matched to `steps` (RenderResult.layer_steps).

    The image's rootfs lists only layers that hold files, base first; the history lists every
    instruction, newest first. Each of our steps adds files, so our layers are the rootfs's top
    `len(steps)`, and their sizes are the history's layer-adding entries in the same order.
    """
    digests = client.api.inspect_image(image)["RootFS"]["Layers"]
    history = [h for h in client.api.history(image) if _adds_layer(h.get("CreatedBy") or "")]
    if len(digests) < len(steps) or len(history) < len(steps):
        raise ImageError(f"{image}: has fewer layers than its Dockerfile adds; was it built by packager?")
    ours = digests[-len(steps) :]
    sizes = [int(h.get("Size") or 0) for h in reversed(history[: len(steps)])]
    return tuple(Layer(s, d, n) for s, d, n in zip(steps, ours, sizes, strict=True))


def _adds_layer(created_by: str) -> bool:
    _, nop, rest = created_by.partition("#(nop)")
    if not nop:
        return True  # a RUN, or a base image's own layer
    words = rest.split()
    return bool(words) and words[0] not in _METADATA


def _repository(tag: str) -> str:
    return tag.rpartition(":")[0]


def _stderr(line: str) -> None:
    import click

    click.echo(line, err=True)


def _default_network(find_links: str | None) -> str | None:
    from urllib.parse import urlsplit

    if find_links and urlsplit(find_links).hostname in ("127.0.0.1", "localhost", "::1"):
        return "host"
    return None


def _existing(client: Any, tag: str) -> dict[str, str] | None:
    import docker

    try:
        return dict(client.images.get(tag).labels or {})
    except docker.errors.ImageNotFound:
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
    last: list[str] = []
    try:
        stream = client.api.build(
            fileobj=_context_tar(rendered.context),
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
                tail = " | ".join(line for line in last[-3:] if line)
                raise ImageError(f"docker build of {rendered.tag} failed: {detail.strip()}" + _tail(tail))
            text = chunk.get("stream")
            if text:
                for line in text.rstrip("\n").splitlines():
                    last.append(line.strip())
                    say(line)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = aux["ID"]
    except docker.errors.APIError as exc:
        raise ImageError(f"docker build of {rendered.tag} failed: {exc.explanation or exc}") from None
    if image_id is None:
        raise ImageError(f"docker build of {rendered.tag} ended without an image")
    return image_id


def _tail(text: str) -> str:
    return f" (last output: {text[-300:]})" if text else ""


def _engine_platform(client: Any, platform: str) -> str | None:
    """`platform` for the build, or None when it is the engine's own.

    The classic builder accepted `platform` offline with a local base image on Docker 20.10; it is
    passed only when it differs from the engine's platform all the same, so that an older engine
    (which treats any platform as a reason to pull the base) builds from the local image.
    """
    info = client.version()
    own = f"{info.get('Os', 'linux')}/{info.get('Arch', 'amd64')}"
    return None if platform == own else platform


def _context_tar(context: Path) -> Iterator[bytes]:
    """The context as an uncompressed tar, streamed (weights are not copied to a temp file).

    Owners are root and mtimes fixed, so the same files make the same COPY layers on any machine
    and under any user: the layers' bytes depend on what is in them and nothing else.
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
                    rel = path.relative_to(context).as_posix()
                    info = tar.gettarinfo(str(path), arcname=rel)
                    info.uid = info.gid = 0
                    info.uname = info.gname = "root"
                    info.mtime = CONTEXT_MTIME
                    if info.isfile():
                        with open(path, "rb") as fh:
                            tar.addfile(info, fh)
                    else:
                        tar.addfile(info)
        except BaseException as exc:  # reported by the reading side
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


def _push(client: Any, tag: str, *, say: Callable[[str], None]) -> int:
    import docker

    repository, _, name = tag.rpartition(":")
    uploaded: set[str] = set()
    try:
        for chunk in client.api.push(repository, tag=name, stream=True, decode=True):
            if "error" in chunk:
                detail = (chunk.get("errorDetail") or {}).get("message") or chunk["error"]
                raise ImageError(f"push of {tag} failed: {detail.strip()} (log in with `docker login`?)")
            status = chunk.get("status", "")
            if status == "Pushed" and chunk.get("id"):
                uploaded.add(chunk["id"])
            if status in ("Pushed", "Layer already exists") or status.startswith(name + ": digest"):
                say(f"{chunk.get('id', '')}: {status}".strip(": "))
    except docker.errors.APIError as exc:
        raise ImageError(f"push of {tag} failed: {exc.explanation or exc}") from None
    return len(uploaded)
