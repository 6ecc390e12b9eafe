"""A slow network volume on this machine: a read-only FUSE filesystem serving a folder with latency
and bandwidth caps, for the worker's loader tests and `bench/coldstart.py --storage volume-sim`.

What it models (defaults from RunPod's documented network-volume range):
- a latency on every open and on every 4 MiB extent a file handle touches for the first time
  (object-store-backed volumes fetch extents): 2 ms;
- a bandwidth cap per file handle (one stream): 100 MB/s, and one for the whole mount: 400 MB/s.
  Both are token buckets in virtual time: a read reserves its bytes on the handle's and the mount's
  bucket and sleeps until both have delivered them, so parallel readers share the aggregate cap.

It is FUSE, so the kernel sees a network-type filesystem (statfs f_type FUSE_SUPER_MAGIC) and the
worker picks its parallel loader there by itself. Pages stay in the kernel's page cache while the
mount lives (`kernel_cache`), as on a real volume; a fresh mount starts cold.

The filesystem runs in its own process (`python -m tests.rig.slowfs SRC MNT`), never in the test's:
FUSE callbacks in the process that reads the mount would share its GIL. `mounted()` starts it,
waits for the mount, and always unmounts and stops it afterwards. Needs /dev/fuse, fusermount3
(Debian's fuse3) and the mfusepy package.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
EXTENT = 4 * 1024 * 1024
MOUNT_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Limits:
    latency_ms: float = 2.0
    handle_mbps: float = 100.0  # MB/s = 1e6 bytes/s, as volumes are sold
    total_mbps: float = 400.0

    def args(self) -> list[str]:
        return [
            f"--latency-ms={self.latency_ms:g}",
            f"--handle-mbps={self.handle_mbps:g}",
            f"--total-mbps={self.total_mbps:g}",
        ]


class Bucket:
    """Bandwidth in virtual time: `reserve(n)` says when n more bytes will have been delivered.

    Up to `burst_s` of unused time is credited, so the per-request overhead of a Python FUSE
    server does not come on top of the cap: the average rate is the cap, not less.
    """

    def __init__(self, bytes_per_s: float, burst_s: float = 0.05) -> None:
        self.rate = bytes_per_s
        self.burst_s = burst_s
        self.free_at = 0.0
        self.lock = threading.Lock()

    def reserve(self, n: int, now: float) -> float:
        with self.lock:
            start = max(now - self.burst_s, self.free_at)
            self.free_at = start + n / self.rate
            return self.free_at


class _Handle:
    def __init__(self, fd: int, limits: Limits) -> None:
        self.fd = fd
        self.bucket = Bucket(limits.handle_mbps * 1e6)
        self.extents: set[int] = set()
        self.lock = threading.Lock()


def make_operations(root: Path, limits: Limits) -> Any:
    import mfusepy as fuse

    total = Bucket(limits.total_mbps * 1e6)
    latency = limits.latency_ms / 1000.0

    class SlowVolume(fuse.Operations):  # type: ignore[misc]
        use_ns = True

        def __init__(self) -> None:
            self.handles: dict[int, _Handle] = {}
            self.lock = threading.Lock()

        def _real(self, path: str) -> str:
            return os.path.join(root, path.lstrip("/"))

        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            try:
                st = os.lstat(self._real(path))
            except OSError as exc:
                raise fuse.FuseOSError(exc.errno or errno.ENOENT) from None
            keys = ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid")
            out = {k: getattr(st, k) for k in keys}
            out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            return out

        def readdir(self, path: str, fh: Any) -> list[str]:
            return [".", "..", *os.listdir(self._real(path))]

        def open(self, path: str, flags: int) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise fuse.FuseOSError(errno.EROFS)
            time.sleep(latency)
            fd = os.open(self._real(path), os.O_RDONLY)
            with self.lock:
                self.handles[fd] = _Handle(fd, limits)
            return fd

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            handle = self.handles[fh]
            data = os.pread(fh, size, offset)
            now = time.monotonic()
            first, last = offset // EXTENT, max(offset, offset + len(data) - 1) // EXTENT
            with handle.lock:
                new = [e for e in range(first, last + 1) if e not in handle.extents]
                handle.extents.update(new)
            done = max(handle.bucket.reserve(len(data), now), total.reserve(len(data), now))
            delay = done - time.monotonic() + latency * len(new)
            if delay > 0:
                time.sleep(delay)
            return data

        def release(self, path: str, fh: int) -> int:
            with self.lock:
                self.handles.pop(fh, None)
            os.close(fh)
            return 0

        def statfs(self, path: str) -> dict[str, Any]:
            st = os.statvfs(root)
            keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree")
            return {k: getattr(st, k) for k in keys} | {"f_namemax": 255}

    return SlowVolume()


def available() -> str | None:
    """None when a slow volume can be mounted here, else why not."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy cannot load libfuse: {exc}"
    return None


def unmount(mountpoint: Path) -> None:
    tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
    if os.path.ismount(mountpoint):
        subprocess.run([tool, "-u", "-z", str(mountpoint)], capture_output=True, check=False)


@contextmanager
def mounted(source: Path, mountpoint: Path, limits: Limits = Limits()) -> Iterator[Path]:
    """`source` served slowly at `mountpoint` for the duration of the block; always unmounted."""
    why = available()
    if why:
        raise RuntimeError(f"slow volume: {why}")
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = open(mountpoint.with_name(mountpoint.name + ".log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.rig.slowfs", str(source), str(mountpoint), *limits.args()],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = Path(log.name).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"slow volume did not mount at {mountpoint}: {tail}")
            time.sleep(0.05)
        yield mountpoint
    finally:
        unmount(mountpoint)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="serve SRC read-only at MNT, slowly (foreground)")
    parser.add_argument("source", type=Path)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--latency-ms", type=float, default=Limits.latency_ms)
    parser.add_argument("--handle-mbps", type=float, default=Limits.handle_mbps)
    parser.add_argument("--total-mbps", type=float, default=Limits.total_mbps)
    args = parser.parse_args(argv)
    import mfusepy as fuse

    limits = Limits(args.latency_ms, args.handle_mbps, args.total_mbps)
    fuse.FUSE(
        make_operations(args.source.resolve(), limits),
        str(args.mountpoint),
        foreground=True,
        ro=True,
        kernel_cache=True,
        fsname="slowfs",
        max_read=1024 * 1024,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
