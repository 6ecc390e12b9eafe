"""The Docker engine: connecting through the docker SDK (DOCKER_HOST and the usual config) and saying
in one line why there is none."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from packager.errors import ImageError

if TYPE_CHECKING:
    pass


NO_ENGINE_HINT = (
    "start one (`sudo systemctl start docker`, or `sudo dockerd &`) or point DOCKER_HOST at one; "
    "`packager render` works without an engine"
)


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


def engine_platform(client: Any, platform: str) -> str | None:
    """`platform` for the build, or None when it is the engine's own.

    Docker 20.10's classic builder took `platform` offline with a local base image; it is passed
    only when it differs from the engine's platform all the same, so that an engine that treats any
    platform as a reason to pull the base still builds from a local one.
    """
    info = client.version()
    own = f"{info.get('Os', 'linux')}/{info.get('Arch', 'amd64')}"
    return None if platform == own else platform
