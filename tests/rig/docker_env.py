"""An offline Docker rig for the end-to-end tier and the image benchmark.

These machines cannot pull images or reach package indexes from inside a build, so the rig brings
its own: a private dockerd (socket, data root and exec root of its own), a Python base image made
with debootstrap + `docker import`, a wheelhouse of the worker's requirements served over plain
HTTP on 127.0.0.1 for `pip install --no-index --find-links`, and Debian's `docker-registry` on a
loopback port. See the team's docker-offline notes for the measurements behind each choice.

What is slow to make is cached under build/docker-rig/ (the engine's data root keeps the base image
and the build cache; the wheelhouse is a folder); what runs is started per session and stopped by
its pid.

Standalone:
    python -m tests.rig.docker_env up      # start and keep running; prints `export DOCKER_HOST=...`
    python -m tests.rig.docker_env down    # stop what `up` started
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localbase:py311"
# bookworm's python3 is 3.11, the host's too: wheels downloaded on the host install in the image.
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
# The pip layer's cache key includes the find-links URL, so the wheelhouse prefers one fixed port:
# a later session then reuses the slow torch layer instead of reinstalling it.
PREFERRED_WHEEL_PORT = 18088
TOOLS = {
    "dockerd": "docker.io",
    "docker": "docker.io",
    "docker-registry": "docker-registry",
    "debootstrap": "debootstrap",
}
INSTALL_HINT = "apt-get install -y docker.io docker-registry debootstrap (or run .ci/docker-setup.sh)"


class RigError(RuntimeError):
    """The rig cannot be started here; the message says what is missing."""


def state_dir() -> Path:
    return Path(os.environ.get("PACKAGER_DOCKER_RIG", REPO / "build" / "docker-rig")).resolve()


def missing_tools() -> list[str]:
    return [name for name in TOOLS if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists()]


def _which(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port(preferred: int | None = None) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RigError("no free port on 127.0.0.1")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def engine_alive(docker_host: str) -> bool:
    import docker

    try:
        client = docker.DockerClient(base_url=docker_host, timeout=5)
        client.ping()
        client.close()
    except Exception:
        return False
    return True


# --- engine -------------------------------------------------------------------------------------


@dataclass
class Engine:
    docker_host: str
    pid: int | None  # None: an engine someone else runs (DOCKER_HOST or a rig left `up`)
    exec_root: Path | None = None

    def stop(self) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _pid_alive(self.pid) and time.monotonic() < deadline:
            _reap(self.pid)
            time.sleep(0.2)
        if _pid_alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        _reap(self.pid)
        if self.exec_root is not None:
            netns = self.exec_root / "netns" / "default"
            if netns.exists():
                subprocess.run(["umount", str(netns)], capture_output=True, check=False)
            shutil.rmtree(self.exec_root, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (state_dir() / "engine.json").unlink()
        self.pid = None


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def start_engine() -> Engine:
    """A live engine: DOCKER_HOST's if it answers, the rig's own if one is up, else a new dockerd."""
    host = os.environ.get("DOCKER_HOST")
    if host and engine_alive(host):
        return Engine(host, None)
    state = state_dir()
    with _locked(state / "engine.lock"):
        record = state / "engine.json"
        if record.exists():
            info = json.loads(record.read_text())
            if _pid_alive(info["pid"]) and engine_alive(info["docker_host"]):
                return Engine(info["docker_host"], None)
        missing = missing_tools()
        if missing:
            raise RigError(f"the Docker rig needs {', '.join(missing)}: {INSTALL_HINT}")
        if os.geteuid() != 0:
            raise RigError("starting a private dockerd needs root (or set DOCKER_HOST to a running engine)")
        # The exec root holds containerd's unix sockets, whose paths must stay under 108 bytes.
        exec_root = Path(tempfile.mkdtemp(prefix="pkdx-", dir="/tmp"))
        data_root = state / "data"
        data_root.mkdir(parents=True, exist_ok=True)
        docker_host = f"unix://{exec_root}/docker.sock"
        log = open(state / "dockerd.log", "ab")  # noqa: SIM115 - the daemon keeps writing to it
        proc = subprocess.Popen(
            [
                _which("dockerd"),
                "--storage-driver=overlay2",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                f"--data-root={data_root}",
                f"--exec-root={exec_root}",
                f"--pidfile={exec_root}/dockerd.pid",
                f"--host={docker_host}",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        engine = Engine(docker_host, proc.pid, exec_root)
        deadline = time.monotonic() + 60
        while not engine_alive(docker_host):
            if proc.poll() is not None or time.monotonic() > deadline:
                engine.stop()
                tail = (state / "dockerd.log").read_text(errors="replace").splitlines()[-5:]
                raise RigError("dockerd did not start: " + " | ".join(tail))
            time.sleep(0.2)
        record.write_text(
            json.dumps({"pid": proc.pid, "docker_host": docker_host, "exec_root": str(exec_root)})
        )
        return engine


# --- base image ---------------------------------------------------------------------------------


def debian_mirror() -> str:
    """The mirror apt already uses here (the only Debian source these machines reach)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                return parts[1]
    return "http://deb.debian.org/debian"


