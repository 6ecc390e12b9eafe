"""The local hub's upload side, driven by the real huggingface_hub client (LFS path, Xet off)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, RepoFile, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError

from tests.rig.fixtures_hub import HUB_TOKEN
from tests.rig.localhub import LocalHub

WEIGHTS = os.urandom(300_000)
CONFIG = b'{"_class_name": "UNet2DConditionModel"}\n'


def _api(hub: LocalHub, token: str | None = HUB_TOKEN) -> HfApi:
    return HfApi(endpoint=hub.url, token=token)


def _files(tmp: Path, **contents: bytes) -> list[CommitOperationAdd]:
    ops = []
    for name, data in contents.items():
        path = tmp / name.replace("__", "-")
        path.write_bytes(data)
        ops.append(CommitOperationAdd(path_in_repo=f"unet/{path.name}", path_or_fileobj=str(path)))
    return ops


def _new_repo(hub: LocalHub, name: str, *, private: bool = True) -> str:
    repo_id = f"publisher/{name}"
    _api(hub).create_repo(repo_id, private=private, exist_ok=True)
    return repo_id


def test_create_repo_starts_with_gitattributes_and_is_idempotent_with_exist_ok(hub: LocalHub) -> None:
    repo_id = _new_repo(hub, "created")
    assert set(hub.files(repo_id)) == {".gitattributes"}
    head = hub.head(repo_id)
    _api(hub).create_repo(repo_id, private=True, exist_ok=True)
    assert hub.head(repo_id) == head
    with pytest.raises(HfHubHTTPError) as err:
        _api(hub).create_repo(repo_id, private=True)
    assert err.value.response.status_code == 409
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=hub.url, token=False).create_repo("publisher/anonymous")
    assert err.value.response.status_code == 401


def test_commit_uploads_weights_through_lfs_and_small_files_inline(hub: LocalHub, tmp_path: Path) -> None:
    repo_id = _new_repo(hub, "uploads")
    info = _api(hub).create_commit(
        repo_id,
        _files(tmp_path, **{"diffusion_pytorch_model.safetensors": WEIGHTS, "config.json": CONFIG}),
        commit_message="artifact 0123",
    )
    assert info.oid == hub.head(repo_id)
    assert hub.bytes_received(repo_id) == len(WEIGHTS) + len(CONFIG)
    assert [(oid, n) for _, oid, n in hub.received.lfs_puts] == [
        (hashlib.sha256(WEIGHTS).hexdigest(), len(WEIGHTS))
    ]
    tree = _api(hub).list_repo_tree(repo_id, revision=info.oid, recursive=True)
    entries = {e.path: e for e in tree if isinstance(e, RepoFile)}
    weights = entries["unet/diffusion_pytorch_model.safetensors"]
    assert weights.lfs is not None
    assert weights.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert entries["unet/config.json"].lfs is None
    cache = tmp_path / "cache"
    folder = Path(snapshot_download(repo_id, revision=info.oid, cache_dir=cache, token=HUB_TOKEN))
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == WEIGHTS
    assert (folder / "unet" / "config.json").read_bytes() == CONFIG


def test_recommitting_known_weights_sends_no_bytes(hub: LocalHub, tmp_path: Path) -> None:
    repo_id = _new_repo(hub, "again")
    _api(hub).create_commit(repo_id, _files(tmp_path, **{"w.safetensors": WEIGHTS}), commit_message="first")
    hub.reset_stats()
    before = hub.bytes_received(repo_id)
    _api(hub).create_commit(
        repo_id,
        [*_files(tmp_path, **{"w.safetensors": WEIGHTS}), CommitOperationAdd("notes.txt", b"x")],
        commit_message="second",
    )
    assert hub.bytes_received(repo_id) - before == 1  # the new small file only
    assert not any(method == "PUT" for method, _, _ in hub.requests())


def test_a_commit_whose_parent_moved_is_refused(hub: LocalHub, tmp_path: Path) -> None:
    repo_id = _new_repo(hub, "race")
    stale = hub.head(repo_id)
    _api(hub).create_commit(repo_id, [CommitOperationAdd("a.txt", b"a")], commit_message="someone else")
    with pytest.raises(HfHubHTTPError) as err:
        _api(hub).create_commit(
            repo_id, [CommitOperationAdd("b.txt", b"b")], commit_message="mine", parent_commit=stale
        )
    assert err.value.response.status_code == 412
    assert "b.txt" not in hub.files(repo_id)


def test_deletions_and_their_errors(hub: LocalHub) -> None:
    repo_id = _new_repo(hub, "delete")
    _api(hub).create_commit(
        repo_id,
        [CommitOperationAdd("old/a.txt", b"a"), CommitOperationAdd("old/b.txt", b"b")],
        commit_message="old",
    )
    _api(hub).create_commit(
        repo_id,
        [CommitOperationDelete("old/a.txt"), CommitOperationAdd("new.txt", b"n")],
        commit_message="swap",
    )
    assert set(hub.files(repo_id)) == {".gitattributes", "old/b.txt", "new.txt"}
    with pytest.raises(RemoteEntryNotFoundError):
        _api(hub).create_commit(repo_id, [CommitOperationDelete("missing.txt")], commit_message="gone")


def test_tags_refs_and_unknown_branch(hub: LocalHub) -> None:
    repo_id = _new_repo(hub, "tags")
    head = hub.head(repo_id)
    _api(hub).create_tag(repo_id, tag="artifact-0123456789ab")
    refs = _api(hub).list_repo_refs(repo_id)
    assert [(t.name, t.target_commit) for t in refs.tags] == [("artifact-0123456789ab", head)]
    with pytest.raises(HfHubHTTPError) as err:
        _api(hub).create_tag(repo_id, tag="artifact-0123456789ab")
    assert err.value.response.status_code == 409
    _api(hub).create_tag(repo_id, tag="artifact-0123456789ab", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as err:
        _api(hub).create_commit(
            repo_id, [CommitOperationAdd("x.txt", b"x")], commit_message="x", revision="nope"
        )
    assert err.value.response.status_code == 404


def test_a_private_repo_needs_its_owners_token(hub: LocalHub) -> None:
    repo_id = _new_repo(hub, "secret")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).list_repo_refs(repo_id)
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=hub.url, token=False).create_commit(
            repo_id, [CommitOperationAdd("x.txt", b"x")], commit_message="x"
        )
    assert err.value.response.status_code == 401


def test_lfs_batch_refuses_xet_only_and_bad_uploads(hub: LocalHub) -> None:
    repo_id = _new_repo(hub, "batch", private=False)
    url = f"{hub.url}/{repo_id}.git/info/lfs/objects/batch"
    headers = {"Authorization": f"Bearer {HUB_TOKEN}"}
    oid = hashlib.sha256(b"payload").hexdigest()
    body = {"operation": "upload", "transfers": ["xet"], "objects": [{"oid": oid, "size": 7}]}
    assert httpx2.post(url, json=body, headers=headers).status_code == 400
    body["transfers"] = ["basic"]
    answer = httpx2.post(url, json=body, headers=headers).json()
    href = answer["objects"][0]["actions"]["upload"]["href"]
    assert httpx2.put(href, content=b"tampere").status_code == 400  # right size, wrong bytes
    assert httpx2.put(href, content=b"payload").status_code == 403  # each URL is good for one try
