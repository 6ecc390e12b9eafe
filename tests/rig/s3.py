"""A local S3 server for tests and benchmarks: moto's server, with every request counted.

The counting sits in the server (a WSGI wrapper around moto's app), not in the client, so it sees
requests from subprocesses too: a test can run `packager upload` or four `python -m volume_sync pull`
processes and still assert "one download" or "the re-run made 1 request and sent 0 bytes".
An optional per-request delay throttles uploads so that a test can kill an uploader mid-way.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from tests.rig.http_server import InFlight


@dataclass(frozen=True)
class Request:
    """One request as the server saw it. `op` is a coarse S3 operation name, enough for assertions."""

    method: str
    path: str
    query: str
    op: str
    bytes_in: int
    bytes_out: int
    status: int


_OBJECT_OPS = {"GET": "GetObject", "HEAD": "HeadObject", "PUT": "PutObject", "DELETE": "DeleteObject"}


def _op(method: str, path: str, query: str) -> str:
    q = parse_qs(query, keep_blank_values=True)
    on_object = path.strip("/").count("/") >= 1
    if method == "PUT" and "partNumber" in q:
        return "UploadPart"
    if method == "POST" and "uploads" in q:
        return "CreateMultipartUpload"
    if method == "POST" and "uploadId" in q:
        return "CompleteMultipartUpload"
    if method == "DELETE" and "uploadId" in q:
        return "AbortMultipartUpload"
    if method == "GET" and "uploads" in q:
        return "ListMultipartUploads"
    if method == "GET" and ("list-type" in q or not on_object):
        return "ListObjects"
    if on_object:
        return _OBJECT_OPS.get(method, method)
    return f"{method}Bucket"  # CreateBucket is PUTBucket; DeleteObjects is POSTBucket


@dataclass
class Traffic:
    """Every request the server answered since the last `reset()`."""

    requests: list[Request] = field(default_factory=list)
    # Seconds to sleep before answering a request that `throttle` selects (None: no throttle).
    delay_s: float = 0.0
    throttle: Callable[[Request], bool] | None = None
    # Requests the server has begun and not yet answered (a killed client's last ones included).
    in_flight: InFlight = field(default_factory=InFlight)
    # Once `hold_from` answers True for a request, that request and every later one waits, and is
    # then refused with 503 unanswered by the store: a client can be killed at an exact point.
    hold_from: Callable[[Request], bool] | None = None
    holding: int = 0
    _held: bool = False
    _release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        self._release.set()
        with self._lock:
            self.requests.clear()
            self.delay_s = 0.0
            self.throttle = None
            self.hold_from = None
            self._held = False

    def held(self, probe: Request) -> bool:
        """True when this request is to wait for `release()` (see `hold_from`); latches."""
        hold_from = self.hold_from
        if hold_from is None:
            return False
        start = self._held or hold_from(probe)  # hold_from may read the record: not under the lock
        with self._lock:
            if start and not self._held:
                self._held = True
                self._release.clear()
            if self._held:
                self.holding += 1
            return self._held

    def wait_released(self) -> None:
        self._release.wait(timeout=120)
        with self._lock:
            self.holding -= 1

    def release(self) -> None:
        """Let every held request go (each answered 503, the store untouched)."""
        self._release.set()

    def record(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    def select(self, bucket: str | None = None, op: str | None = None) -> list[Request]:
        with self._lock:
            reqs = list(self.requests)
        if bucket is not None:
            reqs = [r for r in reqs if r.path == f"/{bucket}" or r.path.startswith(f"/{bucket}/")]
        if op is not None:
            reqs = [r for r in reqs if r.op == op]
        return reqs

    def count(self, bucket: str | None = None, op: str | None = None) -> int:
        return len(self.select(bucket, op))

    def bytes_in(self, bucket: str | None = None) -> int:
        """Body bytes clients sent (uploads)."""
        return sum(r.bytes_in for r in self.select(bucket))

    def bytes_out(self, bucket: str | None = None, op: str | None = None) -> int:
        """Body bytes the server sent back (downloads and listings)."""
        return sum(r.bytes_out for r in self.select(bucket, op))


class _CountingInput:
    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.count = 0

    def read(self, *args: Any) -> bytes:
        data: bytes = self._stream.read(*args)
        self.count += len(data)
        return data

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._stream.readline(*args)
        self.count += len(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self.count += len(line)
            yield line


class _Counting:
    """WSGI middleware: measures each request's body in and out, and applies the throttle."""

    def __init__(self, app: Any, traffic: Traffic) -> None:
        self.app = app
        self.traffic = traffic

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
        op = _op(method, path, query)
        with self.traffic.in_flight.request():
            return self._answer(environ, start_response, method, path, query, op)

    def _answer(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        method: str,
        path: str,
        query: str,
        op: str,
    ) -> list[bytes]:
        probe = Request(method, path, query, op, 0, 0, 0)
        if self.traffic.held(probe):
            self.traffic.wait_released()
            body = b"<Error><Code>SlowDown</Code><Message>held by the test rig</Message></Error>"
            start_response("503 Slow Down", [("Content-Type", "application/xml")])
            self.traffic.record(Request(method, path, query, op, 0, len(body), 503))
            return [body]
        throttle = self.traffic.throttle
        if throttle is not None and self.traffic.delay_s and throttle(probe):
            time.sleep(self.traffic.delay_s)
        stream = _CountingInput(environ["wsgi.input"])
        environ["wsgi.input"] = stream
        status: list[int] = [0]

        def _start(status_line: str, headers: Any, exc_info: Any = None) -> Any:
            status[0] = int(status_line.split()[0])
            return start_response(status_line, headers, exc_info)

        # The whole answer is gathered before it is recorded and sent, so a request is on the record
        # by the time its client sees the response (a test may reset the record right after).
        body = self.app(environ, _start)
        try:
            chunks = list(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        out = sum(len(c) for c in chunks)
        self.traffic.record(Request(method, path, query, op, stream.count, out, status[0]))
        return chunks


class _QuietHandler(MotoRequestHandler):
    """No access log: the traffic record says more, and test output stays readable."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class CountingMotoServer(ThreadedMotoServer):
    """moto's threaded server on a free loopback port, its traffic recorded in `.traffic`."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(ip_address="127.0.0.1", port=port, verbose=False)
        self.traffic = Traffic()

    def _server_entry(self) -> None:
        app = _Counting(DomainDispatcherApplication(create_backend_app), self.traffic)
        self._server = make_server(self._ip_address, self._port, app, True, request_handler=_QuietHandler)
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def endpoint_url(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"


# How a fp16 SD 1.x artifact splits its bytes (unet, text encoder, vae); the rest are small files.
_WEIGHT_SHARES = (
    ("unet/diffusion_pytorch_model.safetensors", 0.80),
    ("text_encoder/model.safetensors", 0.12),
    ("vae/diffusion_pytorch_model.safetensors", 0.08),
)
_SMALL_FILES = (
    "model_index.json",
    "unet/config.json",
    "text_encoder/config.json",
    "vae/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
)


MIN_PART = 5 * 1024 * 1024


def synthetic_artifact(
    folder: Path, total_bytes: int, name: str = "synthetic", seed: int = 0, components: Any = None
) -> tuple[Path, str]:
    """An artifact of about `total_bytes` of random weights in the diffusers layout, with a manifest.

    For transfer tests and benchmarks, which care about sizes and file counts, not about tensors.
    `components` (name → ComponentPrecision) makes it a schema-2 manifest.
    Returns (artifact_dir, artifact_id).
    """
    from artifact_format import manifest as mf

    rng = random.Random(seed)
    entries = []
    for rel, share in _WEIGHT_SHARES:
        entries.append(_write_random(folder, rel, max(1, int(total_bytes * share)), rng))
    for rel in _SMALL_FILES:
        entries.append(_write_random(folder, rel, rng.randint(200, 4000), rng))
    manifest = mf.Manifest(
        name=name,
        source={"kind": "synthetic", "seed": seed},
        precision="fp16",
        pipeline="StableDiffusionPipeline",
        files=tuple(entries),
        packing={"converter": "synthetic"},
        components=dict(components or {}),
    )
    return folder, mf.write(manifest, folder)


def _write_random(folder: Path, rel: str, size: int, rng: random.Random) -> Any:
    from artifact_format import manifest as mf

    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            block = rng.randbytes(min(left, 8 * 1024 * 1024))
            digest.update(block)
            fh.write(block)
            left -= len(block)
    return mf.FileEntry(rel, size, digest.hexdigest())


def load_artifact(folder: Path) -> Any:
    """A `packager.artifact.Artifact` for an artifact directory (its manifest says the rest)."""
    from artifact_format import manifest as mf
    from packager.convert.artifact import Artifact

    manifest = mf.load(folder)
    return Artifact(name=manifest.name, id=mf.artifact_id_of(folder), dir=folder, manifest=manifest)


def demo_artifact(tmp_path_factory: Any, total_bytes: int) -> Any:
    """A synthetic artifact named demo in a fresh temp folder, loaded (for module-scoped fixtures)."""
    folder, _ = synthetic_artifact(tmp_path_factory.mktemp("art") / "artifact", total_bytes, name="demo")
    return load_artifact(folder)


def small_parts() -> Any:
    """S3's smallest parts (5 MiB): a 12 MiB artifact's biggest file goes multipart."""
    from packager.store.transfer import TransferSettings

    return TransferSettings(multipart_threshold=MIN_PART, chunk_size=MIN_PART, concurrency=4)


def main() -> None:
    """`python -m tests.rig.s3`: serve until killed, printing the endpoint (for benchmarks)."""
    import sys

    server = CountingMotoServer()
    server.start()
    print(server.endpoint_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        sys.exit(0)


if __name__ == "__main__":
    main()