def ensure_base_image(docker_host: str, tag: str = BASE_IMAGE) -> str:
    """`localbase:py311`: Debian bookworm with python3 and venv, made offline (cached in the engine)."""
    import docker

    client = docker.DockerClient(base_url=docker_host)
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    finally:
        client.close()
    state = state_dir()
    with _locked(state / "base.lock"), tempfile.TemporaryDirectory(dir=state, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        target = [str(rootfs), debian_mirror()]
        subprocess.run(
            [_which("debootstrap"), "--variant=minbase", f"--include={BASE_PACKAGES}", DEBIAN_SUITE, *target],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        env = {**os.environ, "DOCKER_HOST": docker_host}
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            [_which("docker"), "import", "--change", "ENV LANG=C.UTF-8", "-", tag],
            stdin=tar.stdout,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0:
            raise RigError("tar of the debootstrap root failed")
    return tag


# --- wheelhouse ---------------------------------------------------------------------------------


def torch_spec() -> str:
    """The torch the host runs (its CPU build lies on local disk), so the image runs the same one."""
    constraint = REPO / ".venv" / "torch-constraint.txt"
    if constraint.exists():
        return constraint.read_text().strip()
    return "torch==2.13.0"


def ensure_wheelhouse(requirements: Path = REPO / "worker_runtime" / "requirements.txt") -> Path:
    """Wheels for the worker's requirements plus CPU torch, downloaded once per requirements set."""
    folder = state_dir() / "wheelhouse"
    spec = torch_spec()
    key = hashlib.sha256(requirements.read_bytes() + spec.encode()).hexdigest()
    stamp = folder / ".complete"
    if stamp.exists() and stamp.read_text() == key:
        return folder
    with _locked(state_dir() / "wheelhouse.lock"):
        if stamp.exists() and stamp.read_text() == key:
            return folder
        stamp.unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        # pip's warnings about this machine's mirrors are noise unless the download fails.
        pip = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:"]
        done = subprocess.run(
            [*pip, "-d", str(folder), "-r", str(requirements), spec],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RigError(f"pip download of the wheelhouse failed: {done.stderr.strip()[-500:]}")
        stamp.write_text(key)
    return folder


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class FileServer:
    url: str
    server: http.server.ThreadingHTTPServer
    thread: threading.Thread

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_folder(folder: Path, preferred_port: int | None = PREFERRED_WHEEL_PORT) -> FileServer:
    """Plain HTTP on 127.0.0.1 (HTTPS from inside a build fails here: TLS is intercepted)."""
    port = _free_port(preferred_port)

    def handler(*args: object, **kwargs: object) -> _QuietHandler:
        return _QuietHandler(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="wheelhouse")
    thread.start()
    return FileServer(f"http://127.0.0.1:{port}/", server, thread)


# --- registry -----------------------------------------------------------------------------------


@dataclass
class Registry:
    address: str  # host:port, usable as an image repository prefix
    proc: subprocess.Popen[bytes]
    root: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def start_registry() -> Registry:
    """Debian's docker-registry on a free loopback port (loopback registries need no TLS)."""
    import urllib.request

    root = Path(tempfile.mkdtemp(prefix="registry-", dir=state_dir()))
    port = _free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {root}/data}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    proc = subprocess.Popen(
        [_which("docker-registry"), "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(root / "registry.log", "wb"),  # noqa: SIM115 - the server keeps writing to it
    )
    registry = Registry(f"127.0.0.1:{port}", proc, root)
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2):
                return registry
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                registry.stop()
                raise RigError("docker-registry did not start") from None
            time.sleep(0.2)


# --- the whole rig ------------------------------------------------------------------------------


@dataclass
class DockerRig:
    docker_host: str
    base_image: str
    wheelhouse: Path
    find_links: str
    registry: str
    _stops: list[object] = field(default_factory=list, repr=False)

    def client(self):  # type: ignore[no-untyped-def]
        import docker

        return docker.DockerClient(base_url=self.docker_host, timeout=600)

    def env(self) -> dict[str, str]:
        """The environment a subprocess (`packager build`, `docker`) needs to reach the rig's engine."""
        return {**os.environ, "DOCKER_HOST": self.docker_host, "DOCKER_BUILDKIT": "0"}

    def stop(self) -> None:
        while self._stops:
            part = self._stops.pop()
            with contextlib.suppress(Exception):
                part.stop()  # type: ignore[attr-defined]


def start() -> DockerRig:
    """Engine, base image, wheelhouse server and registry; `stop()` ends what this call started."""
    engine = start_engine()
    rig = DockerRig(engine.docker_host, "", Path(), "", "", [engine])
    try:
        rig.base_image = ensure_base_image(engine.docker_host)
        rig.wheelhouse = ensure_wheelhouse()
        server = serve_folder(rig.wheelhouse)
        rig._stops.append(server)
        rig.find_links = server.url
        registry = start_registry()
        rig._stops.append(registry)
        rig.registry = registry.address
    except BaseException:
        rig.stop()
        raise
    return rig


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "up"
    if command == "up":
        engine = start_engine()
        ensure_base_image(engine.docker_host)
        ensure_wheelhouse()
        print(f"export DOCKER_HOST={engine.docker_host}")
        return 0
    if command == "down":
        record = state_dir() / "engine.json"
        if not record.exists():
            print("no rig engine is up", file=sys.stderr)
            return 0
        info = json.loads(record.read_text())
        Engine(info["docker_host"], info["pid"], Path(info["exec_root"])).stop()
        return 0
    print("usage: python -m tests.rig.docker_env up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
