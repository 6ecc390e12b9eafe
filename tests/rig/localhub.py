"""A local stand-in for the Hugging Face hub, speaking the HTTP API that huggingface_hub 2.x uses.

The real client (`model_info`, `list_repo_tree`, `hf_hub_download`, `snapshot_download`) runs
against it through `HF_ENDPOINT`, so tests exercise the same requests, headers and error mapping a
user's machine does. It is strict where the hub is: an unknown revision answers `RevisionNotFound`,
a missing repo `RepoNotFound` (401 without a token, as the hub does), a gated repo refuses downloads
without a granted token, and an unknown token is refused as invalid credentials.

Endpoints served (all under the server's root URL):

- `GET /api/models/{repo}` and `GET /api/models/{repo}/revision/{rev}`: model info with `sha` and
  `siblings` (sizes, blob ids and LFS info with `?blobs=true`).
- `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=&cursor=`: the tree listing, paginated with
  a `Link: <...>; rel="next"` header like the hub; LFS files carry `lfs.oid` (their sha256).
- `GET /api/models/{repo}/refs`: branches and tags.
- `HEAD|GET /{repo}/resolve/{rev}/{path}`: the file, with `ETag`, `X-Repo-Commit`, and for LFS files
  `X-Linked-Etag` / `X-Linked-Size`; `Range: bytes=a-b` is honoured (206).

Repos are git-like: content-addressed blobs, commits whose sha is a sha1 over the tree, the parent
and the message (40 hex digits), branches and tags pointing at commits. Every response body is
counted per file so tests can assert exactly which bytes were downloaded.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.rig.http_server import InFlight, LoopbackServer
from tests.rig.hub_upload import Received, UploadSide, parse_json, parse_ndjson, read_body

# What `.gitattributes` sends to LFS in a new hub repo (the hub's default template, abridged),
# plus anything over the hub's 10 MB limit for plain git files.
LFS_SUFFIXES = (
    ".bin",
    ".safetensors",
    ".ckpt",
    ".pt",
    ".pth",
    ".msgpack",
    ".onnx",
    ".onnx_data",
    ".h5",
    ".pb",
    ".model",
    ".png",
    ".jpg",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
LFS_POINTER_SIZE = 134
# Default page size of the tree listing: small, so tiny fixture repos still span several pages and
# the client's pagination is exercised (the hub's own cap is 1000).
TREE_PAGE_SIZE = 16
SHORT_SHA_MIN = 7
DEFAULT_TOKEN = "hf_localhub_test_token"
_CHUNK = 1024 * 1024
_ISO_EPOCH = "2024-01-01T00:00:{:02d}.000Z"


@dataclass(frozen=True)
class Blob:
    """One file's content, stored once by sha256 however many commits use it."""

    sha256: str
    oid: str  # the git blob sha1: the hub's ETag for files kept in plain git
    size: int
    path: Path

    @property
    def lfs(self) -> bool:
        return self.size >= LFS_MIN_SIZE

    def is_lfs(self, name: str) -> bool:
        return self.lfs or name.lower().endswith(LFS_SUFFIXES)


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    message: str
    files: Mapping[str, Blob]
    index: int  # order of creation, for a deterministic lastModified


@dataclass
class Repo:
    id: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    private: bool = False
    # Tokens allowed through the gate or into the private repo; None = every token the hub knows.
    granted: frozenset[str] | None = None


@dataclass
class Stats:
    """What the server sent: body bytes and request counts per `repo/path`, and every request line."""

    bytes_by_file: Counter[str] = field(default_factory=Counter)
    requests_by_file: Counter[str] = field(default_factory=Counter)
    requests: list[tuple[str, str, int]] = field(default_factory=list)


