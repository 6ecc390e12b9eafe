"""pytest fixtures: network failures (see tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.rig.silent import silent_server


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A TCP server that accepts every connection and never answers."""
    with silent_server() as url:
        yield url
