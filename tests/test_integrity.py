"""Corrupt bytes are never published nor taken for complete, and a stalled endpoint fails in time.

Every corruption here keeps the file's size (only a hash can tell), and is tried on each path a
byte takes: local artifact → store (upload), store → store (re-upload), store → folder (pull).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artifact_format import manifest as mf
from packager.errors import StoreError, VerifyError
from packager.store.s3 import S3Store
from packager.store.stores import open_store_uri
from packager.store.transfer import TransferSettings
from tests.rig.fixtures_s3 import S3Env
from tests.rig.s3 import load_artifact, synthetic_artifact

MiB = 1024 * 1024
SMALL_PARTS = TransferSettings(multipart_threshold=5 * MiB, chunk_size=5 * MiB, concurrency=4)
ROOT = Path(__file__).resolve().parents[1]
BAD = "vae/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory):
    folder, _ = synthetic_artifact(tmp_path_factory.mktemp("art") / "artifact", 12 * MiB, name="demo")
    return load_artifact(folder)


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def corrupt_copy(artifact, tmp_path: Path):
    folder = tmp_path / "corrupt"
    shutil.copytree(artifact.dir, folder)
    flip_one_byte(folder / BAD)
    return load_artifact(folder)


def test_upload_to_s3_refuses_a_locally_corrupt_file_before_sending_anything(s3: S3Env, corrupt_copy) -> None:
    store = open_store_uri(s3.uri("models"), settings=SMALL_PARTS)
    s3.traffic.reset()

    with pytest.raises(VerifyError) as err:
        store.upload(corrupt_copy, progress=False)

    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"{corrupt_copy.dir / BAD}: sha256 ")
    assert "does not match the manifest" in line
    sent = [r.op for r in s3.traffic.select(s3.bucket) if r.op in ("PutObject", "UploadPart")]
    assert sent == []
    assert not store.has_artifact("demo", corrupt_copy.id)


def test_upload_to_a_local_store_refuses_a_locally_corrupt_file(corrupt_copy, tmp_path: Path) -> None:
    store = open_store_uri(str(tmp_path / "store"))

    with pytest.raises(VerifyError, match=rf"{BAD}: sha256 .* does not match the manifest"):
        store.upload(corrupt_copy, progress=False)

    assert not store.has_artifact("demo", corrupt_copy.id)
    assert not (tmp_path / "store" / "demo" / corrupt_copy.id / BAD).exists()


def test_verify_remote_finds_a_corrupt_s3_object_and_the_upload_repairs_it(
    s3: S3Env, artifact, tmp_path: Path
) -> None:
    store = open_store_uri(s3.uri("models"), settings=SMALL_PARTS)
    store.upload(artifact, progress=False)
    entry = artifact.manifest.file(BAD)
    key = f"models/demo/{artifact.id}/{BAD}"
    s3.client.put_object(
        Bucket=s3.bucket, Key=key, Body=b"\1" * entry.size, Metadata={"sha256": entry.sha256}
    )
    assert store.upload(artifact, progress=False).skipped_whole, "a plain upload trusts the store"

    bad = store.verify_remote("demo", artifact.id, artifact.manifest, progress=False)

    assert bad == [BAD]
    assert not store.has_artifact("demo", artifact.id), "uncommitted until repaired"
    again = store.upload(artifact, progress=False)
    assert (again.files_sent, again.skipped_whole) == (1, False)
    store.download("demo", artifact.id, tmp_path / "pulled", progress=False)
    mf.check(tmp_path / "pulled", full_hash=True)
    assert store.verify_remote("demo", artifact.id, artifact.manifest, progress=False) == []


def test_verify_remote_on_a_local_store(artifact, tmp_path: Path) -> None:
    store = open_store_uri(str(tmp_path / "store"))
    store.upload(artifact, progress=False)
    stored = tmp_path / "store" / "demo" / artifact.id / BAD
    flip_one_byte(stored)

    assert store.verify_remote("demo", artifact.id, artifact.manifest, progress=False) == [BAD]
    assert not store.has_artifact("demo", artifact.id)
    store.upload(artifact, progress=False)
    assert mf.sha256_file(stored) == artifact.manifest.file(BAD).sha256


def test_pull_into_a_folder_with_a_same_size_corrupt_copy_is_not_complete(artifact, tmp_path: Path) -> None:
    store = open_store_uri(str(tmp_path / "store"))
    store.upload(artifact, progress=False)
    dest = tmp_path / "pulled"
    store.download("demo", artifact.id, dest, progress=False)
    flip_one_byte(dest / BAD)

    with pytest.raises(VerifyError, match=rf"{BAD}: sha256 .* does not match the manifest"):
        store.download("demo", artifact.id, dest, progress=False)


def test_cli_upload_verify_remote_repairs_the_store(tiny_build: tuple[Path, Path], tmp_path: Path) -> None:
    from tests.rig.artifacts import tiny_recipe

    source, build = tiny_build
    store_dir = tmp_path / "store"
    recipe = tiny_recipe(build.parent / "recipes", source, extra=f"store:\n  uri: {store_dir}\n")
    env = {"PACKAGER_BUILD_DIR": str(build), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def packager(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "packager", *args],
            capture_output=True,
            text=True,
            env={**env, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            timeout=600,
        )

    first = packager("upload", str(recipe), "--json")
    assert first.returncode == 0, first.stderr
    artifact_id = json.loads(first.stdout)["artifact_id"]
    stored = store_dir / "tiny" / artifact_id
    victim = max((p for p in stored.rglob("*.safetensors")), key=lambda p: p.stat().st_size)
    flip_one_byte(victim)

    plain = packager("upload", str(recipe), "--json")
    assert json.loads(plain.stdout)["skipped_whole"] is True
    repaired = packager("upload", str(recipe), "--verify-remote", "--json")

    assert repaired.returncode == 0, repaired.stderr
    assert json.loads(repaired.stdout)["files_sent"] == 1
    assert f"store copy of {victim.relative_to(stored).as_posix()} is missing or corrupt" in repaired.stderr
    mf.check(stored, full_hash=True)


# -- a stalled endpoint ----------------------------------------------------------------------------


def test_a_store_that_never_answers_fails_within_the_timeout(
    silent_endpoint: str, artifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PACKAGER_TIMEOUT", "2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id-0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key-0000")
    store = open_store_uri("s3://bucket/models")
    assert isinstance(store, S3Store)
    store._endpoint_url = silent_endpoint

    start = time.monotonic()
    with pytest.raises(StoreError) as err:
        store.upload(artifact, progress=False)
    elapsed = time.monotonic() - start

    assert elapsed < 20, f"took {elapsed:.0f} s"
    assert "\n" not in str(err.value)
    assert f"the S3 endpoint {silent_endpoint} accepted the connection but sent nothing back" in str(
        err.value
    )


def test_store_timeout_comes_from_the_recipe_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from packager.source.recipe import load_recipe
    from packager.store.stores import open_store

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: m\nsource: {repo: org/m}\nstore: {uri: 's3://bkt/p', timeout: 8}\n")
    monkeypatch.delenv("PACKAGER_TIMEOUT", raising=False)
    store = open_store(load_recipe(recipe))
    assert store.client.meta.config.read_timeout == 2.0  # 8 s shared by 4 attempts
    assert store.client.meta.config.connect_timeout == 10
    monkeypatch.setenv("PACKAGER_TIMEOUT", "40")
    assert open_store(load_recipe(recipe)).client.meta.config.read_timeout == 10.0


# -- pull destinations -----------------------------------------------------------------------------


def test_pull_into_an_existing_empty_folder_keeps_the_folder(artifact, tmp_path: Path) -> None:
    store = open_store_uri(str(tmp_path / "store"))
    store.upload(artifact, progress=False)
    mount = tmp_path / "mnt"
    mount.mkdir()
    inode = mount.stat().st_ino

    with pytest.raises(StoreError, match="not in the store"):
        store.download("demo", "0" * 64, mount, progress=False)
    assert mount.stat().st_ino == inode, "an empty destination survives a failed pull"
    result = store.download("demo", artifact.id, mount, progress=False)

    assert result.files_sent == len(artifact.manifest.files)
    assert mount.stat().st_ino == inode, "a mount point is filled in place, never replaced"
    assert sorted(p.name for p in mount.iterdir() if p.name.startswith(".")) == []
    mf.check(mount, full_hash=True)


def test_pull_to_a_destination_that_cannot_be_written_is_one_line(artifact, tmp_path: Path) -> None:
    store = open_store_uri(str(tmp_path / "store"))
    store.upload(artifact, progress=False)
    (tmp_path / "blocker").write_text("a file")

    with pytest.raises(StoreError) as err:
        store.download("demo", artifact.id, tmp_path / "blocker" / "pulled", progress=False)
    assert "cannot write the pulled artifact" in str(err.value)
    assert "\n" not in str(err.value)


def test_pull_to_a_read_only_destination_is_one_line_and_deletes_nothing(artifact, tmp_path: Path) -> None:
    from tests.rig.slowfs import mounted

    store = open_store_uri(str(tmp_path / "store"))
    store.upload(artifact, progress=False)
    served = tmp_path / "served"
    (served / "mount-point").mkdir(parents=True)
    (served / "other.txt").write_text("kept")

    with mounted(served, tmp_path / "read-only") as volume:
        for dest in (volume / "mount-point", volume / "models" / "pulled"):
            with pytest.raises(StoreError) as err:
                store.download("demo", artifact.id, dest, progress=False)
            assert "\n" not in str(err.value)
            assert "cannot write the pulled artifact (Read-only file system)" in str(err.value)
        assert (volume / "mount-point").is_dir(), "the empty destination is still there"

    assert sorted(p.name for p in served.iterdir()) == ["mount-point", "other.txt"]
    assert list((served / "mount-point").iterdir()) == []


def test_a_failed_pull_leaves_no_stale_partial_after_the_next_run(artifact, tmp_path: Path) -> None:
    store = open_store_uri(str(tmp_path / "store"))
    store.upload(artifact, progress=False)
    flip_one_byte(tmp_path / "store" / "demo" / artifact.id / BAD)
    dest = tmp_path / "pulled"

    with pytest.raises(VerifyError, match=rf"{BAD}: sha256"):
        store.download("demo", artifact.id, dest, progress=False)
    staging = tmp_path / ".pulled.partial"
    assert staging.is_dir(), "the verified files stay staged for the next try"
    assert store.verify_remote("demo", artifact.id, artifact.manifest, progress=False) == [BAD]
    store.upload(artifact, progress=False)
    store.download("demo", artifact.id, dest, progress=False)
    assert not staging.exists()

    # A pull killed after its last rename leaves staging beside or inside a complete copy.
    (staging / "vae").mkdir(parents=True)
    (dest / ".partial").mkdir()
    again = store.download("demo", artifact.id, dest, progress=False)
    assert again.skipped_whole
    assert not staging.exists()
    assert not (dest / ".partial").exists()
    mf.check(dest, full_hash=True)