class HubError(Exception):
    """An error answer, shaped like the hub's (status, X-Error-Code, X-Error-Message)."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.body = body or {}


class LocalHub(LoopbackServer, UploadSide):
    """Repos in memory (blobs on disk) served over HTTP on 127.0.0.1 at a free port.

    Use as a context manager, or `start()` / `stop()`. `url` is what HF_ENDPOINT should be.
    """

    def __init__(
        self,
        blob_dir: Path,
        *,
        tokens: Iterable[str] = (DEFAULT_TOKEN,),
        page_size: int = TREE_PAGE_SIZE,
    ) -> None:
        self.blob_dir = Path(blob_dir)
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tokens = frozenset(tokens)
        self.page_size = page_size
        self.repos: dict[str, Repo] = {}
        self.stats = Stats()
        self._lock = threading.RLock()
        # Requests being answered right now (the stats settle on none).
        self.in_flight = InFlight()
        self._commit_counter = 0
        self._init_upload_side()

    # ---- server lifecycle -------------------------------------------------------------------------

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return type("Handler", (_Handler,), {"local_hub": self})

    # ---- repos and commits ----------------------------------------------------------------------------

    def create_repo(
        self,
        repo_id: str,
        *,
        gated: bool = False,
        private: bool = False,
        granted: Iterable[str] | None = None,
    ) -> Repo:
        with self._lock:
            if repo_id in self.repos:
                raise ValueError(f"repo exists: {repo_id}")
            repo = Repo(
                repo_id,
                gated=gated,
                private=private,
                granted=frozenset(granted) if granted is not None else None,
            )
            self.repos[repo_id] = repo
            return repo

    def commit(
        self,
        repo_id: str,
        add: Mapping[str, bytes | Path] | None = None,
        *,
        delete: Iterable[str] = (),
        branch: str = "main",
        message: str = "update",
        replace: bool = False,
    ) -> str:
        """Commit on top of `branch` (created when missing); returns the new commit sha.

        `add` maps repo paths to content (bytes, or a file to copy). `replace` starts from an empty
        tree instead of the branch head, like committing a whole folder.
        """
        with self._lock:
            repo = self.repos[repo_id]
            parent = repo.branches.get(branch)
            files: dict[str, Blob] = {}
            if parent is not None and not replace:
                files.update(repo.commits[parent].files)
            for name in delete:
                files.pop(name, None)
            for name, content in (add or {}).items():
                files[_check_repo_path(name)] = self.put_blob(content)
            return self._new_commit(repo_id, branch, files, message)

    def _new_commit(self, repo_id: str, branch: str, files: Mapping[str, Blob], message: str) -> str:
        """A commit holding exactly `files`, on top of `branch` (which then points at it)."""
        with self._lock:
            repo = self.repos[repo_id]
            parent = repo.branches.get(branch)
            for name in files:
                _check_repo_path(name)
            self._commit_counter += 1
            sha = _commit_sha(files, parent, message)
            repo.commits[sha] = Commit(sha, parent, message, dict(files), self._commit_counter)
            repo.branches[branch] = sha
            return sha

    def commit_folder(
        self, repo_id: str, folder: Path, *, branch: str = "main", message: str = "upload"
    ) -> str:
        """Commit every file under `folder` as the whole tree of `branch`."""
        add = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.commit(repo_id, add, branch=branch, message=message, replace=True)

    def create_branch(self, repo_id: str, branch: str, *, revision: str = "main") -> str:
        return self._point(repo_id, "branches", branch, revision)

    def create_tag(self, repo_id: str, tag: str, *, revision: str = "main") -> str:
        return self._point(repo_id, "tags", tag, revision)

    def _point(self, repo_id: str, kind: str, name: str, revision: str) -> str:
        """Set branch or tag `name` (`kind` is the Repo's dict of them) to `revision`'s commit."""
        with self._lock:
            repo = self.repos[repo_id]
            sha = self._resolve(repo, revision).sha
            getattr(repo, kind)[name] = sha
            return sha

    def fork_repo(self, src: str, dst: str) -> Repo:
        """A copy of `src` under a new id (same commits, blobs shared): for tests that move branches."""
        with self._lock:
            repo = copy.copy(self.repos[src])
            repo = Repo(
                dst,
                commits=dict(repo.commits),
                branches=dict(repo.branches),
                tags=dict(repo.tags),
                gated=repo.gated,
                private=repo.private,
                granted=repo.granted,
            )
            self.repos[dst] = repo
            return repo

    def head(self, repo_id: str, revision: str = "main") -> str:
        with self._lock:
            return self._resolve(self.repos[repo_id], revision).sha

    def files(self, repo_id: str, revision: str = "main") -> dict[str, Blob]:
        with self._lock:
            return dict(self._resolve(self.repos[repo_id], revision).files)

    def put_blob(self, content: bytes | Path) -> Blob:
        """Store content by sha256 (copied, so later edits of the source cannot change a commit)."""
        sha256 = hashlib.sha256()
        if isinstance(content, bytes):
            size = len(content)
            sha256.update(content)
            oid = hashlib.sha1(b"blob %d\0" % size + content).hexdigest()
        else:
            size = content.stat().st_size
            sha1 = hashlib.sha1(b"blob %d\0" % size)
            with open(content, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    sha256.update(chunk)
                    sha1.update(chunk)
            oid = sha1.hexdigest()
        digest = sha256.hexdigest()
        target = self.blob_dir / digest
        if not target.exists():
            tmp = target.with_name(f"{digest}.{threading.get_ident()}.tmp")
            if isinstance(content, bytes):
                tmp.write_bytes(content)
            else:
                shutil.copyfile(content, tmp)
            tmp.replace(target)
        return Blob(digest, oid, size, target)

    # ---- what tests assert -----------------------------------------------------------------------------

    def _settled(self) -> None:
        """A response's last bytes reach the client before the handler records them: wait a while
        (at most 10 s, as a test may ask while a download is still going) for answers to land."""
        self.in_flight.settle(10.0, strict=False)

    def reset_stats(self) -> None:
        self._settled()
        with self._lock:
            self.stats = Stats()
            self.received = Received()

    def bytes_sent(self, repo_id: str | None = None) -> int:
        """Body bytes of file downloads (resolve GETs), for one repo or all."""
        self._settled()
        with self._lock:
            prefix = f"{repo_id}/" if repo_id else ""
            return sum(n for k, n in self.stats.bytes_by_file.items() if k.startswith(prefix))

    def files_sent(self, repo_id: str) -> dict[str, int]:
        """Repo path → body bytes sent for it (files never downloaded are absent)."""
        self._settled()
        with self._lock:
            prefix = f"{repo_id}/"
            return {
                k[len(prefix) :]: n for k, n in self.stats.bytes_by_file.items() if k.startswith(prefix) and n
            }

    def requests(self, method: str | None = None) -> list[tuple[str, str, int]]:
        self._settled()
        with self._lock:
            return [r for r in self.stats.requests if method is None or r[0] == method]

    # ---- request handling (called from server threads) -------------------------------------------------

    def _resolve(self, repo: Repo, revision: str) -> Commit:
        rev = revision
        for prefix, table in (("refs/heads/", repo.branches), ("refs/tags/", repo.tags)):
            if rev.startswith(prefix) and rev[len(prefix) :] in table:
                return repo.commits[table[rev[len(prefix) :]]]
        if rev in repo.branches:
            return repo.commits[repo.branches[rev]]
        if rev in repo.tags:
            return repo.commits[repo.tags[rev]]
        if re.fullmatch(r"[0-9a-f]{40}", rev) and rev in repo.commits:
            return repo.commits[rev]
        if re.fullmatch(rf"[0-9a-f]{{{SHORT_SHA_MIN},39}}", rev):
            found = [c for sha, c in repo.commits.items() if sha.startswith(rev)]
            if len(found) == 1:
                return found[0]
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def _repo_for(self, repo_id: str, token: str | None) -> Repo:
        """The repo, or the hub's answer for a missing/private one (401 without a token, 404 with)."""
        repo = self.repos.get(repo_id)
        if repo is not None and repo.private and not self._granted(repo, token):
            repo = None
        if repo is None:
            return self._not_found(token)
        return repo

    def _not_found(self, token: str | None) -> Repo:
        raise HubError(401 if token is None else 404, "RepoNotFound", "Repository not found")

    def _granted(self, repo: Repo, token: str | None) -> bool:
        if token is None or token not in self.tokens:
            return False
        return repo.granted is None or token in repo.granted

    def _check_gate(self, repo: Repo, token: str | None) -> None:
        if not repo.gated or self._granted(repo, token):
            return
        if token is None:
            raise HubError(
                401,
                "GatedRepo",
                f"Access to model {repo.id} is restricted. You must have access to it and be authenticated"
                " to access it. Please log in.",
            )
        raise HubError(
            403,
            "GatedRepo",
            f"Access to model {repo.id} is restricted and you are not in the authorized list."
            f" Visit {self.url}/{repo.id} to ask for access.",
        )

    def model_info(
        self, repo_id: str, revision: str | None, token: str | None, blobs: bool
    ) -> dict[str, Any]:
        with self._lock:
            repo = self._repo_for(repo_id, token)
            commit = self._resolve(repo, revision or "main")
            siblings = []
            for name, blob in sorted(commit.files.items()):
                entry: dict[str, Any] = {"rfilename": name}
                if blobs:
                    entry.update(size=blob.size, blobId=blob.oid)
                    if blob.is_lfs(name):
                        entry["lfs"] = {
                            "sha256": blob.sha256,
                            "size": blob.size,
                            "pointerSize": LFS_POINTER_SIZE,
                        }
                siblings.append(entry)
            return {
                "_id": hashlib.sha1(repo.id.encode()).hexdigest()[:24],
                "id": repo.id,
                "modelId": repo.id,
                "author": repo.id.split("/")[0] if "/" in repo.id else None,
                "sha": commit.sha,
                "lastModified": _iso(commit.index),
                "createdAt": _iso(0),
                "private": repo.private,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "library_name": "diffusers",
                "tags": ["diffusers", "text-to-image"],
                "pipeline_tag": "text-to-image",
                "siblings": siblings,
                "usedStorage": sum(b.size for b in commit.files.values()),
            }

    def tree(
        self, repo_id: str, revision: str, path: str, recursive: bool, token: str | None
    ) -> list[dict[str, Any]]:
        with self._lock:
            repo = self._repo_for(repo_id, token)
            commit = self._resolve(repo, revision)
            files = commit.files
        base = path.strip("/")
        prefix = f"{base}/" if base else ""
        if base and not any(name.startswith(prefix) for name in files):
            raise HubError(
                404, "EntryNotFound", f"{base} does not exist on {revision}", {"X-Repo-Commit": commit.sha}
            )
        dirs: set[str] = set()
        entries: list[dict[str, Any]] = []
        for name in sorted(files):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if not recursive and depth > 1:
                    break
                dirs.add(prefix + "/".join(parts[:depth]))
            if not recursive and len(parts) > 1:
                continue
            blob = files[name]
            entry: dict[str, Any] = {"type": "file", "oid": blob.oid, "size": blob.size, "path": name}
            if blob.is_lfs(name):
                entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": LFS_POINTER_SIZE}
            entries.append(entry)
        folders = [
            {
                "type": "directory",
                "oid": hashlib.sha1(f"{commit.sha}:{d}".encode()).hexdigest(),
                "size": 0,
                "path": d,
            }
            for d in sorted(dirs)
        ]
        return folders + entries

    def refs(self, repo_id: str, token: str | None) -> dict[str, Any]:
        with self._lock:
            repo = self._repo_for(repo_id, token)
            return {
                "branches": [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in repo.branches.items()
                ],
                "tags": [
                    {"name": t, "ref": f"refs/tags/{t}", "targetCommit": s} for t, s in repo.tags.items()
                ],
                "converts": [],
            }

    def file(self, repo_id: str, revision: str, path: str, token: str | None) -> tuple[Commit, Blob]:
        with self._lock:
            repo = self._repo_for(repo_id, token)
            commit = self._resolve(repo, revision)
            self._check_gate(repo, token)
            blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit.sha})
        return commit, blob

    def _record(self, method: str, path: str, status: int, file_key: str | None, sent: int) -> None:
        with self._lock:
            self.stats.requests.append((method, path, status))
            if file_key is not None:
                self.stats.requests_by_file[file_key] += 1
                self.stats.bytes_by_file[file_key] += sent


