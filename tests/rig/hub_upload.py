"""The upload side of the local hub: what huggingface_hub 2.x sends to publish through git LFS.

`HfApi.create_repo`, `create_commit` (preupload, the LFS batch API, single-part PUTs, the ndjson
commit), `create_tag` and `list_repo_refs` run against it unchanged. The Xet path is not served:
tests turn it off with huggingface_hub's `HF_HUB_DISABLE_XET` switch, and the batch endpoint
refuses a request that asks only for Xet.

Strict where the hub is: writing needs a known token with access to the repo (401 without one);
a commit onto a branch that does not exist answers `RevisionNotFound`; a commit whose
`parentCommit` is no longer the branch head answers 412; an `lfsFile` whose object was never
uploaded, or whose upload did not hash to its oid, is refused; deleting a missing file answers
`EntryNotFound`; a tag that exists answers 409.

Bytes received are counted per repo: LFS PUT bodies and the decoded content of regular files in
commits, so tests can assert that a re-publish sent nothing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What a new repo's first commit holds on the hub: a `.gitattributes` routing weights to LFS.
GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.ckpt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.onnx filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pth filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)
COMMIT_RACE_MESSAGE = "A commit has happened since. Please refresh and try again."
_CHUNK = 1024 * 1024


@dataclass
class Received:
    """What clients sent: body bytes per repo and every LFS object uploaded."""

    bytes_by_repo: Counter[str] = field(default_factory=Counter)
    lfs_puts: list[tuple[str, str, int]] = field(default_factory=list)  # (repo, oid, bytes)
    commits: list[tuple[str, str]] = field(default_factory=list)  # (repo, commit sha)


@dataclass(frozen=True)
class _PendingUpload:
    repo_id: str
    oid: str
    size: int


class UploadSide:
    """Mixed into LocalHub: the write endpoints, over the same repos, blobs and lock."""

    # Provided by LocalHub.
    repos: dict[str, Any]
    tokens: frozenset[str]
    blob_dir: Path
    _lock: threading.RLock
    _repo_for: Callable[..., Any]
    _resolve: Callable[..., Any]
    _granted: Callable[..., bool]
    put_blob: Callable[..., Any]
    _new_commit: Callable[..., str]
    create_repo: Callable[..., Any]

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _init_upload_side(self) -> None:
        self.received = Received()
        self._pending: dict[str, _PendingUpload] = {}
        # oid → Blob, per repo: what the LFS batch API answers "already there" for.
        self._lfs_objects: dict[str, dict[str, Any]] = {}

    # ---- what tests assert -----------------------------------------------------------------------

    def bytes_received(self, repo_id: str | None = None) -> int:
        with self._lock:
            if repo_id is None:
                return sum(self.received.bytes_by_repo.values())
            return self.received.bytes_by_repo[repo_id]

    # ---- endpoints --------------------------------------------------------------------------------

    def api_create_repo(self, token: str | None, payload: Mapping[str, Any]) -> dict[str, Any]:
        from tests.rig.localhub import HubError

        if token is None:
            raise HubError(401, None, "Invalid username or password.")
        if payload.get("type", "model") not in (None, "model"):
            raise HubError(400, None, f"the local hub serves model repos only, not {payload.get('type')!r}")
        name, org = payload.get("name"), payload.get("organization")
        if not isinstance(name, str) or not name:
            raise HubError(400, None, "name is required")
        repo_id = f"{org}/{name}" if org else name
        private = payload.get("visibility") == "private" or payload.get("private") is True
        with self._lock:
            if repo_id in self.repos:
                raise HubError(
                    409, None, "You already created this model repo", body={"url": f"{self.url}/{repo_id}"}
                )
            self.create_repo(repo_id, private=private, granted=[token] if private else None)
            first = {".gitattributes": self.put_blob(GITATTRIBUTES)}
            self._new_commit(repo_id, "main", first, "initial commit")
        return {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id}

    def preupload(
        self, repo_id: str, revision: str, payload: Mapping[str, Any], token: str | None
    ) -> dict[str, Any]:
        from tests.rig.localhub import HubError

        with self._lock:
            repo = self._writable(repo_id, token)
            head = self._resolve(repo, revision)
            files = head.files
        out = []
        for item in payload.get("files") or []:
            path, size = item.get("path"), item.get("size")
            if not isinstance(path, str) or not isinstance(size, int):
                raise HubError(400, None, "each file needs a path and a size")
            sample = base64.b64decode(item.get("sample") or "")
            lfs = _wants_lfs(path, size, sample)
            existing = files.get(path)
            oid = None
            if existing is not None:
                oid = existing.sha256 if existing.is_lfs(path) else existing.oid
            out.append(
                {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return {"files": out, "commitOid": head.sha}

    def lfs_batch(self, repo_id: str, payload: Mapping[str, Any], token: str | None) -> dict[str, Any]:
        from tests.rig.localhub import HubError

        if payload.get("operation") != "upload":
            raise HubError(400, None, "only the upload operation is served")
        transfers = payload.get("transfers") or ["basic"]
        if "basic" not in transfers and "multipart" not in transfers:
            raise HubError(400, None, f"no transfer this hub speaks in {transfers} (Xet is not served)")
        with self._lock:
            self._writable(repo_id, token)
            known = self._known_objects(repo_id)
            objects = []
            for obj in payload.get("objects") or []:
                oid, size = str(obj.get("oid", "")), obj.get("size")
                if len(oid) != 64 or not isinstance(size, int):
                    raise HubError(422, None, "each object needs a sha256 oid and a size")
                entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                if oid not in known:
                    key = secrets.token_hex(16)
                    self._pending[key] = _PendingUpload(repo_id, oid, size)
                    entry["actions"] = {
                        "upload": {"href": f"{self.url}/lfs-upload/{key}", "header": {}},
                        "verify": {"href": f"{self.url}/{repo_id}.git/info/lfs/objects/verify", "header": {}},
                    }
                objects.append(entry)
        return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def lfs_receive(self, key: str, body: io.BufferedIOBase, length: int | None, chunked: bool) -> None:
        """One single-part PUT: stored only when it hashes to the oid the batch answer promised."""
        from tests.rig.localhub import Blob, HubError

        with self._lock:
            pending = self._pending.pop(key, None)
        if pending is None:
            for _ in _body_chunks(body, length, chunked):  # drained, so the connection stays usable
                pass
            raise HubError(403, None, "unknown or used upload URL")
        sha256, size = hashlib.sha256(), 0
        tmp = self.blob_dir / f"upload-{key}.tmp"
        with open(tmp, "wb") as out:
            for chunk in _body_chunks(body, length, chunked):
                sha256.update(chunk)
                size += len(chunk)
                out.write(chunk)
        with self._lock:
            self.received.bytes_by_repo[pending.repo_id] += size
            self.received.lfs_puts.append((pending.repo_id, pending.oid, size))
        if sha256.hexdigest() != pending.oid or size != pending.size:
            tmp.unlink()
            raise HubError(400, None, f"upload of {pending.oid} does not match its oid or size")
        sha1 = hashlib.sha1(b"blob %d\0" % size)
        with open(tmp, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                sha1.update(chunk)
        target = self.blob_dir / pending.oid
        os.replace(tmp, target)
        with self._lock:
            self._lfs_objects.setdefault(pending.repo_id, {})[pending.oid] = Blob(
                pending.oid, sha1.hexdigest(), size, target
            )

    def lfs_verify(self, repo_id: str, payload: Mapping[str, Any], token: str | None) -> dict[str, Any]:
        from tests.rig.localhub import HubError

        with self._lock:
            self._writable(repo_id, token)
            blob = self._known_objects(repo_id).get(str(payload.get("oid")))
        if blob is None or blob.size != payload.get("size"):
            raise HubError(404, None, f"object {payload.get('oid')} was not uploaded")
        return {"success": True}

    def api_commit(
        self, repo_id: str, revision: str, lines: list[dict[str, Any]], token: str | None
    ) -> dict[str, Any]:
        from tests.rig.localhub import HubError

        if not lines or lines[0].get("key") != "header":
            raise HubError(400, None, "the first line of a commit must be its header")
        header = lines[0].get("value") or {}
        message = header.get("summary")
        if not isinstance(message, str) or not message:
            raise HubError(400, None, "a commit needs a summary")
        with self._lock:
            repo = self._writable(repo_id, token)
            if revision not in repo.branches:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            head = repo.branches[revision]
            parent = header.get("parentCommit")
            if parent is not None and parent != head:
                raise HubError(412, None, COMMIT_RACE_MESSAGE)
            files = dict(repo.commits[head].files)
            known = self._known_objects(repo_id)
            received = sum(self._apply(files, known, line) for line in lines[1:])
            sha = self._new_commit(repo_id, revision, files, message)
            self.received.bytes_by_repo[repo_id] += received
            self.received.commits.append((repo_id, sha))
        return {
            "success": True,
            "commitOid": sha,
            "commitUrl": f"{self.url}/{repo_id}/commit/{sha}",
            "hookOutput": "",
        }

    def _apply(self, files: dict[str, Any], known: Mapping[str, Any], line: Mapping[str, Any]) -> int:
        """One commit operation onto `files`; returns the content bytes it carried inline."""
        from tests.rig.localhub import HubError

        key, value = line.get("key"), line.get("value") or {}
        path = value.get("path")
        if not isinstance(path, str) or not path:
            raise HubError(400, None, f"{key}: a path is required")
        if key == "file":
            if value.get("encoding") != "base64":
                raise HubError(400, None, f"{path}: content must be base64")
            content = base64.b64decode(value.get("content") or "")
            files[path] = self.put_blob(content)
            return len(content)
        if key == "lfsFile":
            blob = known.get(str(value.get("oid")))
            if blob is None or ("size" in value and value["size"] != blob.size):
                raise HubError(
                    400,
                    None,
                    "Your push was rejected because an LFS pointer pointed to a file that does not"
                    f" exist: {path}",
                )
            files[path] = blob
            return 0
        if key not in ("deletedFile", "deletedFolder"):
            raise HubError(400, None, f"unknown commit operation {key!r}")
        prefix = path.rstrip("/") + "/"
        gone = [path] if key == "deletedFile" else [name for name in files if name.startswith(prefix)]
        if not gone or any(name not in files for name in gone):
            what = "file" if key == "deletedFile" else "folder"
            raise HubError(404, "EntryNotFound", f"A {what} with this name doesn't exist: {path}")
        for name in gone:
            del files[name]
        return 0

    def api_create_tag(
        self, repo_id: str, revision: str, payload: Mapping[str, Any], token: str | None
    ) -> dict[str, Any]:
        from tests.rig.localhub import HubError

        tag = payload.get("tag")
        if not isinstance(tag, str) or not tag:
            raise HubError(400, None, "tag is required")
        with self._lock:
            repo = self._writable(repo_id, token)
            sha = self._resolve(repo, revision).sha
            if tag in repo.tags:
                raise HubError(409, None, f"Tag {tag} already exists")
            repo.tags[tag] = sha
        return {"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": sha}

    # ---- helpers ------------------------------------------------------------------------------------

    def _writable(self, repo_id: str, token: str | None) -> Any:
        from tests.rig.localhub import HubError

        repo = self._repo_for(repo_id, token)  # 401/404 for a private repo without access
        if not self._granted(repo, token):
            raise HubError(401 if token is None else 403, None, f"You don't have write access to {repo_id}")
        return repo

    def _known_objects(self, repo_id: str) -> dict[str, Any]:
        """LFS objects this repo holds: uploaded ones and those its commits already reference."""
        known = dict(self._lfs_objects.get(repo_id, {}))
        for commit in self.repos[repo_id].commits.values():
            for blob in commit.files.values():
                known.setdefault(blob.sha256, blob)
        return known


def _wants_lfs(path: str, size: int, sample: bytes) -> bool:
    """The hub's rule: `.gitattributes` patterns, anything over 10 MB, or binary content."""
    from tests.rig.localhub import LFS_MIN_SIZE, LFS_SUFFIXES

    return path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE or b"\0" in sample


