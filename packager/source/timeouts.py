"""Time limits for the HTTP requests made through huggingface_hub's client: the hub and URL downloads.

Every request gets CONNECT_TIMEOUT seconds to connect and `store.timeout` seconds (PACKAGER_TIMEOUT
overrides) without a byte before it fails. huggingface_hub's info and list calls pass no timeout at
all (they would wait forever), and its back-off retries a timed-out request five times more: an
endpoint that accepts connections and never answers would hold a command for six limits plus 23 s of
back-off. So the client it shares gets the limits on every request, and a timeout comes out as
`Stalled`, which is a transport error huggingface_hub does not retry: one line, after one limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2

from packager.settings import CONNECT_TIMEOUT, network_timeout, stall_message

# The recipe's store.timeout once a recipe named it (PACKAGER_TIMEOUT applied), and whether
# huggingface_hub's client is bounded yet.
_state: dict[str, float] = {}


class Stalled(httpx2.TransportError):
    """A request that got no byte within its limit; its message is the one line to show."""


def set_limit(seconds: float) -> None:
    """Seconds a request may go without progress from now on (the recipe's, PACKAGER_TIMEOUT applied)."""
    _state["seconds"] = seconds


def seconds_without_progress() -> float:
    return _state.get("seconds") or network_timeout()


def bound_hub_client() -> None:
    """Make huggingface_hub's shared client a BoundedClient (once; later calls cost nothing)."""
    if _state.get("installed"):
        return
    from huggingface_hub.utils import get_session, set_client_factory

    # huggingface_hub's own request hooks (offline mode, request ids) stay on the new client.
    hooks = dict(get_session().event_hooks)
    set_client_factory(lambda: BoundedClient(event_hooks=hooks, follow_redirects=True))
    _state["installed"] = 1


class BoundedClient(httpx2.Client):
    """An httpx2 client whose every request, redirects and streamed bodies included, is bounded."""

    def send(self, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        seconds = seconds_without_progress()
        request.extensions["timeout"] = httpx2.Timeout(seconds, connect=CONNECT_TIMEOUT).as_dict()
        try:
            response = super().send(request, **kwargs)
        except httpx2.TimeoutException as exc:
            raise Stalled(_line(request, exc, seconds), request=request) from None
        response.stream = _GuardedStream(response.stream, request, seconds)
        return response


class _GuardedStream(httpx2.SyncByteStream):
    """A streamed body whose timeouts come out as Stalled too."""

    def __init__(self, inner: Any, request: httpx2.Request, seconds: float) -> None:
        self._inner = inner
        self._request = request
        self._seconds = seconds

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._inner
        except httpx2.TimeoutException as exc:
            raise Stalled(_line(self._request, exc, self._seconds), request=self._request) from None

    def close(self) -> None:
        self._inner.close()


def _line(request: httpx2.Request, exc: httpx2.TimeoutException, seconds: float) -> str:
    url = request.url
    where = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
    return stall_message(where, seconds, connecting=isinstance(exc, httpx2.ConnectTimeout))
