"""Publish an artifact to a hub repo, for RunPod's cached models to download onto its hosts.

One artifact is one commit whose tree is exactly the artifact (its files and `manifest.json`;
the repo's `.gitattributes` and a README are left alone, every other path of an earlier artifact
is deleted), with a message naming the artifact id, tagged `artifact-<short id>`. The tag is what
makes publishing idempotent: when it exists and its tree matches the artifact file by file (the
LFS sha256 for weights, the git blob sha1 for small files), nothing is sent.

huggingface_hub does the transfer (`create_repo`, `create_commit`, `create_tag`): it sends small
files inline, weights through LFS (or Xet where the hub offers it), and skips content the repo
already holds. The commit names its parent, so a concurrent push to the branch fails the commit
instead of being silently overwritten.

The token comes from the environment variable the recipe names and goes only to huggingface_hub:
it is never part of a message, the lock, an image or the manifest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifact_format import manifest as mf
from artifact_format.vocab import short_id
from packager.errors import PublishError

BRANCH = "main"
TAG_PREFIX = "artifact-"
# Paths a hub repo may hold besides the artifact: the hub writes `.gitattributes` into every new
# repo, and a model card is the owner's to keep. Neither is part of the artifact or compared.
IGNORED_PATHS = frozenset({".gitattributes", "README.md"})


@dataclass(frozen=True)
class Published:
    repo: str
    commit: str
    tag: str
    files_sent: int  # files the commit added or changed (0: the tag already held this artifact)
    bytes_sent: int  # their sizes: an upper bound on what went over the wire
    deleted: tuple[str, ...] = ()

    @property
    def sent_nothing(self) -> bool:
        return self.files_sent == 0 and not self.deleted


@dataclass(frozen=True)
class _Local:
    path: str
    size: int
    sha256: str
    file: Path


def tag_name(artifact_id: str) -> str:
    return TAG_PREFIX + short_id(artifact_id)


def published_commit(repo: str, artifact_id: str, *, token: str | None, token_env: str) -> str | None:
    """The commit the artifact's tag points at, or None (repo or tag missing): one ref lookup."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    with publish_errors(repo, token_env):
        try:
            refs = HfApi(token=token).list_repo_refs(repo)
        except RepositoryNotFoundError:
            return None
    wanted = tag_name(artifact_id)
    return next((t.target_commit for t in refs.tags if t.name == wanted), None)