class _Handler(BaseHTTPRequestHandler):
    local_hub: LocalHub
    protocol_version = "HTTP/1.1"
    server_version = "localhub/1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _body(self) -> bytes:
        return read_body(self.rfile, self._length(), self._chunked())

    def _length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value else None

    def _chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.local_hub.tokens:
            raise HubError(401, None, "Invalid credentials in Authorization header")
        return token

    def _dispatch(self, method: str) -> None:
        with self.local_hub.in_flight.request():
            self._answer(method)

    def _answer(self, method: str) -> None:
        hub = self.local_hub
        split = urlsplit(self.path)
        segments = split.path.strip("/").split("/")
        query = {k.lower(): v[-1] for k, v in parse_qs(split.query).items()}
        file_key: str | None = None
        sent = 0
        status = 500
        try:
            if method in ("POST", "PUT"):
                status = self._write(method, segments)
                hub._record(method, self.path, status, None, 0)
                return
            token = self._token()
            if segments == ["api", "agent-harnesses"] and method == "GET":
                # huggingface_hub's once-a-day agent registry lookup: an empty registry, like the hub's.
                status = self._json({"standardEnvVars": [], "harnesses": {}})
            elif segments[:2] == ["api", "models"] and len(segments) > 2:
                repo_id, rest = _split_repo(segments[2:], ("revision", "tree", "refs"))
                if method != "GET":
                    raise HubError(405, None, "Method not allowed")
                if not rest:
                    status = self._json(hub.model_info(repo_id, None, token, _truthy(query.get("blobs"))))
                elif rest[0] == "revision" and len(rest) == 2:
                    info = hub.model_info(repo_id, unquote(rest[1]), token, _truthy(query.get("blobs")))
                    status = self._json(info)
                elif rest[0] == "tree" and len(rest) >= 2:
                    status = self._tree(repo_id, unquote(rest[1]), unquote("/".join(rest[2:])), query, token)
                elif rest[0] == "refs" and len(rest) == 1:
                    status = self._json(hub.refs(repo_id, token))
                else:
                    raise HubError(404, None, "Not found")
            elif "resolve" in segments[1:3] and len(segments) >= 4:
                at = segments.index("resolve", 1)
                repo_id = "/".join(unquote(s) for s in segments[:at])
                revision = unquote(segments[at + 1]) if len(segments) > at + 1 else ""
                path = "/".join(unquote(s) for s in segments[at + 2 :])
                commit, blob = hub.file(repo_id, revision, path, token)
                file_key = f"{repo_id}/{path}"
                status, sent = self._file(method, commit, blob, path)
            else:
                raise HubError(404, None, "Not found")
        except HubError as err:
            status = err.status
            self._error(method, err)
        except (BrokenPipeError, ConnectionResetError):
            status = 499
        hub._record(method, self.path, status, file_key, sent)

    def _write(self, method: str, segments: list[str]) -> int:
        """The upload side (tests/rig/hub_upload.py); the body is always read, even to refuse it."""
        hub = self.local_hub
        if method == "PUT":
            if len(segments) != 2 or segments[0] != "lfs-upload":
                self._body()
                raise HubError(404, None, "Not found")
            hub.lfs_receive(segments[1], self.rfile, self._length(), self._chunked())
            return self._json({})
        body = self._body()
        token = self._token()
        if segments == ["api", "repos", "create"]:
            return self._json(hub.api_create_repo(token, parse_json(body)))
        lfs_api = segments[-4:-1] == ["info", "lfs", "objects"]
        if len(segments) >= 5 and lfs_api and segments[-5].endswith(".git"):
            repo_id = "/".join(unquote(s) for s in segments[:-4])[: -len(".git")]
            if segments[-1] == "batch":
                return self._json(hub.lfs_batch(repo_id, parse_json(body), token))
            if segments[-1] == "verify":
                return self._json(hub.lfs_verify(repo_id, parse_json(body), token))
        if segments[:2] == ["api", "models"] and len(segments) > 3:
            # `[ns/]name/op/rev`: the revision is one quoted segment, so the length tells them apart.
            tail = segments[2:]
            repo_id, rest = "/".join(unquote(s) for s in tail[:-2]), tail[-2:]
            if rest[0] in _WRITE_KEYWORDS and 1 <= len(tail) - 2 <= 2:
                revision = unquote(rest[1])
                if rest[0] == "preupload":
                    return self._json(hub.preupload(repo_id, revision, parse_json(body), token))
                if rest[0] == "commit":
                    return self._json(hub.api_commit(repo_id, revision, parse_ndjson(body), token))
                if rest[0] == "tag":
                    return self._json(hub.api_create_tag(repo_id, revision, parse_json(body), token))
        raise HubError(404, None, "Not found")

    def _json(self, data: Any, extra: dict[str, str] | None = None) -> int:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        return 200

    def _tree(self, repo_id: str, revision: str, path: str, query: dict[str, str], token: str | None) -> int:
        hub = self.local_hub
        entries = hub.tree(repo_id, revision, path, _truthy(query.get("recursive")), token)
        start = int(query.get("cursor", "0") or 0)
        page = entries[start : start + hub.page_size]
        extra = {}
        if start + hub.page_size < len(entries):
            host = self.headers.get("Host") or urlsplit(hub.url).netloc
            base = urlsplit(self.path).path
            params = f"recursive={query.get('recursive', 'false')}&expand={query.get('expand', 'false')}"
            extra["Link"] = f'<http://{host}{base}?{params}&cursor={start + hub.page_size}>; rel="next"'
        return self._json(page, extra)

    def _file(self, method: str, commit: Commit, blob: Blob, path: str) -> tuple[int, int]:
        start, end = 0, blob.size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                raise HubError(416, None, "Invalid range")
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), blob.size - 1) if m.group(2) else blob.size - 1
            else:  # suffix range: the last N bytes
                start = max(blob.size - int(m.group(2)), 0)
            if start >= blob.size or start > end:
                raise HubError(416, None, f"Range not satisfiable (size {blob.size})")
            status = 206
        length = end - start + 1 if blob.size else 0
        etag = blob.sha256 if blob.is_lfs(path) else blob.oid
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Repo-Commit", commit.sha)
        if blob.is_lfs(path):
            self.send_header("X-Linked-Etag", f'"{blob.sha256}"')
            self.send_header("X-Linked-Size", str(blob.size))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{blob.size}")
        self.end_headers()
        if method == "HEAD":
            return status, 0
        sent = 0
        with open(blob.path, "rb") as fh:
            fh.seek(start)
            remaining = length
            while remaining > 0:
                chunk = fh.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                sent += len(chunk)
                remaining -= len(chunk)
        return status, sent

    def _error(self, method: str, err: HubError) -> None:
        body = json.dumps({"error": err.message, **err.body}).encode()
        self.send_response(err.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if err.code:
            self.send_header("X-Error-Code", err.code)
        # Header values must be latin-1: a revision name from a test may not be.
        self.send_header("X-Error-Message", err.message.encode("ascii", "backslashreplace").decode())
        for k, v in err.headers.items():
            self.send_header(k, v)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)


