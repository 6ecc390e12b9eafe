"""Thin helpers over huggingface_hub: resolve a revision, list a commit's files, download into the cache.

huggingface_hub owns the endpoint (HF_ENDPOINT), the cache (HF_HOME / HF_HUB_CACHE), offline mode
and the token fallbacks; we pass the token from `settings.hf_token()` and turn its typed errors into
one-line `HubError`s that say what to do. Files land in the normal HF cache, so a user's existing
downloads are reused and ours are reused by their other tools.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from packager import settings
from packager.errors import FetchError, HubError
from packager.source import s3_download, url_download
from packager.source.s3_download import S3Access

FULL_SHA_LEN = 40


@dataclass(frozen=True)
class RemoteFile:
    """A file of a hub commit. `sha256` is the LFS sha256, None for small files kept in plain git."""

    path: str
    size: int
    sha256: str | None


def is_full_sha(revision: str) -> bool:
    return len(revision) == FULL_SHA_LEN and all(c in "0123456789abcdef" for c in revision)


def endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def resolve_commit(repo: str, revision: str) -> str:
    """The full commit sha a branch, tag or (short) sha points at: one API call."""
    from huggingface_hub import HfApi

    with hub_errors(repo, revision):
        info = HfApi().model_info(repo, revision=revision, token=settings.hf_token())
    if not info.sha or not is_full_sha(info.sha):
        raise HubError(f"hub repo {repo!r}: the hub gave no commit sha for revision {revision!r}")
    return info.sha


def list_files(repo: str, commit: str) -> dict[str, RemoteFile]:
    """Every file of the commit, with its size and (for LFS files) sha256."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    with hub_errors(repo, commit):
        entries = HfApi().list_repo_tree(repo, revision=commit, recursive=True, token=settings.hf_token())
        files = {
            e.path: RemoteFile(e.path, e.size, e.lfs.sha256 if e.lfs else None)
            for e in entries
            if isinstance(e, RepoFile)
        }
    return files


def download(repo: str, commit: str, filenames: Iterable[str], *, progress: bool) -> Path:
    """Download exactly `filenames` at `commit` into the HF cache; returns the snapshot folder.

    Files already cached are not requested again (with a commit sha, huggingface_hub answers them
    from the cache without a network call).
    """
    from huggingface_hub import snapshot_download

    names = sorted(filenames)
    # allow_patterns are fnmatch globs: escape names so `[`, `*`, `?` match only themselves.
    patterns = [glob.escape(n) for n in names]
    with hub_errors(repo, commit), progress_bars(progress):
        root = snapshot_download(repo, revision=commit, allow_patterns=patterns, token=settings.hf_token())
    return Path(root)