def publish(
    artifact_dir: Path,
    manifest: mf.Manifest,
    artifact_id: str,
    *,
    repo: str,
    private: bool,
    token: str,
    token_env: str,
) -> Published:
    """Make `repo` hold the artifact at a tagged commit; send nothing when it already does.

    Raises PublishError (one line, naming the repo and what to do) when the hub refuses the token,
    the branch moved during the commit, or the artifact's tag points at a different tree.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi(token=token)
    local = _local_files(artifact_dir, manifest, artifact_id)
    tag = tag_name(artifact_id)
    tagged = published_commit(repo, artifact_id, token=token, token_env=token_env)
    if tagged is not None:
        remote = _remote_tree(api, repo, tagged, token_env)
        if _differences(local, remote) or _extras(local, remote):
            raise PublishError(
                f"hub repo {repo!r}: tag {tag} points at {tagged[:12]}, whose files differ from artifact"
                f" {short_id(artifact_id)}: delete the tag on the hub and publish again"
            )
        return Published(repo, tagged, tag, 0, 0)

    with publish_errors(repo, token_env):
        api.create_repo(repo, private=private, exist_ok=True)
        head = api.list_repo_refs(repo)
    parent = next((b.target_commit for b in head.branches if b.name == BRANCH), None)
    remote = _remote_tree(api, repo, parent, token_env) if parent else {}
    changed = _differences(local, remote)
    stale = _extras(local, remote)
    operations: list[Any] = [CommitOperationDelete(path) for path in stale]
    operations += [CommitOperationAdd(path, str(local[path].file)) for path in changed]
    commit = parent
    if operations:
        with publish_errors(repo, token_env):
            info = api.create_commit(
                repo,
                operations,
                commit_message=f"artifact {artifact_id}",
                commit_description=f"{manifest.name}: {len(local)} files, {manifest.total_bytes} bytes",
                revision=BRANCH,
                parent_commit=parent,
            )
        commit = info.oid
    assert commit is not None  # a new repo's first commit holds `.gitattributes`
    with publish_errors(repo, token_env):
        api.create_tag(repo, tag=tag, revision=commit, tag_message=f"artifact {artifact_id}")
    sent = sum(local[p].size for p in changed)
    return Published(repo, commit, tag, len(changed), sent, stale)


def _local_files(artifact_dir: Path, manifest: mf.Manifest, artifact_id: str) -> dict[str, _Local]:
    files = {e.path: _Local(e.path, e.size, e.sha256, artifact_dir / e.path) for e in manifest.files}
    manifest_file = artifact_dir / mf.MANIFEST_NAME
    files[mf.MANIFEST_NAME] = _Local(
        mf.MANIFEST_NAME, manifest_file.stat().st_size, artifact_id, manifest_file
    )
    return files


def _remote_tree(api: Any, repo: str, commit: str, token_env: str) -> dict[str, Any]:
    """Path → RepoFile of every file at `commit`."""
    from huggingface_hub.hf_api import RepoFile

    with publish_errors(repo, token_env):
        entries = api.list_repo_tree(repo, revision=commit, recursive=True)
        return {e.path: e for e in entries if isinstance(e, RepoFile)}


def _differences(local: dict[str, _Local], remote: dict[str, Any]) -> list[str]:
    """Artifact paths the remote tree lacks or holds with other content.

    An LFS file is compared by its sha256 (the hub's `lfs.sha256`); a file kept in plain git by
    its git blob sha1, computed here (such files are small by the hub's own rule).
    """
    changed = []
    for path, want in sorted(local.items()):
        got = remote.get(path)
        if got is None or got.size != want.size:
            changed.append(path)
        elif got.lfs is not None:
            if got.lfs.sha256 != want.sha256:
                changed.append(path)
        elif got.blob_id != git_blob_sha1(want.file):
            changed.append(path)
    return changed


def _extras(local: dict[str, _Local], remote: dict[str, Any]) -> tuple[str, ...]:
    """Remote paths that are not the artifact's: files of an earlier artifact."""
    return tuple(sorted(p for p in remote if p not in local and p not in IGNORED_PATHS))


def git_blob_sha1(path: Path) -> str:
    """The id git gives a file's content: sha1 over `blob <size>\\0` and the bytes."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@contextmanager
def publish_errors(repo: str, token_env: str) -> Iterator[None]:
    """huggingface_hub's failures as one-line PublishErrors; our own words, so no token leaks.
    Every request in the block is bounded (packager.source.timeouts)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    from packager.source.timeouts import Stalled, bound_hub_client

    bound_hub_client()
    try:
        yield
    except RepositoryNotFoundError:
        raise PublishError(
            f"hub repo {repo!r} not found, or {token_env}'s account cannot see it (check the repo id)"
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status == 401:
            raise PublishError(
                f"hub repo {repo!r}: the hub refused {token_env} (401): set a valid token"
            ) from None
        if status == 403:
            raise PublishError(
                f"hub repo {repo!r}: {token_env} cannot write here (403): use a token with write access"
            ) from None
        if status == 412:
            raise PublishError(
                f"hub repo {repo!r}: {BRANCH} moved while publishing (someone else pushed): publish again"
            ) from None
        raise PublishError(f"hub repo {repo!r}: the hub answered HTTP {status}: retry later") from None
    except Stalled as exc:
        raise PublishError(f"hub repo {repo!r}: {exc}") from None
    except (httpx2.TransportError, ConnectionError) as exc:
        raise PublishError(
            f"cannot reach the hub for {repo!r} ({type(exc).__name__}): check HF_ENDPOINT"
        ) from None