_WRITE_KEYWORDS = ("preupload", "commit", "tag")


def _split_repo(segments: list[str], keywords: tuple[str, ...]) -> tuple[str, list[str]]:
    """`ns/name/rest...` or `name/rest...`: the hub allows repo ids without a namespace."""
    if len(segments) >= 2 and segments[1] not in keywords:
        return f"{unquote(segments[0])}/{unquote(segments[1])}", segments[2:]
    return unquote(segments[0]), segments[1:]


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _iso(index: int) -> str:
    return _ISO_EPOCH.format(index % 60)


def _commit_sha(files: Mapping[str, Blob], parent: str | None, message: str) -> str:
    tree = hashlib.sha1("".join(f"{name}\0{blob.oid}\n" for name, blob in sorted(files.items())).encode())
    text = f"tree {tree.hexdigest()}\nparent {parent or ''}\n\n{message}\n"
    return hashlib.sha1(text.encode()).hexdigest()


def _check_repo_path(name: str) -> str:
    """The hub stores whatever git stores; we only refuse what could not be a git path at all."""
    if not name or name.startswith("/") or "\0" in name:
        raise ValueError(f"not a repo path: {name!r}")
    return name


def resolve_url(hub_url: str, repo_id: str, path: str, revision: str = "main") -> str:
    """The download URL of a repo file, as hf_hub_url builds it (for `url` sources in tests)."""
    return f"{hub_url}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"


def iter_commits(repo: Repo, revision: str = "main") -> Iterator[Commit]:
    """Newest first, following parents (for tests that inspect history)."""
    sha: str | None = repo.branches.get(revision, revision)
    while sha is not None:
        commit = repo.commits[sha]
        yield commit
        sha = commit.parent
