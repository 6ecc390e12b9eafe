"""The local hub and the fixture layouts, exercised through the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import (
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.rig import layouts as L
from tests.rig.fixtures_hub import HUB_TOKEN
from tests.rig.localhub import LocalHub, resolve_url


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("repo", "branch"),
    [
        (L.SD_BIN, "main"),
        (L.SD_BIN_SHARDED, "main"),
        (L.SDXL, "main"),
        (L.SD_FP16_BRANCH, "main"),
        (L.SD_FP16_BRANCH, "fp16"),
        (L.SD_ORIGINAL, "main"),
        (L.SD_CONFIG, "main"),
        (L.PORTRAITPLUS, "main"),
        (L.SD_EVERYTHING, "main"),
        (L.SD_GATED, "main"),
        (L.SD_PRIVATE, "main"),
    ],
)
def test_snapshot_download_gives_back_every_layout_byte_for_byte(hub, hub_layouts, repo, branch):
    layout = hub_layouts[repo]
    token = HUB_TOKEN if (layout.gated or layout.private) else None
    root = Path(snapshot_download(repo, revision=branch, token=token))
    got = {p.relative_to(root).as_posix(): sha256(p) for p in root.rglob("*") if p.is_file()}
    folder = layout.refs[branch]
    want = {p.relative_to(folder).as_posix(): sha256(p) for p in folder.rglob("*") if p.is_file()}
    assert got == want
    assert root.name == hub.head(repo, branch)
    # huggingface_hub stores blobs by content: a file identical to another (tokenizer_2, vae_1_0)
    # is fetched once.
    unique = {want[rel]: size for rel, size in layout.files(branch).items()}
    assert hub.bytes_sent(repo) == sum(unique.values())


def test_model_info_reports_commit_and_lfs_sha256(hub, hub_layouts):
    info = HfApi().model_info(L.PORTRAITPLUS, files_metadata=True)
    assert info.sha == hub.head(L.PORTRAITPLUS)
    folder = hub_layouts[L.PORTRAITPLUS].folder
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == set(hub_layouts[L.PORTRAITPLUS].files())
    ckpt = siblings["portrait+1.0.ckpt"]
    assert ckpt.lfs is not None
    assert ckpt.lfs.sha256 == sha256(folder / "portrait+1.0.ckpt")
    assert siblings["model_index.json"].lfs is None  # small text files live in plain git


def test_tree_listing_is_paginated_and_complete(hub, hub_layouts):
    files = list(HfApi().list_repo_tree(L.SDXL, recursive=True))
    paths = {f.path for f in files if hasattr(f, "blob_id")}
    assert paths == set(hub_layouts[L.SDXL].files())
    tree_calls = [r for r in hub.requests("GET") if "/tree/" in r[1]]
    assert len(tree_calls) == -(-len(files) // hub.page_size) > 1
    top = {f.path for f in HfApi().list_repo_tree(L.SDXL)}
    assert {"unet", "text_encoder_2", "model_index.json"} <= top
    assert "unet/config.json" not in top


@pytest.mark.parametrize("revision", ["main", "refs/heads/main", "v1.0", "short", "full"])
def test_revisions_resolve_like_the_hub(hub, revision):
    head = hub.head(L.SD_FP16_BRANCH, "main")
    rev = {"short": head[:7], "full": head}.get(revision, revision)
    assert HfApi().model_info(L.SD_FP16_BRANCH, revision=rev).sha == head


def test_fp16_branch_is_its_own_commit(hub):
    main, fp16 = hub.head(L.SD_FP16_BRANCH, "main"), hub.head(L.SD_FP16_BRANCH, "fp16")
    assert main != fp16
    assert len(fp16) == 40
    assert HfApi().model_info(L.SD_FP16_BRANCH, revision="fp16").sha == fp16


def test_errors_are_the_hubs(hub):
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError) as missing:
        api.model_info("tiny/does-not-exist")
    assert missing.value.response.status_code == 401  # the hub answers 401 without a token
    with pytest.raises(RevisionNotFoundError):
        api.model_info(L.SD_BIN, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(L.SD_BIN, "model_index.json", revision="0" * 40)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(L.SD_BIN, "no/such/file.json")


def test_gated_repo_needs_a_granted_token(hub):
    assert HfApi().model_info(L.SD_GATED).gated == "manual"  # metadata is public, like the hub's
    with pytest.raises(GatedRepoError):
        hf_hub_download(L.SD_GATED, "model_index.json")
    assert Path(hf_hub_download(L.SD_GATED, "model_index.json", token=HUB_TOKEN)).is_file()


def test_private_repo_looks_missing_without_a_token(hub):
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(L.SD_PRIVATE)
    assert HfApi().model_info(L.SD_PRIVATE, token=HUB_TOKEN).sha == hub.head(L.SD_PRIVATE)


def test_unknown_token_is_refused_as_invalid_credentials(hub):
    with pytest.raises(HfHubHTTPError) as err:
        HfApi().model_info(L.SD_BIN, token="hf_not_a_real_token")
    assert not isinstance(err.value, RepositoryNotFoundError)
    assert err.value.response.status_code == 401


def test_file_metadata_headers(hub, hub_layouts):
    folder = hub_layouts[L.SD_BIN].folder
    lfs = get_hf_file_metadata(hf_hub_url(L.SD_BIN, "unet/diffusion_pytorch_model.bin"))
    assert lfs.etag == sha256(folder / "unet/diffusion_pytorch_model.bin")
    assert lfs.size == (folder / "unet/diffusion_pytorch_model.bin").stat().st_size
    assert lfs.commit_hash == hub.head(L.SD_BIN)
    plain = get_hf_file_metadata(hf_hub_url(L.SD_BIN, "model_index.json"))
    data = (folder / "model_index.json").read_bytes()
    assert plain.etag == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git blob id
    assert hub.bytes_sent() == 0  # HEAD requests send no body


def test_range_requests(hub, hub_layouts):
    url = resolve_url(hub.url, L.SD_BIN, "unet/config.json")
    data = (hub_layouts[L.SD_BIN].folder / "unet/config.json").read_bytes()
    r = httpx2.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206
    assert r.content == data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert httpx2.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416


def test_cached_files_are_not_downloaded_twice(hub):
    hf_hub_download(L.SD_BIN, "unet/diffusion_pytorch_model.bin")
    sent = hub.files_sent(L.SD_BIN)
    assert list(sent) == ["unet/diffusion_pytorch_model.bin"]
    hf_hub_download(L.SD_BIN, "unet/diffusion_pytorch_model.bin", revision=hub.head(L.SD_BIN))
    assert hub.files_sent(L.SD_BIN) == sent


def test_commits_move_branches_and_keep_history(hub):
    repo = "tiny/history-test"
    hub.fork_repo(L.SD_FP16_BRANCH, repo)
    before = hub.head(repo)
    after = hub.commit(repo, {"README.md": b"changed\n"}, message="edit readme")
    assert after != before
    assert hub.head(repo) == after
    assert HfApi().model_info(repo).sha == after
    assert HfApi().model_info(repo, revision="v1.0").sha == before  # tags stay put
    assert hub.head(L.SD_FP16_BRANCH) == before  # the original repo is untouched


def test_original_checkpoint_is_deterministic(hub_layouts, tmp_path):
    """Rebuilt here from the fp32 folder, it matches the session's (or a cached earlier session's) build."""
    config = hub_layouts[L.SD_FP16_BRANCH].folder
    again = L.write_original_checkpoint(config, tmp_path / "again.safetensors")
    assert sha256(again) == sha256(hub_layouts[L.SD_ORIGINAL].folder / L.SINGLE_FILE_SAFETENSORS)


@pytest.mark.parametrize("name", [L.SINGLE_FILE_SAFETENSORS, L.SINGLE_FILE_CKPT])
def test_single_file_checkpoints_round_trip_through_diffusers(hub_layouts, name):
    """The converter loads layout (4) with from_single_file + a local config: it gives back the weights."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    ckpt = hub_layouts[L.SD_ORIGINAL].folder / name
    pipe = StableDiffusionPipeline.from_single_file(
        str(ckpt), config=str(hub_layouts[L.SD_CONFIG].folder), local_files_only=True
    )
    reference = hub_layouts[L.SD_FP16_BRANCH].folder  # the same pipeline as diffusers folders, fp32
    for component, weights in (
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ):
        want = load_file(reference / component / weights)
        got = getattr(pipe, component).state_dict()
        assert set(got) == set(want), component
        assert all(torch.equal(got[k], want[k]) for k in want), component


