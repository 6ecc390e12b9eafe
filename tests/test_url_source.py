"""Checkpoints from any URL: a CivitAI-like API on 127.0.0.1 that demands a token and redirects.

The token goes to the API's own origin and never to the storage it redirects to; the file is named
by `Content-Disposition`; an interrupted download resumes with `Range`; the sha256 is checked.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from packager.errors import FetchError
from packager.source import hub as hub_mod
from packager.source import lock as lk
from packager.source import url_download
from packager.source.recipe import load_recipe
from tests.rig import layouts as L
from tests.rig.cli import run_packager
from tests.rig.download_server import TOKEN, DownloadServers
from tests.rig.fixtures_hub import write_recipe
from tests.rig.localhub import LocalHub

DATA = bytes(range(256)) * 4096  # 1 MiB
DATA_SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def servers() -> Iterator[DownloadServers]:
    s = DownloadServers(DATA)
    yield s
    s.close()


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CIVITAI_TOKEN", TOKEN)
    return TOKEN


def test_token_goes_to_the_api_only_and_the_name_comes_from_content_disposition(
    servers: DownloadServers, token: str, tmp_path: Path
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    path, digest, size = url_download.download(
        servers.url, tmp_path, sha256=None, headers=headers, progress=False
    )
    assert path == tmp_path / DATA_SHA / "dreamy_v1.safetensors"
    assert (digest, size) == (DATA_SHA, len(DATA))
    assert path.read_bytes() == DATA
    assert [h.get("Authorization") for h in servers.api_seen] == [f"Bearer {token}"]
    assert len(servers.storage_seen) == 1
    assert all(token not in str(h) for h in servers.storage_seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == [DATA_SHA]  # no partial left behind


def test_an_interrupted_download_resumes_where_it_stopped(
    servers: DownloadServers, token: str, tmp_path: Path
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    servers.cut_after = 300_000
    with pytest.raises(FetchError, match=r"download interrupted after 300000 bytes .*run again to resume$"):
        url_download.download(servers.url, tmp_path, sha256=DATA_SHA, headers=headers, progress=False)
    path, digest, _ = url_download.download(
        servers.url, tmp_path, sha256=DATA_SHA, headers=headers, progress=False
    )
    assert servers.storage_seen[-1]["Range"] == "bytes=300000-"
    assert digest == DATA_SHA
    assert path.read_bytes() == DATA


def test_a_wrong_sha256_is_one_line_and_keeps_nothing(
    servers: DownloadServers, token: str, tmp_path: Path
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with pytest.raises(FetchError) as err:
        url_download.download(servers.url, tmp_path, sha256="0" * 64, headers=headers, progress=False)
    assert (
        str(err.value) == f"{servers.url}: sha256 is {DATA_SHA}, not the expected {'0' * 64} "
        "(the recipe's sha256 or the lock)"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        ('attachment; filename="a b.safetensors"', "a b.safetensors"),
        (
            "attachment; filename*=UTF-8''caf%C3%A9.safetensors; filename=\"cafe.safetensors\"",
            "café.safetensors",
        ),
        ('attachment; filename="../../etc/passwd"', "passwd"),
        (None, "model.ckpt"),
    ],
)
def test_names_come_from_content_disposition_then_the_url(disposition: str | None, name: str) -> None:
    assert url_download.filename(disposition, "https://example.com/x/model.ckpt?sig=1") == name


def test_a_hidden_or_empty_name_is_refused() -> None:
    with pytest.raises(FetchError, match="cannot name the download"):
        url_download.filename('attachment; filename=".bashrc"', "https://example.com/")


def test_a_recipe_url_with_token_env_locks_and_a_wrong_sha_fails_in_one_line(
    hub: LocalHub,
    hub_env: dict[str, str],
    hub_layouts: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checkpoint = (hub_layouts[L.SD_ORIGINAL].folder / L.SINGLE_FILE_SAFETENSORS).read_bytes()
    want = hashlib.sha256(checkpoint).hexdigest()
    servers = DownloadServers(checkpoint, name="dreamy_v1.safetensors")
    try:
        body = (
            f"name: dreamy\nsource:\n  url: '{servers.url}'\n  token_env: CIVITAI_TOKEN\n"
            f"  config: {L.SD_CONFIG}\n"
        )
        recipe = write_recipe(tmp_path, body)
        missing = run_packager("lock", str(recipe), env=hub_env)
        assert missing.returncode == 2
        assert (
            missing.stderr.strip()
            .splitlines()[-1]
            .endswith("token_env names CIVITAI_TOKEN, which is not set")
        )

        monkeypatch.setenv("CIVITAI_TOKEN", TOKEN)
        lock = lk.build_lock(load_recipe(recipe), quiet=True)
        assert lock.source["checkpoint"] == {
            "name": "dreamy_v1.safetensors",
            "size": len(checkpoint),
            "sha256": want,
        }
        cached = Path(os.environ["HF_HOME"]) / "packager-downloads" / want / "dreamy_v1.safetensors"
        assert cached.read_bytes() == checkpoint
        assert all(TOKEN not in str(h) for h in servers.storage_seen)
        # Known sha256: found in the cache, no request at all.
        before = len(servers.api_seen)
        assert (
            hub_mod.download_url(servers.url, sha256=want, progress=False, token_env="CIVITAI_TOKEN")[0]
            == cached
        )

        assert len(servers.api_seen) == before
        wrong = write_recipe(tmp_path / "wrong", body + f'  sha256: "{"1" * 64}"\n')
        failed = run_packager("lock", str(wrong), env={**hub_env, "CIVITAI_TOKEN": TOKEN})
        assert failed.returncode == 2
        (line,) = failed.stderr.strip().splitlines()
        assert line == (
            f"packager: error: {servers.url}: sha256 is {want}, "
            f"not the expected {'1' * 64} (the recipe's sha256 or the lock)"
        )
        assert TOKEN not in failed.stderr
    finally:
        servers.close()
