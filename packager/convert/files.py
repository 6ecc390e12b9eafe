"""File plumbing for the converter: safe relative paths, plain files copied with their sha256, and
the temp-directory-then-rename that makes an artifact appear whole or not at all."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from artifact_format import manifest as mf
from packager.errors import ConvertError

_COPY_CHUNK = 1 << 20


def checked_relpath(rel: str) -> str:
    try:
        return mf.safe_relpath(rel)
    except mf.ManifestError:
        raise ConvertError(
            f"refusing source file {rel!r}: its path would escape the artifact directory"
        ) from None


def read_json(path: Path, label: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{label}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{label}: not a JSON object")
    return data


def _create(tmp: Path, rel: str) -> int:
    target = tmp / rel
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.fchmod(fd, 0o644)
    return fd


def write_bytes(tmp: Path, rel: str, data: bytes) -> mf.FileEntry:
    fd = _create(tmp, rel)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return mf.FileEntry(rel, len(data), hashlib.sha256(data).hexdigest())


def copy_file(src: Path, tmp: Path, rel: str) -> mf.FileEntry:
    """Copy a file byte for byte, hashing what is written."""
    sha = hashlib.sha256()
    size = 0
    fd = _create(tmp, rel)
    try:
        with open(src, "rb") as fh:
            while chunk := fh.read(_COPY_CHUNK):
                sha.update(chunk)
                size += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return mf.FileEntry(rel, size, sha.hexdigest())


def remove_stale_temps(out_dir: Path) -> None:
    """Delete temp dirs that killed conversions left beside `out_dir` (their process is gone)."""
    prefix = f".{out_dir.name}.tmp-"
    for path in out_dir.parent.glob(f"{prefix}*"):
        pid_text = path.name[len(prefix) :].split("-")[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            continue


def rename_into_place(tmp: Path, out_dir: Path) -> None:
    os.chmod(tmp, 0o755)
    old = None
    if out_dir.exists() or out_dir.is_symlink():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    _fsync_dir(out_dir.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