def test_fixture_layouts_load_with_diffusers(hub_layouts):
    """Layouts (1), (2), (3) are what diffusers itself reads: .bin, sharded .bin, fp16 variants."""
    import torch
    from diffusers import DiffusionPipeline

    plain = DiffusionPipeline.from_pretrained(hub_layouts[L.SD_BIN].folder)
    sharded = DiffusionPipeline.from_pretrained(hub_layouts[L.SD_BIN_SHARDED].folder)
    a, b = plain.text_encoder.state_dict(), sharded.text_encoder.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain.safety_checker is not None

    sdxl = DiffusionPipeline.from_pretrained(hub_layouts[L.SDXL].folder, variant="fp16", dtype=torch.float16)
    assert type(sdxl).__name__ == "StableDiffusionXLPipeline"
    assert sdxl.text_encoder_2.dtype == torch.float16

    fp16 = DiffusionPipeline.from_pretrained(hub_layouts[L.SD_FP16_BRANCH].refs["fp16"], dtype=torch.float16)
    fp32 = DiffusionPipeline.from_pretrained(hub_layouts[L.SD_FP16_BRANCH].folder)
    a, b = fp16.unet.state_dict(), fp32.unet.state_dict()
    assert all(a[k].dtype == torch.float16 and torch.equal(a[k], b[k].half()) for k in a)
    index = json.loads((hub_layouts[L.SD_FP16_BRANCH].folder / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None]


def test_hub_counts_each_file(tmp_path):
    with LocalHub(tmp_path / "blobs") as server:
        server.create_repo("a/b")
        server.commit("a/b", {"x.bin": b"12345", "y.json": b"{}"})
        r = httpx2.get(resolve_url(server.url, "a/b", "x.bin"))
        assert r.content == b"12345"
        assert r.headers["X-Repo-Commit"] == server.head("a/b")
        assert server.files_sent("a/b") == {"x.bin": 5}
