"""Publishing an artifact to a hub repo and serving it from a RunPod-shaped HF cache.

The local hub counts what it receives; the worker runs as a process against the cache that
`snapshot_download` lays out, exactly where RunPod's cached models put it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download

from artifact_format import manifest as mf
from packager.errors import PublishError
from packager.publish.hub_repo import Published, publish, published_commit, tag_name
from tests.rig.artifacts import make_artifact, tiny_source
from tests.rig.fixtures_hub import HUB_TOKEN
from tests.rig.fixtures_s3 import S3Env
from tests.rig.localhub import LocalHub
from tests.rig.worker import run_test_input
from tests.test_worker_volume import upload_artifact

JOB = {"input": {"prompt": "a lantern", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 3}}
RUNPOD_CACHE = Path("huggingface-cache/hub")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("publish")
    return make_artifact(tiny_source(root / "source"), root / "artifact")


@pytest.fixture(scope="module")
def tiny_other(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("publish-other")
    return make_artifact(tiny_source(root / "source", seed=1), root / "artifact")


def _publish(artifact: tuple[Path, str], repo: str) -> Published:
    folder, artifact_id = artifact
    return publish(
        folder, mf.load(folder), artifact_id, repo=repo, private=True, token=HUB_TOKEN, token_env="HF_TOKEN"
    )


def _artifact_paths(folder: Path) -> set[str]:
    return {e.path for e in mf.load(folder).files} | {mf.MANIFEST_NAME}


def _read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_publish_commits_the_artifact_tags_it_and_a_second_publish_sends_nothing(
    hub: LocalHub, tiny: tuple[Path, str]
) -> None:
    folder, artifact_id = tiny
    repo = "publisher/tiny-packaged"
    first = _publish(tiny, repo)
    assert set(hub.files(repo, first.commit)) == _artifact_paths(folder) | {".gitattributes"}
    assert hub.repos[repo].tags[tag_name(artifact_id)] == first.commit
    assert hub.repos[repo].commits[first.commit].message == f"artifact {artifact_id}"
    assert hub.repos[repo].private
    total = sum(e.size for e in mf.load(folder).files) + (folder / mf.MANIFEST_NAME).stat().st_size
    assert hub.bytes_received(repo) == total == first.bytes_sent
    weights = {e.sha256 for e in mf.load(folder).weight_files}
    assert {oid for r, oid, _ in hub.received.lfs_puts if r == repo} == weights

    hub.reset_stats()
    before = hub.bytes_received(repo)
    again = _publish(tiny, repo)
    assert again.sent_nothing
    assert again.commit == first.commit
    assert hub.bytes_received(repo) == before
    assert {m for m, _, _ in hub.requests()} == {"GET"}  # the refs, then the tagged tree's pages
    assert published_commit(repo, artifact_id, token=HUB_TOKEN, token_env="HF_TOKEN") == first.commit


def test_a_new_artifact_replaces_the_tree_exactly_and_keeps_the_old_tag(
    hub: LocalHub, tiny: tuple[Path, str], tiny_other: tuple[Path, str]
) -> None:
    repo = "publisher/tiny-replaced"
    first = _publish(tiny, repo)
    hub.commit(repo, {"old/leftover.safetensors": b"\0" * 64, "README.md": b"# card\n"}, message="by hand")
    second = _publish(tiny_other, repo)
    assert second.commit != first.commit
    assert set(hub.files(repo, second.commit)) == _artifact_paths(tiny_other[0]) | {
        ".gitattributes",
        "README.md",
    }
    assert second.deleted == ("old/leftover.safetensors",)
    assert hub.repos[repo].tags[tag_name(tiny[1])] == first.commit
    assert hub.repos[repo].tags[tag_name(tiny_other[1])] == second.commit
    # Weights that did not change between the two artifacts were not sent again.
    unchanged = {e.path for e in mf.load(tiny[0]).files} & {
        e.path for e in mf.load(tiny_other[0]).files if e in mf.load(tiny[0]).files
    }
    assert second.files_sent == len(_artifact_paths(tiny_other[0])) - len(unchanged)


def test_a_tag_that_points_at_other_files_is_refused(hub: LocalHub, tiny: tuple[Path, str]) -> None:
    repo = "publisher/tiny-tampered"
    first = _publish(tiny, repo)
    hub.commit(repo, {"unet/config.json": b"{}"}, message="edit")
    hub.repos[repo].tags[tag_name(tiny[1])] = hub.head(repo)
    with pytest.raises(PublishError, match=r"tag artifact-\w{12} points at \w{12}, whose files differ"):
        _publish(tiny, repo)
    assert hub.head(repo) != first.commit


def test_a_token_that_cannot_write_is_one_line_without_the_token(
    hub: LocalHub, tiny: tuple[Path, str]
) -> None:
    folder, artifact_id = tiny
    with pytest.raises(PublishError) as err:
        publish(
            folder,
            mf.load(folder),
            artifact_id,
            repo="publisher/refused",
            private=True,
            token="hf_not_a_known_token",
            token_env="HF_WRITE_TOKEN",
        )
    assert "HF_WRITE_TOKEN" in str(err.value)
    assert "hf_not_a_known_token" not in str(err.value)
    assert "\n" not in str(err.value)


def test_the_worker_serves_from_a_runpod_shaped_cache_and_never_writes_there(
    hub: LocalHub, tiny: tuple[Path, str], tmp_path: Path
) -> None:
    repo = "publisher/tiny-served"
    published = _publish(tiny, repo)
    volume = tmp_path / "runpod-volume"
    cache = volume / RUNPOD_CACHE
    snapshot = Path(snapshot_download(repo, revision=published.commit, cache_dir=cache, token=HUB_TOKEN))
    assert snapshot == cache / "models--publisher--tiny-served" / "snapshots" / published.commit
    assert (snapshot / mf.MANIFEST_NAME).is_symlink()
    _read_only(volume)
    listing = sorted(str(p) for p in volume.rglob("*"))
    env = {
        "MODEL_REPO": repo,
        "MODEL_COMMIT": published.commit,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "VOLUME_MOUNT": str(volume),
    }
    saved = tmp_path / "saved"
    proc = run_test_input(None, JOB, tmp_path / "run", WORKER_SAVE_DIR=str(saved), **env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    answer = json.loads((saved / "local_test.json").read_text())
    assert answer["$meta"]["artifact_id"] == tiny[1]
    assert sorted(str(p) for p in volume.rglob("*")) == listing

    wrong = "0" * 40
    proc = run_test_input(None, JOB, tmp_path / "wrong", **{**env, "MODEL_COMMIT": wrong})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert lines == [
        (
            f"worker: error: {repo}@{wrong}: not in the Hugging Face cache (looked in "
            f"{cache / 'models--publisher--tiny-served' / 'snapshots' / wrong}); is the endpoint's cached "
            "model set to this repo and commit?"
        )
    ]
    os.chmod(volume, 0o755)


def test_a_cache_miss_with_a_store_and_a_volume_pulls_like_volume_mode(
    s3: S3Env, tiny: tuple[Path, str], volume_mount: Path, tmp_path: Path
) -> None:
    folder, artifact_id = tiny
    uri = upload_artifact(s3, folder, artifact_id)
    (volume_mount / RUNPOD_CACHE).mkdir(parents=True)
    env = {
        "MODEL_REPO": "publisher/tiny-missing",
        "MODEL_COMMIT": "1" * 40,
        "HF_HUB_CACHE": str(volume_mount / RUNPOD_CACHE),
        "VOLUME_MOUNT": str(volume_mount),
        "ARTIFACT_URI": uri,
        "PULL_TIMEOUT_S": "120",
        **s3.env,
    }
    saved = tmp_path / "saved"
    proc = run_test_input(None, JOB, tmp_path / "run", WORKER_SAVE_DIR=str(saved), **env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    pulled = mf.volume_path(volume_mount, "tiny", artifact_id)
    assert (pulled / mf.READY_MARKER).is_file()
    assert json.loads((saved / "local_test.json").read_text())["$meta"]["artifact_id"] == artifact_id
