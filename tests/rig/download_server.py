"""A CivitAI-like download on 127.0.0.1: a token-checking API that redirects to signed storage.

`api` answers `GET /api/download/models/<n>` only with `Authorization: Bearer <token>` (HTTP 401
otherwise) and redirects (302) to `storage`, another server (another origin), which serves the file
with a `Content-Disposition` name and honours `Range` (206 + `Content-Range`). `cut_after` makes
storage's next answer stop after that many bytes (an interrupted download). Both record the
headers of every request.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "civitai_test_token_0123456789"


@dataclass
class DownloadServers:
    data: bytes
    name: str = "dreamy_v1.safetensors"
    cut_after: int | None = None
    api_seen: list[dict[str, str]] = field(default_factory=list)
    storage_seen: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._servers: list[ThreadingHTTPServer] = []
        self.storage_url = self._serve(self._storage)
        self.api_url = self._serve(self._api)

    @property
    def url(self) -> str:
        return f"{self.api_url}/api/download/models/4201?type=Model&format=SafeTensor"

    def _serve(self, answer: Any) -> str:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    def _api(self, h: BaseHTTPRequestHandler) -> None:
        self.api_seen.append(dict(h.headers.items()))
        if h.headers.get("Authorization") != f"Bearer {TOKEN}":
            h.send_response(401)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_response(302)
        h.send_header("Location", f"{self.storage_url}/files/blob-77?X-Amz-Signature=abc")
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _storage(self, h: BaseHTTPRequestHandler) -> None:
        self.storage_seen.append(dict(h.headers.items()))
        start = 0
        wanted = re.match(r"bytes=(\d+)-$", h.headers.get("Range") or "")
        if wanted:
            start = int(wanted.group(1))
        body = self.data[start:]
        h.send_response(206 if wanted else 200)
        if wanted:
            h.send_header("Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")
        h.send_header("Content-Disposition", f'attachment; filename="{self.name}"')
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        cut, self.cut_after = self.cut_after, None
        h.wfile.write(body if cut is None else body[:cut])
        h.wfile.flush()
        if cut is not None:
            h.close_connection = True

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