def download_one(repo: str, commit: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    with hub_errors(repo, commit), progress_bars(False):
        return Path(hf_hub_download(repo, filename, revision=commit, token=settings.hf_token()))


def storage_folder(repo: str) -> Path:
    """The repo's folder in the HF cache (`models--org--name`), which holds blobs/ and snapshots/."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")


def cached_blobs(repo: str) -> set[str]:
    blobs = storage_folder(repo) / "blobs"
    return {p.name for p in blobs.iterdir() if p.is_file()} if blobs.is_dir() else set()


def downloads_dir() -> Path:
    """Where `url` checkpoints are cached: beside the hub cache, keyed by sha256."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "packager-downloads"


def download_url(
    url: str,
    *,
    sha256: str | None,
    progress: bool,
    token_env: str | None = None,
    s3: S3Access | None = None,
) -> tuple[Path, str, int]:
    """Download `url` (or reuse the cached copy) into downloads_dir()/<sha256>/<name>.

    Returns (path, sha256, size). With `sha256` known the cache is consulted first and the
    download must match it. The token (the variable `token_env` names, else the hub token for a
    hub URL) goes only to the URL's own host, never to a redirect target; see url_download. An
    `s3://` URL is read with boto3's credential chain and `s3`'s endpoint and profile.
    """
    cache = downloads_dir()
    if sha256 and (hit := url_download.cached(cache, sha256)) is not None:
        return hit, sha256, hit.stat().st_size
    if url.startswith("s3://"):
        return s3_download.download(url, cache, sha256=sha256, access=s3 or S3Access(), progress=progress)
    on_hub = _same_origin(url, endpoint())
    headers: dict[str, str] = {}
    if token_env:
        token = settings.env_value(token_env)
        if not token:
            raise FetchError(f"{url}: token_env names {token_env}, which is not set")
        headers["Authorization"] = f"Bearer {token}"
    elif on_hub and (hub_token := settings.hf_token()):
        from huggingface_hub.utils import build_hf_headers

        headers = build_hf_headers(token=hub_token)
    errors = hub_errors(_repo_of_url(url), None) if on_hub else nullcontext()
    with errors:
        return url_download.download(url, cache, sha256=sha256, headers=headers, progress=progress)


def fetch_locked_url(
    url: str, record: dict[str, Any], *, progress: bool, token_env: str | None, s3: S3Access | None
) -> tuple[Path, int]:
    """The file a lock pinned from `url` ({"name", "size", "sha256"}), from the cache or downloaded
    again and checked; also the bytes downloaded now."""
    was_cached = (downloads_dir() / str(record["sha256"]) / str(record["name"])).is_file()
    path, _, size = download_url(
        url, sha256=str(record["sha256"]), progress=progress, token_env=token_env, s3=s3
    )
    if size != record["size"]:
        raise FetchError(f"{url}: {size} bytes, the lock says {record['size']}")
    return path, 0 if was_cached else size


def _repo_of_url(url: str) -> str | None:
    """`org/name` of a hub `.../org/name/resolve/rev/file` URL, for error messages."""
    path = urlsplit(url).path.strip("/")
    head, sep, _ = path.partition("/resolve/")
    return head if sep else None


def _same_origin(a: str, b: str) -> bool:
    sa, sb = urlsplit(a), urlsplit(b)
    return (sa.scheme, sa.hostname, sa.port) == (sb.scheme, sb.hostname, sb.port)


@contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """huggingface_hub's own progress bars on or off for the block (they are global switches)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if enabled and not was_disabled:
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


@contextmanager
def hub_errors(repo: str | None, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's failures into one-line HubErrors that say what to do.

    The token is never part of a message: we write our own text rather than passing theirs on.
    Every request in the block is bounded (timeouts.py).
    """
    from packager.source import timeouts

    timeouts.bound_hub_client()
    try:
        yield
    except Exception as exc:
        message = _explain(exc, f"hub repo {repo!r}" if repo else "the download", repo, revision)
        if message is None:
            raise
        raise HubError(message) from None


def _explain(exc: Exception, what: str, repo: str | None, revision: str | None) -> str | None:
    """The one line for a hub failure, or None for one that is not the hub's (a bug: re-raised)."""
    import httpx2
    from huggingface_hub.errors import (
        DisabledRepoError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from packager.source import timeouts

    has_token = settings.hf_token() is not None
    unreachable = f"cannot reach the hub at {endpoint()} for {what}"
    # Most specific first: several of these subclass HfHubHTTPError.
    rules: list[tuple[type[BaseException] | tuple[type[BaseException], ...], Callable[[], str]]] = [
        (
            GatedRepoError,
            lambda: (
                f"{what} is gated and HF_TOKEN's account has no access: accept its terms at"
                f" {endpoint()}/{repo} with that account"
                if has_token
                else f"{what} is gated: accept its terms at {endpoint()}/{repo},"
                " then set HF_TOKEN to a token of that account"
            ),
        ),
        (
            RevisionNotFoundError,
            lambda: f"{what} has no revision {revision!r} (give a branch, tag or commit sha)",
        ),
        (
            RepositoryNotFoundError,
            lambda: (
                f"{what} not found, or HF_TOKEN cannot read it (check the repo id)"
                if has_token
                else f"{what} not found (check the repo id;"
                " for a private repo set HF_TOKEN to a token that can read it)"
            ),
        ),
        (DisabledRepoError, lambda: f"{what} is disabled on the hub"),
        (RemoteEntryNotFoundError, lambda: f"{what} at {revision}: file not found ({_missing_name(exc)})"),
        (
            OfflineModeIsEnabled,
            lambda: f"{what}: HF_HUB_OFFLINE is set and the files are not in the local cache",
        ),
        # huggingface_hub's answer when the hub cannot be reached and the cache lacks the files.
        (LocalEntryNotFoundError, lambda: f"{unreachable} (check the network or HF_ENDPOINT)"),
        (HfHubHTTPError, lambda: _http_message(exc, what)),
        (timeouts.Stalled, lambda: f"{what}: {exc}"),
        (
            (httpx2.TransportError, ConnectionError),
            lambda: f"{unreachable} ({type(exc).__name__}): check the network or HF_ENDPOINT",
        ),
    ]
    for kinds, message in rules:
        if isinstance(exc, kinds):
            return message()
    return None


def _missing_name(exc: Any) -> str:
    response = getattr(exc, "response", None)
    return str(response.url.path).rsplit("/resolve/", 1)[-1] if response is not None else "?"


def _http_message(exc: Any, what: str) -> str:
    response = getattr(exc, "response", None)
    status = response.status_code if response is not None else 0
    known = {
        401: f"{what}: the hub refused HF_TOKEN (401): set HF_TOKEN to a valid token",
        403: f"{what}: HF_TOKEN lacks permission (403): use a token with read access",
        429: f"{what}: rate-limited by the hub (429): wait and retry, or set HF_TOKEN",
    }
    return known.get(status, f"{what}: the hub answered HTTP {status}: retry later")
