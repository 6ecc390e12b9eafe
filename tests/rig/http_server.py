"""A threaded HTTP server on loopback at a free port, started and stopped with `with`.

The base of the rig's stand-ins (the local hub, RunPod's REST API and its serverless job API): each
says how a request is handled, this class serves it on a daemon thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

S = TypeVar("S", bound="LoopbackServer")


class LoopbackServer:
    """Serves `handler_class()` on 127.0.0.1; `url` is where, once started."""

    _server: ThreadingHTTPServer | None = None

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self: S) -> S:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler_class())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name=type(self).__name__, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, f"{type(self).__name__} not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"


def handler_calling(
    handle: Callable[[BaseHTTPRequestHandler], None], methods: Iterable[str]
) -> type[BaseHTTPRequestHandler]:
    """A request handler that passes each request of `methods` to `handle` and logs nothing."""

    def call(self: BaseHTTPRequestHandler) -> None:
        handle(self)

    def quiet(self: BaseHTTPRequestHandler, *args: Any) -> None:
        pass

    return type(
        "Handler", (BaseHTTPRequestHandler,), {**{f"do_{m}": call for m in methods}, "log_message": quiet}
    )


class InFlight:
    """How many requests a rig server is answering right now.

    A server records a request once it has answered it, so a client that was killed, or that has
    just read its response, can be ahead of the record: `settle` waits for the answers to land.
    """

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    @contextmanager
    def request(self) -> Iterator[None]:
        with self._lock:
            self.count += 1
        try:
            yield
        finally:
            with self._lock:
                self.count -= 1

    def settle(self, timeout_s: float, *, strict: bool = True) -> None:
        """Wait until no request is being answered; after `timeout_s`, raise (strict) or go on."""
        deadline = time.monotonic() + timeout_s
        while self.count:
            if time.monotonic() > deadline:
                if strict:
                    raise TimeoutError(f"{self.count} request(s) still being answered after {timeout_s} s")
                return
            time.sleep(0.005)
