"""A lock file on the network volume, so that workers starting together download an artifact once.

A network volume is shared by machines that share nothing else, so the lock is a plain file created
with O_CREAT|O_EXCL (atomic on the filesystems RunPod mounts) holding who took it and when. The
holder refreshes its mtime while it works; a lock whose mtime is older than `stale_s`, or whose
holder is a dead process on this same host, is stale and may be taken over. Takeover happens under a
second, short-lived guard file, so two waiters that both notice a stale lock cannot both take it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

# A holder refreshes its lock this often (as a fraction of the stale timeout), so a live pull of any
# size never looks stale; only a holder that stopped (killed, machine gone) does.
HEARTBEAT_FRACTION = 0.25
# The takeover guard is held for a few file operations; if it is older than this, its holder died.
GUARD_STALE_S = 30.0


class VolumeLock:
    def __init__(self, path: Path, *, stale_s: float) -> None:
        self.path = path
        self.stale_s = stale_s
        self.host = socket.gethostname()
        self.token = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex}"
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- acquiring ---------------------------------------------------------------------------
    def acquire(self) -> bool:
        """Take the lock if it is free or stale; False when someone else holds it."""
        if self._create():
            return True
        if not self.is_stale():
            return False
        return self._take_over()

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        info = {"host": self.host, "pid": os.getpid(), "time": time.time(), "token": self.token}
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh)
            fh.flush()
            os.fsync(fh.fileno())
        self._start_heartbeat()
        return True

    def _take_over(self) -> bool:
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _age(guard) > GUARD_STALE_S:
                guard.unlink(missing_ok=True)
            return False
        os.close(fd)
        try:
            # Look again under the guard: the lock may have been replaced by a live one meanwhile.
            if not self.is_stale():
                return False
            self.path.unlink(missing_ok=True)
            return self._create()
        finally:
            guard.unlink(missing_ok=True)

    # -- inspecting --------------------------------------------------------------------------
    def holder(self) -> dict[str, Any] | None:
        """What the lock file says about its holder (None when free or unreadable)."""
        return read_holder(self.path)

    def is_stale(self) -> bool:
        return is_stale(self.path, self.stale_s)

    def held(self) -> bool:
        """True while the lock file is still ours (nobody took it over while we were paused)."""
        info = self.holder()
        return bool(info) and info.get("token") == self.token  # type: ignore[union-attr]

    # -- holding -----------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        interval = max(0.2, min(30.0, self.stale_s * HEARTBEAT_FRACTION))
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(interval):
                if not self.held():
                    return
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._beat = threading.Thread(target=beat, name="volume-lock-heartbeat", daemon=True)
        self._beat.start()

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        if self.held():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> VolumeLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_stale(path: Path, stale_s: float) -> bool:
    """A lock nobody is refreshing, or one held by a process that no longer exists on this host."""
    age = _age(path)
    if age < 0:
        return False  # gone: not stale, just free
    if age > stale_s:
        return True
    info = read_holder(path)
    if info and info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        return not _pid_alive(int(info["pid"]))
    return False


def is_held(path: Path, stale_s: float) -> bool:
    """Someone is working under this lock right now (it exists and is not stale)."""
    return path.exists() and not is_stale(path, stale_s)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return -1.0


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) still answers signal 0 but will never finish.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True
