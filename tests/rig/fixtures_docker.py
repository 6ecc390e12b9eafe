"""pytest fixtures: docker (see tests/conftest.py).

`docker_rig` is the offline Docker rig of tests/rig/docker_env.py for the session: an engine
(DOCKER_HOST's, or a private dockerd), the `localbase:py311` base image, a wheelhouse on
127.0.0.1 and a loopback registry. A machine without the tools fails the tier with what to install;
it never installs anything itself (.ci/docker-setup.sh does, for CI).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.rig.docker_env import DockerRig, RigError, start


@pytest.fixture(scope="session")
def docker_rig() -> Iterator[DockerRig]:
    try:
        rig = start()
    except RigError as exc:
        pytest.fail(f"the end-to-end tier needs a Docker engine: {exc}", pytrace=False)
    try:
        yield rig
    finally:
        rig.stop()
