"""Put an artifact from the store onto a mounted network volume, once, however many workers ask.

The first worker to arrive takes the artifact's lock on the volume and fetches it (staged beside the
final directory, verified, renamed into place), then writes `.ready`; the others wait for `.ready`.
If the holder dies, its lock goes stale, the next worker takes it over and resumes from the files
already verified. Readers treat an artifact directory without `.ready` as absent.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from artifact_format import manifest as mf
from artifact_format.vocab import short_id
from volume_sync.fetch import FetchError, VerifyFailed, fetch_artifact, open_source, staging_dir
from volume_sync.lock import VolumeLock, read_holder

DEFAULT_MOUNT = "/runpod-volume"
# A holder refreshes its lock every few seconds; one silent for this long has died.
DEFAULT_LOCK_STALE_S = 60.0
POLL_S = 0.25


class PullError(Exception):
    """The artifact could not be put on the volume. One line; exit code 2 (1 for a failed check)."""

    exit_code = 2


class PullVerifyError(PullError):
    exit_code = 1


def lock_path(mount: str | os.PathLike[str], name: str, artifact_id: str) -> Path:
    """The artifact's lock on the volume: beside its directory, so `prune` can see it too."""
    return _lock_beside(mf.volume_path(mount, name, artifact_id))


def _lock_beside(artifact_dir: Path) -> Path:
    return artifact_dir.parent / f".{artifact_dir.name}.lock"


def is_ready(artifact_dir: Path) -> bool:
    return (artifact_dir / mf.READY_MARKER).is_file()


def pull(
    store_uri: str,
    mount: str | os.PathLike[str],
    *,
    timeout_s: float | None = None,
    quiet: bool = True,
    lock_stale_s: float = DEFAULT_LOCK_STALE_S,
    client: Any = None,
) -> Path:
    """Make `<mount>/models/<name>/<id>/` a complete, verified copy of the artifact at `store_uri`.

    Args:
        store_uri: the artifact's prefix in the store, `s3://bucket/.../<name>/<id>` or a local
            directory of the same shape.
        mount: where the network volume is mounted (`/runpod-volume` on serverless workers).
        timeout_s: give up waiting for another worker's pull after this long (None: wait on).
        quiet: no progress lines on stderr.
        lock_stale_s: a lock not refreshed for this long belongs to a dead worker.
        client: an S3 client to use instead of one from boto3's chain (tests, the packager).

    Returns the artifact directory, with `.ready` in it.

    Raises:
        PullError: the store is unreachable, refuses, lacks the artifact, or the wait timed out.
        PullVerifyError: the store's copy does not match its manifest (nothing is left looking complete).
    """
    try:
        source, name, artifact_id = open_source(store_uri, client=client)
    except FetchError as exc:
        raise PullError(str(exc)) from None
    final = mf.volume_path(mount, name, artifact_id)
    if is_ready(final):
        return final
    if not Path(mount).is_dir():
        raise PullError(f"{mount}: no such directory (is the network volume mounted? see --mount)")
    try:
        return _pull_once(source, name, artifact_id, final, timeout_s, quiet, lock_stale_s)
    except OSError as exc:
        raise PullError(
            f"{exc.filename or final}: {exc.strerror or exc} (on the volume at {mount})"
        ) from None


def _pull_once(
    source: Any,
    name: str,
    artifact_id: str,
    final: Path,
    timeout_s: float | None,
    quiet: bool,
    lock_stale_s: float,
) -> Path:
    """Take the lock and fetch, or wait for whoever holds it; the caller has checked `.ready`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = VolumeLock(_lock_beside(final), stale_s=lock_stale_s)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    said_waiting = False
    while True:
        if lock.acquire():
            with lock:
                if is_ready(final):
                    return final
                _fetch_locked(source, name, artifact_id, final, lock, quiet)
                return final
        if is_ready(final):
            return final
        holder = read_holder(lock.path) or {}
        who = f"{holder.get('host', '?')} pid {holder.get('pid', '?')}"
        if deadline is not None and time.monotonic() > deadline:
            raise PullError(
                f"timed out after {timeout_s:g}s waiting for {who} to finish pulling "
                f"{name}/{short_id(artifact_id)} (its lock: {lock.path}; it goes stale after "
                f"{lock_stale_s:g}s without a heartbeat)"
            )
        if not quiet and not said_waiting:
            _say(f"waiting for {who}, which is pulling {name}/{short_id(artifact_id)}")
            said_waiting = True
        time.sleep(POLL_S)


def _fetch_locked(
    source: Any, name: str, artifact_id: str, final: Path, lock: VolumeLock, quiet: bool
) -> None:
    staging = staging_dir(final)
    if final.exists():
        # A directory without `.ready`: an earlier pull renamed it and died before the marker.
        # Move it back to staging so its files are checked again, then continue as usual.
        if staging.exists():
            shutil.rmtree(final)
        else:
            os.rename(final, staging)

    def check_lock() -> None:
        if not lock.held():
            raise PullError(
                f"lost the lock {lock.path} (another worker took it over as stale); "
                "its pull will finish the artifact"
            )

    def on_file(entry: mf.FileEntry) -> None:
        if not quiet:
            _say(f"verified {entry.path} ({entry.size} bytes)")

    try:
        result = fetch_artifact(source, name, artifact_id, final, on_file=on_file, before_commit=check_lock)
    except VerifyFailed as exc:
        raise PullVerifyError(str(exc)) from None
    except FetchError as exc:
        raise PullError(str(exc)) from None
    write_ready(final, artifact_id)
    if not quiet:
        _say(
            f"pulled {name}/{short_id(artifact_id)} to {final}: {result.files_fetched} files "
            f"({result.bytes_fetched} bytes) fetched, {result.files_kept} kept from an earlier try"
        )


def write_ready(artifact_dir: Path, artifact_id: str) -> None:
    """The completion marker, written last and atomically; its mtime orders artifacts for `prune`."""
    marker = artifact_dir / mf.READY_MARKER
    tmp = artifact_dir / f".{mf.READY_MARKER}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(artifact_id + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, marker)


def _say(message: str) -> None:
    print(f"volume_sync: {message}", file=sys.stderr, flush=True)
