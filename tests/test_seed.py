"""Seeding a RunPod network volume over its S3 API (moto, with a bucket named like a volume id)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from artifact_format import manifest as mf
from packager.errors import VolumeError
from packager.source.recipe import load_recipe
from packager.store.seed import PART_LIMIT, seed_volume, volume_has_artifact, volume_target
from packager.store.transfer import TransferSettings
from tests.rig.cli import run_packager
from tests.rig.fixtures_s3 import S3Env
from tests.rig.s3 import demo_artifact, small_parts
from volume_sync.pull import pull

MiB = 1024 * 1024
SMALL_PARTS = small_parts()
VOLUME_ID = "k3x9q2m7pa"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory):
    return demo_artifact(tmp_path_factory, 12 * MiB)


def recipe(folder: Path, volume: str) -> Path:
    path = folder / "demo.yaml"
    path.write_text(f"name: demo\nsource:\n  path: ./model\nmode: volume\nvolume:\n{volume}")
    return path


@pytest.fixture
def volume(s3: S3Env, tmp_path: Path):
    """A recipe whose network volume is a moto bucket named like a RunPod volume id."""
    s3.new_bucket(VOLUME_ID)
    return load_recipe(recipe(tmp_path, f"  id: {VOLUME_ID}\n  endpoint_url: {s3.endpoint_url}\n"))


def test_seed_puts_the_artifact_where_workers_look_and_ready_last(
    s3: S3Env, volume, artifact, tmp_path
) -> None:
    s3.traffic.reset()
    result = seed_volume(volume, artifact, progress=False, settings=SMALL_PARTS)
    seen = s3.traffic.select(VOLUME_ID)

    prefix = f"models/demo/{artifact.id}/"
    assert (result.volume_id, result.key_prefix) == (VOLUME_ID, prefix)
    assert result.path_on_volume == f"/runpod-volume/models/demo/{artifact.id}"
    assert result.files_sent == len(artifact.manifest.files)
    assert not result.skipped_whole
    expected = [mf.MANIFEST_NAME, mf.READY_MARKER, *(f.path for f in artifact.manifest.files)]
    assert s3.keys(prefix, bucket=VOLUME_ID) == sorted(prefix + p for p in expected)
    writes = [r for r in seen if r.op in ("PutObject", "CompleteMultipartUpload")]
    assert [w.path.rsplit("/", 1)[-1] for w in writes[-2:]] == [mf.MANIFEST_NAME, mf.READY_MARKER]
    ops = {r.op for r in seen}
    assert "ListObjects" not in ops, "no listing"
    assert "POSTBucket" not in ops, "no DeleteObjects"
    assert sum(r.op == "UploadPart" for r in seen) >= 2, "the big file went multipart"
    # What a pod would see on the volume is a complete, verifiable artifact.
    mount = tmp_path / "volume-as-seen-by-a-pod"
    mount.mkdir()
    assert pull(f"s3://{VOLUME_ID}/{prefix}", mount) == mf.volume_path(mount, "demo", artifact.id)


def test_a_seeded_volume_is_skipped_with_one_request(s3: S3Env, volume, artifact) -> None:
    seed_volume(volume, artifact, progress=False, settings=SMALL_PARTS)
    s3.traffic.reset()

    again = seed_volume(volume, artifact, progress=False, settings=SMALL_PARTS)

    assert again.skipped_whole
    assert again.bytes_sent == 0
    assert [(r.op, r.path.rsplit("/", 1)[-1]) for r in s3.traffic.select(VOLUME_ID)] == [
        ("HeadObject", mf.READY_MARKER)
    ]
    assert volume_has_artifact(volume, artifact.id)


def test_an_interrupted_seed_sends_only_what_is_missing(s3: S3Env, volume, artifact) -> None:
    seed_volume(volume, artifact, progress=False, settings=SMALL_PARTS)
    prefix = f"models/demo/{artifact.id}/"
    # As if the seed had died before its last file (no DeleteObjects on RunPod: one key at a time).
    for rel in (mf.READY_MARKER, mf.MANIFEST_NAME, "vae/diffusion_pytorch_model.safetensors"):
        s3.client.delete_object(Bucket=VOLUME_ID, Key=prefix + rel)
    assert not volume_has_artifact(volume, artifact.id)
    s3.traffic.reset()

    result = seed_volume(volume, artifact, progress=False, settings=SMALL_PARTS)

    assert (result.files_sent, result.files_skipped) == (1, len(artifact.manifest.files) - 1)
    sent = [r.path.rsplit("/", 1)[-1] for r in s3.traffic.select(VOLUME_ID) if r.op == "PutObject"]
    assert sent == ["diffusion_pytorch_model.safetensors", mf.MANIFEST_NAME, mf.READY_MARKER]
    assert s3.traffic.count(VOLUME_ID, "ListObjects") == 0


def test_parts_must_stay_under_runpods_request_limit(volume, artifact) -> None:
    too_big = TransferSettings(multipart_threshold=PART_LIMIT, chunk_size=PART_LIMIT)
    with pytest.raises(VolumeError, match="under 500000000 bytes"):
        seed_volume(volume, artifact, progress=False, settings=too_big)


def test_unknown_volume_is_one_line(s3: S3Env, tmp_path: Path, artifact) -> None:
    loaded = load_recipe(recipe(tmp_path, f"  id: novolume42\n  endpoint_url: {s3.endpoint_url}\n"))
    with pytest.raises(VolumeError) as err:
        seed_volume(loaded, artifact, progress=False, settings=SMALL_PARTS)
    assert "bucket 'novolume42' does not exist" in str(err.value)
    assert "volume.id in the recipe" in str(err.value)


@pytest.mark.parametrize(
    ("volume_yaml", "expected"),
    [
        ("  datacenter: EU-RO-1\n", "volume.id is not set"),
        ("  id: abc123\n", "set volume.datacenter (e.g. EU-RO-1) or volume.endpoint_url"),
    ],
)
def test_volume_settings_are_required(tmp_path: Path, volume_yaml: str, expected: str) -> None:
    with pytest.raises(
        VolumeError, match=expected.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        volume_target(load_recipe(recipe(tmp_path, volume_yaml)))


def test_datacenter_gives_endpoint_and_signing_region(tmp_path: Path) -> None:
    target = volume_target(load_recipe(recipe(tmp_path, "  id: abc123\n  datacenter: eu-ro-1\n")))
    assert (target.endpoint_url, target.region) == ("https://s3api-eu-ro-1.runpod.io", "EU-RO-1")
    target = volume_target(
        load_recipe(recipe(tmp_path, "  id: abc123\n  endpoint_url: https://s3api-us-ks-2.runpod.io\n"))
    )
    assert target.region == "US-KS-2"


def test_the_runpod_profile_holds_the_volume_keys(
    s3: S3Env, volume, artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The S3 API key lives in profile `runpod`; the ambient AWS keys (for the store) are not used."""
    import boto3
    from moto.core.authorization import enable_iam_authentication

    iam = boto3.client("iam", endpoint_url=s3.endpoint_url, region_name="us-east-1")
    iam.create_user(UserName="runpod-s3")
    policy = iam.create_policy(
        PolicyName="volume",
        PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}',
    )
    iam.attach_user_policy(UserName="runpod-s3", PolicyArn=policy["Policy"]["Arn"])
    key = iam.create_access_key(UserName="runpod-s3")["AccessKey"]
    config = Path(s3.env["AWS_CONFIG_FILE"])
    config.write_text(
        f"[profile runpod]\naws_access_key_id = {key['AccessKeyId']}\n"
        f"aws_secret_access_key = {key['SecretAccessKey']}\n"
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGSTOREKEY000")

    with enable_iam_authentication():
        result = seed_volume(volume, artifact, progress=False, settings=SMALL_PARTS)

    assert result.files_sent == len(artifact.manifest.files)
    config.unlink()
    with enable_iam_authentication(), pytest.raises(VolumeError, match="refused the credentials"):
        volume_has_artifact(volume, artifact.id)


def test_cli_seed_then_rerun(s3: S3Env, tiny_build: tuple[Path, Path], tmp_path: Path) -> None:
    from tests.rig.artifacts import tiny_recipe

    source, build = tiny_build
    s3.new_bucket(VOLUME_ID)
    extra = f"mode: volume\nvolume:\n  id: {VOLUME_ID}\n  endpoint_url: {s3.endpoint_url}\n"
    # Beside the shared build dir, so its lock (and the artifact id it records) is shared too.
    recipe = tiny_recipe(build.parent / "recipes", source, extra=extra)
    env = s3.subprocess_env(PACKAGER_BUILD_DIR=str(build))

    first = run_packager("seed", str(recipe), "--json", env=env)

    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    prefix = f"models/tiny/{data['artifact_id']}/"
    assert data["uri"] == f"s3://{VOLUME_ID}/{prefix.rstrip('/')}"
    assert data["files_sent"] > 0
    assert data["path_on_volume"] == f"/runpod-volume/{prefix.rstrip('/')}"
    assert prefix + mf.READY_MARKER in s3.keys(prefix, bucket=VOLUME_ID)
    s3.traffic.reset()

    again = run_packager("seed", str(recipe), env=env)

    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stdout
    assert [(r.op, r.path.rsplit("/", 1)[-1]) for r in s3.traffic.select(VOLUME_ID)] == [
        ("HeadObject", mf.READY_MARKER)
    ]


def test_cli_seed_to_an_unknown_volume_is_one_line(
    s3: S3Env, tiny_build: tuple[Path, Path], tmp_path: Path
) -> None:
    from tests.rig.artifacts import tiny_recipe

    source, _ = tiny_build
    extra = f"volume:\n  id: novolume42\n  endpoint_url: {s3.endpoint_url}\n"
    recipe = tiny_recipe(tmp_path, source, extra=extra)

    done = run_packager(
        "seed", str(recipe), env=s3.subprocess_env(PACKAGER_BUILD_DIR=str(tmp_path / "build"))
    )

    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("packager: error: bucket 'novolume42' does not exist")
    assert "volume.id" in last
    assert not (tmp_path / "build" / "artifacts").exists(), "failed before converting anything"
