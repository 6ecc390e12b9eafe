"""One file from any https URL into the download cache: named, authenticated, resumable, verified.

CivitAI-style downloads are the model: `https://civitai.com/api/download/models/<id>` needs a token,
answers with a redirect to a signed storage URL on another host, and names the file only in its
`Content-Disposition`. So:
- redirects are followed here, one hop at a time, and the token goes only to the URL's own origin
  (scheme, host, port): a signed storage URL on another host never sees it;
- the file's name is `Content-Disposition`'s (`filename*` first), else the URL path's last part;
- bytes land in `.partial-<url digest>` and an interrupted download resumes from there with a
  `Range` request (a server that ignores it answers 200 and the download starts over);
- the sha256 is taken while the bytes stream, and a file that does not match is deleted.
The result lives at `<cache>/<sha256>/<name>`, so a known sha256 finds it without the network.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from packager.errors import FetchError

_CHUNK = 8 * 1024 * 1024
# Redirect hops followed before giving up (browsers and httpx allow 20; storage links take 1 or 2).
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_FILENAME_STAR = re.compile(r"filename\*\s*=\s*([^']*)'[^']*'([^;]+)", re.IGNORECASE)
_FILENAME = re.compile(r'filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))', re.IGNORECASE)


def cached(cache: Path, sha256: str) -> Path | None:
    """The cached file with this sha256, whatever its name, if there is one."""
    folder = cache / sha256
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return files[0] if len(files) == 1 else None


def same_origin(a: str, b: str) -> bool:
    sa, sb = urlsplit(a), urlsplit(b)
    return (sa.scheme, sa.hostname, sa.port) == (sb.scheme, sb.hostname, sb.port)


def filename(content_disposition: str | None, url: str) -> str:
    """The file's name: `Content-Disposition` (RFC 6266, `filename*` first), else the URL's path."""
    name = ""
    if content_disposition:
        star = _FILENAME_STAR.search(content_disposition)
        plain = _FILENAME.search(content_disposition)
        if star:
            name = unquote(star.group(2).strip(), encoding=star.group(1) or "utf-8", errors="replace")
        elif plain:
            name = plain.group(1) if plain.group(1) is not None else plain.group(2)
            name = name.replace('\\"', '"')
    name = name or unquote(Path(urlsplit(url).path).name)
    # Only a bare name: a header must not be able to point the file anywhere else.
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name or name.startswith(".") or any(ord(c) < 32 for c in name):
        raise FetchError(f"{url}: cannot name the download (Content-Disposition {content_disposition!r})")
    return name


def download(
    url: str,
    cache: Path,
    *,
    sha256: str | None,
    headers: Mapping[str, str],
    progress: bool,
) -> tuple[Path, str, int]:
    """Download `url` into `cache/<sha256>/<name>`; `headers` go only to `url`'s own origin.

    Returns (path, sha256, size). Raises FetchError (one line) on an HTTP error, a transport error
    (the partial file is kept for the next run to resume), too many redirects, or a sha256 that is
    not `sha256`.
    """
    from huggingface_hub.utils import get_session
    from huggingface_hub.utils import tqdm as hf_tqdm

    from packager.source.timeouts import Stalled, bound_hub_client

    bound_hub_client()
    cache.mkdir(parents=True, exist_ok=True)
    partial, offset = partial_of(cache, url)
    resp, final_url = _open(get_session(), url, headers, offset)
    with closing(resp):
        if offset and resp.status_code == 200:
            offset = 0  # the server ignored the Range: start over
        elif offset and not _resumes_at(resp.headers.get("Content-Range"), offset):
            raise FetchError(f"{url}: the server resumed at the wrong place; delete {partial} and run again")
        name = filename(resp.headers.get("Content-Disposition"), final_url if offset == 0 else url)
        digest = digest_of(partial, offset)
        length = int(resp.headers.get("Content-Length") or 0)
        size = offset
        with (
            open(partial, "ab" if offset else "wb") as out,
            hf_tqdm(
                total=offset + length or None,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=name,
                disable=not progress or None,
            ) as bar,
        ):
            try:
                for chunk in resp.iter_bytes():
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
            except Stalled as exc:
                raise FetchError(f"{url}: {exc}; run again to resume") from None
            except Exception as exc:
                if not _transport_error(exc):
                    raise
                raise FetchError(
                    f"{url}: download interrupted after {size} bytes ({type(exc).__name__}); "
                    "run again to resume"
                ) from None
    return finish(partial, cache / digest.hexdigest() / name, sha256, url), digest.hexdigest(), size


def partial_of(cache: Path, url: str) -> tuple[Path, int]:
    """Where `url`'s bytes land until they are checked, and how many an earlier run left there."""
    partial = cache / f".partial-{hashlib.sha256(url.encode()).hexdigest()[:24]}"
    return partial, partial.stat().st_size if partial.is_file() else 0


def digest_of(partial: Path, offset: int) -> Any:
    """A sha256 that has seen the first `offset` bytes of `partial` (those an earlier run kept)."""
    digest = hashlib.sha256()
    if offset:
        with open(partial, "rb") as done:
            while block := done.read(_CHUNK):
                digest.update(block)
    return digest


def finish(partial: Path, target: Path, sha256: str | None, url: str) -> Path:
    """The finished download moved to `target` (`<cache>/<its sha256>/<name>`), or deleted and a
    FetchError when it is not the sha256 expected."""
    got = target.parent.name
    if sha256 and got != sha256:
        partial.unlink(missing_ok=True)
        raise FetchError(
            f"{url}: sha256 is {got}, not the expected {sha256} (the recipe's sha256 or the lock)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial.chmod(0o644)
    os.replace(partial, target)
    return target


def _open(session: Any, url: str, headers: Mapping[str, str], offset: int) -> tuple[Any, str]:
    """GET `url`, following redirects by hand so that `headers` reach `url`'s origin only."""
    import httpx2

    from packager.source.timeouts import Stalled

    current = url
    for _ in range(MAX_REDIRECTS + 1):
        sent = dict(headers) if same_origin(current, url) else {}
        if offset:
            sent["Range"] = f"bytes={offset}-"
        try:
            # The session bounds the wait: timeouts.BoundedClient.
            resp = session.send(session.build_request("GET", current, headers=sent), stream=True)
        except Stalled as exc:
            raise FetchError(f"cannot download {url}: {exc}") from None
        except httpx2.TransportError as exc:
            raise FetchError(
                f"cannot download {url} ({type(exc).__name__}): check the network and the URL"
            ) from None
        if resp.status_code in _REDIRECTS and resp.headers.get("Location"):
            resp.close()
            current = urljoin(current, resp.headers["Location"])
            continue
        if resp.status_code not in (200, 206):
            resp.close()
            hint = " (is the token set? see the recipe's token_env)" if resp.status_code in (401, 403) else ""
            raise FetchError(f"{url}: the server answered HTTP {resp.status_code}{hint}")
        return resp, current
    raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _resumes_at(content_range: str | None, offset: int) -> bool:
    match = re.match(r"bytes\s+(\d+)-", content_range or "")
    return match is not None and int(match.group(1)) == offset


def _transport_error(exc: Exception) -> bool:
    import httpx2

    return isinstance(exc, (httpx2.TransportError, ConnectionError))