def _body_chunks(body: io.BufferedIOBase, length: int | None, chunked: bool) -> Iterator[bytes]:
    """The request body in pieces: Content-Length bytes, or HTTP/1.1 chunked transfer coding."""
    if not chunked:
        yield from _exactly(body, length or 0)
        return
    while size := int(body.readline().strip().split(b";")[0] or b"0", 16):
        yield from _exactly(body, size)
        body.readline()  # the CRLF after each chunk
    while body.readline().strip():  # trailers
        pass


def _exactly(body: io.BufferedIOBase, size: int) -> Iterator[bytes]:
    remaining = size
    while remaining > 0:
        chunk = body.read(min(_CHUNK, remaining))
        if not chunk:
            return
        remaining -= len(chunk)
        yield chunk


def read_body(body: io.BufferedIOBase, length: int | None, chunked: bool) -> bytes:
    return b"".join(_body_chunks(body, length, chunked))


def parse_json(data: bytes) -> Any:
    from tests.rig.localhub import HubError

    try:
        return json.loads(data or b"{}")
    except json.JSONDecodeError as exc:
        raise HubError(400, None, f"body is not JSON: {exc.msg}") from None


def parse_ndjson(data: bytes) -> list[dict[str, Any]]:
    from tests.rig.localhub import HubError

    try:
        return [json.loads(line) for line in data.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise HubError(400, None, f"commit body is not ndjson: {exc.msg}") from None
