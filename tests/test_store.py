"""The artifact store: upload and pull through S3 (moto on loopback) and a local directory."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from artifact_format import manifest as mf
from packager.errors import StoreError, VerifyError
from packager.store.local import LocalStore
from packager.store.s3 import S3Store
from packager.store.stores import open_store_uri, split_artifact_uri
from tests.rig.cli import run_packager
from tests.rig.fixtures_s3 import S3Env
from tests.rig.s3 import Request, demo_artifact, load_artifact, small_parts, synthetic_artifact

MiB = 1024 * 1024
SMALL_PARTS = small_parts()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory):
    return demo_artifact(tmp_path_factory, 12 * MiB)


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- S3 --------------------------------------------------------------------------------------------


def test_upload_then_pull_round_trip(s3: S3Env, artifact, tmp_path: Path) -> None:
    store = open_store_uri(s3.uri("models"), settings=SMALL_PARTS)
    result = store.upload(artifact, progress=False)

    prefix = f"models/demo/{artifact.id}/"
    assert result.uri == f"s3://{s3.bucket}/models/demo/{artifact.id}"
    assert not result.skipped_whole
    assert result.files_sent == len(artifact.manifest.files)
    assert s3.keys(prefix) == sorted(
        prefix + p for p in [mf.MANIFEST_NAME, *(f.path for f in artifact.manifest.files)]
    )
    big = artifact.manifest.file("unet/diffusion_pytorch_model.safetensors")
    head = s3.client.head_object(Bucket=s3.bucket, Key=prefix + big.path)
    assert head["Metadata"]["sha256"] == big.sha256
    assert s3.traffic.count(s3.bucket, "UploadPart") >= 2  # the big file went multipart
    puts = [r for r in s3.traffic.select(s3.bucket) if r.op in ("PutObject", "CompleteMultipartUpload")]
    assert puts[-1].path.endswith("/" + mf.MANIFEST_NAME), "the manifest is the last object written"
    assert store.has_artifact("demo", artifact.id)
    assert store.list_artifacts() == [("demo", artifact.id)]

    pulled = store.download("demo", artifact.id, tmp_path / "pulled", progress=False)
    assert pulled.files_sent == len(artifact.manifest.files)
    assert same_tree(artifact.dir, tmp_path / "pulled")
    assert mf.artifact_id_of(tmp_path / "pulled") == artifact.id
    assert not (tmp_path / ".pulled.partial").exists()


def test_rerun_is_one_request_and_zero_bytes(s3: S3Env, artifact) -> None:
    open_store_uri(s3.uri("models"), settings=SMALL_PARTS).upload(artifact, progress=False)
    s3.traffic.reset()

    again = open_store_uri(s3.uri("models"), settings=SMALL_PARTS).upload(artifact, progress=False)

    assert again.skipped_whole
    assert again.bytes_sent == 0
    assert again.files_sent == 0
    assert [r.op for r in s3.traffic.select(s3.bucket)] == ["HeadObject"]
    assert s3.traffic.bytes_in(s3.bucket) == 0


def test_unfinished_upload_resends_only_what_is_missing(s3: S3Env, artifact) -> None:
    store = open_store_uri(s3.uri("models"), settings=SMALL_PARTS)
    store.upload(artifact, progress=False)
    prefix = f"models/demo/{artifact.id}/"
    # As if the run had died before its last file and the manifest.
    s3.client.delete_object(Bucket=s3.bucket, Key=prefix + mf.MANIFEST_NAME)
    s3.client.delete_object(Bucket=s3.bucket, Key=prefix + "vae/diffusion_pytorch_model.safetensors")
    assert not store.has_artifact("demo", artifact.id)
    assert store.read_manifest("demo", artifact.id) is None
    s3.traffic.reset()

    result = store.upload(artifact, progress=False)

    vae = artifact.manifest.file("vae/diffusion_pytorch_model.safetensors")
    manifest_size = (artifact.dir / mf.MANIFEST_NAME).stat().st_size
    assert (result.files_sent, result.files_skipped) == (1, len(artifact.manifest.files) - 1)
    assert result.bytes_sent == vae.size + manifest_size
    assert s3.traffic.bytes_in(s3.bucket) < vae.size + manifest_size + 4096
    assert store.has_artifact("demo", artifact.id)


def test_object_with_other_content_of_same_size_is_replaced(s3: S3Env, artifact) -> None:
    store = open_store_uri(s3.uri("models"), settings=SMALL_PARTS)
    entry = artifact.manifest.file("text_encoder/model.safetensors")
    key = f"models/demo/{artifact.id}/{entry.path}"
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"\0" * entry.size, Metadata={"sha256": "0" * 64})

    result = store.upload(artifact, progress=False)

    assert result.files_sent == len(artifact.manifest.files)
    assert s3.client.head_object(Bucket=s3.bucket, Key=key)["Metadata"]["sha256"] == entry.sha256


UPLOADER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from packager.store.stores import open_store_uri
    from packager.store.transfer import TransferSettings
    from tests.rig.s3 import load_artifact

    settings = TransferSettings(multipart_threshold=5 << 20, chunk_size=5 << 20, concurrency=2)
    store = open_store_uri(sys.argv[1], settings=settings)
    store.upload(load_artifact(Path(sys.argv[2])), progress=False)
    """
)


def a_part_after_a_file_is_in(s3: S3Env, request: Request) -> bool:
    """The request uploads a part, and some file is already complete: holding that part leaves
    its multipart upload part-way for good, whatever else was in flight."""
    if request.op != "UploadPart":
        return False
    done = ("PutObject", "CompleteMultipartUpload")
    return any(r.op in done and r.status == 200 for r in s3.traffic.select(s3.bucket))


def test_killed_upload_is_finished_by_the_rerun(s3: S3Env, tmp_path: Path) -> None:
    # unet (8 parts) then text_encoder (2 parts) go multipart, the rest in one PUT each.
    folder, artifact_id = synthetic_artifact(tmp_path / "artifact", 48 * MiB, name="demo", seed=3)
    artifact = load_artifact(folder)
    prefix = f"models/demo/{artifact_id}/"
    # Every upload request waits a little; from the first part uploaded after a file is in, the rig
    # holds every request, so the kill lands exactly there.
    s3.traffic.delay_s = 0.15
    s3.traffic.throttle = lambda r: r.method in ("PUT", "POST")
    s3.traffic.hold_from = lambda r: a_part_after_a_file_is_in(s3, r)
    proc = subprocess.Popen(
        [sys.executable, "-c", UPLOADER, s3.uri("models"), str(folder)],
        cwd=ROOT,
        env=s3.subprocess_env(PYTHONPATH=str(ROOT)),
    )
    try:
        deadline = time.monotonic() + 60
        while not s3.traffic.holding:
            seen = [(r.op, r.path.rsplit("/", 1)[-1]) for r in s3.traffic.select(s3.bucket)]
            assert proc.poll() is None, f"the uploader finished before it could be killed: {seen}"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    # Requests the killed client had sent are refused (held ones) or finish (ones begun before the
    # hold); count files after that.
    s3.traffic.release()
    s3.traffic.in_flight.settle(30.0)
    s3.traffic.reset()
    store = open_store_uri(s3.uri("models"), settings=SMALL_PARTS)
    assert not store.has_artifact("demo", artifact_id), "no manifest: the killed upload is invisible"
    complete = {
        k[len(prefix) :]
        for k in s3.keys(prefix)
        if s3.client.head_object(Bucket=s3.bucket, Key=k)["Metadata"].get("sha256")
        == artifact.manifest.file(k[len(prefix) :]).sha256
    }
    assert complete, "some files made it before the kill"
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket, Prefix=prefix).get("Uploads"), (
        "a part-way upload"
    )
    s3.traffic.reset()

    result = store.upload(artifact, progress=False)

    unfinished = [f for f in artifact.manifest.files if f.path not in complete]
    assert result.files_sent == len(unfinished)
    manifest_size = (folder / mf.MANIFEST_NAME).stat().st_size
    assert s3.traffic.bytes_in(s3.bucket) <= sum(f.size for f in unfinished) + manifest_size + 8192
    assert not s3.client.list_multipart_uploads(Bucket=s3.bucket, Prefix=prefix).get("Uploads"), (
        "stale aborted"
    )
    pulled = store.download("demo", artifact_id, tmp_path / "pulled", progress=False)
    assert pulled.files_sent == len(artifact.manifest.files)
    assert same_tree(folder, tmp_path / "pulled")


def test_corrupt_object_is_caught_on_pull_and_nothing_looks_complete(
    s3: S3Env, artifact, tmp_path: Path
) -> None:
    store = open_store_uri(s3.uri("models"), settings=SMALL_PARTS)
    store.upload(artifact, progress=False)
    entry = artifact.manifest.file("text_encoder/model.safetensors")
    key = f"models/demo/{artifact.id}/{entry.path}"
    # Same size, the right metadata, wrong bytes: only hashing on the way back can tell.
    s3.client.put_object(
        Bucket=s3.bucket, Key=key, Body=b"\1" * entry.size, Metadata={"sha256": entry.sha256}
    )
    dest = tmp_path / "pulled"

    with pytest.raises(VerifyError, match=r"text_encoder/model.safetensors: sha256 .* does not match"):
        store.download("demo", artifact.id, dest, progress=False)

    assert not dest.exists()
    staged = tmp_path / ".pulled.partial"
    assert not (staged / mf.MANIFEST_NAME).exists()
    assert not (staged / entry.path).exists()


def test_manifest_that_is_not_its_id_is_rejected(s3: S3Env, artifact, tmp_path: Path) -> None:
    store = open_store_uri(s3.uri("models"), settings=SMALL_PARTS)
    store.upload(artifact, progress=False)
    key = f"models/demo/{artifact.id}/{mf.MANIFEST_NAME}"
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b'{"schema": 1}\n')

    with pytest.raises(VerifyError, match="is not the artifact id"):
        store.download("demo", artifact.id, tmp_path / "pulled", progress=False)
    assert not (tmp_path / "pulled").exists()


def test_pull_resumes_from_verified_files(s3: S3Env, artifact, tmp_path: Path) -> None:
    store = open_store_uri(s3.uri("models"), settings=SMALL_PARTS)
    store.upload(artifact, progress=False)
    staged = tmp_path / ".pulled.partial"
    big = artifact.manifest.file("unet/diffusion_pytorch_model.safetensors")
    (staged / "unet").mkdir(parents=True)
    shutil.copyfile(artifact.dir / big.path, staged / big.path)  # left by an interrupted pull
    (staged / "vae").mkdir()
    (staged / "vae/diffusion_pytorch_model.safetensors.1a2b3c4d").write_bytes(b"temp file of a dead pull")
    s3.traffic.reset()

    result = store.download("demo", artifact.id, tmp_path / "pulled", progress=False)

    assert (result.files_sent, result.files_skipped) == (len(artifact.manifest.files) - 1, 1)
    assert not any(r.path.endswith(big.path) for r in s3.traffic.select(s3.bucket, "GetObject"))
    assert same_tree(artifact.dir, tmp_path / "pulled")


def test_pull_into_a_complete_copy_moves_nothing(s3: S3Env, artifact, tmp_path: Path) -> None:
    store = open_store_uri(s3.uri("models"), settings=SMALL_PARTS)
    store.upload(artifact, progress=False)
    store.download("demo", artifact.id, tmp_path / "pulled", progress=False)
    s3.traffic.reset()

    again = store.download("demo", artifact.id, tmp_path / "pulled", progress=False)

    assert again.skipped_whole
    assert s3.traffic.count() == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("not an artifact")
    with pytest.raises(StoreError, match="exists and is not artifact"):
        store.download("demo", artifact.id, tmp_path / "other", progress=False)


def test_absent_artifact_is_a_clear_error(s3: S3Env, tmp_path: Path) -> None:
    store = open_store_uri(s3.uri("models"))
    with pytest.raises(StoreError, match=r"no manifest\.json: the artifact is not in the store"):
        store.download("demo", "a" * 64, tmp_path / "pulled", progress=False)
    assert not store.has_artifact("demo", "a" * 64)


def test_delete_uncommits_then_removes(s3: S3Env, artifact) -> None:
    store = open_store_uri(s3.uri("models"), settings=SMALL_PARTS)
    store.upload(artifact, progress=False)
    store.delete_artifact("demo", artifact.id)
    assert s3.keys("models/") == []
    assert store.list_artifacts() == []


def test_missing_bucket_is_one_line(s3: S3Env, artifact) -> None:
    store = open_store_uri("s3://no-such-bucket-here/models")
    with pytest.raises(StoreError) as err:
        store.upload(artifact, progress=False)
    message = str(err.value)
    assert "bucket 'no-such-bucket-here' does not exist" in message
    assert "\n" not in message


def test_unreachable_endpoint_is_one_line(s3: S3Env, artifact) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    store = S3Store(s3.bucket, "models", endpoint_url=url)
    with pytest.raises(StoreError, match=f"cannot reach the S3 endpoint {url}"):
        store.upload(artifact, progress=False)


def test_refused_credentials_are_one_line(s3: S3Env, artifact) -> None:
    from moto.core.authorization import enable_iam_authentication

    store = open_store_uri(s3.uri("models"))
    with enable_iam_authentication(), pytest.raises(StoreError) as err:
        store.upload(artifact, progress=False)
    # The first request is a HEAD, whose 403 carries no error code.
    assert "refused the credentials (HTTP 403)" in str(err.value)
    assert "AWS_ACCESS_KEY_ID" in str(err.value)


def test_split_artifact_uri() -> None:
    artifact_id = "b" * 64
    assert split_artifact_uri(f"s3://bkt/models/tiny/{artifact_id}/") == (
        "s3://bkt/models",
        "tiny",
        artifact_id,
    )
    assert split_artifact_uri(f"/srv/store/tiny/{artifact_id}") == ("/srv/store", "tiny", artifact_id)
    with pytest.raises(StoreError, match="ending in <name>/<artifact-id>"):
        split_artifact_uri("s3://bkt/models/tiny")


# -- local directory -------------------------------------------------------------------------------


def test_local_store_round_trip(artifact, tmp_path: Path) -> None:
    store = open_store_uri(str(tmp_path / "store"))
    assert isinstance(store, LocalStore)

    first = store.upload(artifact, progress=False)
    again = store.upload(artifact, progress=False)

    final = tmp_path / "store" / "demo" / artifact.id
    assert first.uri == str(final)
    assert first.files_sent == len(artifact.manifest.files)
    assert again.skipped_whole
    assert again.bytes_sent == 0
    assert same_tree(artifact.dir, final)
    assert not [p for p in final.rglob(".*") if p.is_file()], "no temp files left"
    pulled = store.download("demo", artifact.id, tmp_path / "pulled", progress=False)
    assert pulled.files_sent == len(artifact.manifest.files)
    assert same_tree(artifact.dir, tmp_path / "pulled")
    assert store.list_artifacts() == [("demo", artifact.id)]
    assert store.read_manifest("demo", artifact.id) == artifact.manifest


def test_local_store_without_manifest_is_absent_and_upload_finishes_it(artifact, tmp_path: Path) -> None:
    store = open_store_uri(str(tmp_path / "store"))
    store.upload(artifact, progress=False)
    final = tmp_path / "store" / "demo" / artifact.id
    (final / mf.MANIFEST_NAME).unlink()
    (final / "vae/diffusion_pytorch_model.safetensors").unlink()
    (final / "vae/.diffusion_pytorch_model.safetensors.tmp4242").write_bytes(b"half a copy from a killed run")

    assert not store.has_artifact("demo", artifact.id)
    assert store.list_artifacts() == []
    result = store.upload(artifact, progress=False)

    assert (result.files_sent, result.files_skipped) == (1, len(artifact.manifest.files) - 1)
    assert same_tree(artifact.dir, final), "complete, and the killed run's temp file is gone"


def test_local_store_corrupt_file_is_caught(artifact, tmp_path: Path) -> None:
    store = open_store_uri(str(tmp_path / "store"))
    store.upload(artifact, progress=False)
    target = tmp_path / "store" / "demo" / artifact.id / "vae/diffusion_pytorch_model.safetensors"
    target.write_bytes(b"\0" * target.stat().st_size)

    with pytest.raises(VerifyError, match=r"vae/diffusion_pytorch_model\.safetensors: sha256"):
        store.download("demo", artifact.id, tmp_path / "pulled", progress=False)
    assert not (tmp_path / "pulled").exists()


def test_incomplete_local_artifact_is_not_uploaded(artifact, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(artifact.dir, broken)
    (broken / "vae/diffusion_pytorch_model.safetensors").write_bytes(b"short")
    store = open_store_uri(str(tmp_path / "store"))

    with pytest.raises(VerifyError, match="not a complete artifact"):
        store.upload(load_artifact(broken), progress=False)
    assert not store.has_artifact("demo", artifact.id)


# -- the CLI ---------------------------------------------------------------------------------------


def test_cli_pull_by_uri(s3: S3Env, artifact, tmp_path: Path) -> None:
    open_store_uri(s3.uri("models"), settings=SMALL_PARTS).upload(artifact, progress=False)
    uri = f"s3://{s3.bucket}/models/demo/{artifact.id}"

    done = run_packager("pull", uri, str(tmp_path / "pulled"), "--json", env=s3.subprocess_env())

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["files_sent"] == len(artifact.manifest.files)
    assert not summary["skipped_whole"]
    assert same_tree(artifact.dir, tmp_path / "pulled")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bucket", "bucket 'no-such-bucket-here' does not exist"),
        ("credentials", "refused the credentials"),
        ("endpoint", "cannot reach the S3 endpoint"),
    ],
)
def test_cli_store_errors_are_one_line_exit_2(s3: S3Env, tmp_path: Path, case: str, expected: str) -> None:
    uri = f"s3://{s3.bucket}/models/demo/{'c' * 64}"
    env = s3.subprocess_env()
    if case == "bucket":
        uri = f"s3://no-such-bucket-here/models/demo/{'c' * 64}"
    elif case == "endpoint":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{closed_port()}"

    if case == "credentials":
        from moto.core.authorization import enable_iam_authentication

        with enable_iam_authentication():
            done = run_packager("pull", uri, str(tmp_path / "pulled"), env=env)
    else:
        done = run_packager("pull", uri, str(tmp_path / "pulled"), env=env)

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("packager: error: "), done.stderr
    assert expected in lines[0], done.stderr
    assert not (tmp_path / "pulled").exists()
    assert env["AWS_SECRET_ACCESS_KEY"] not in done.stderr


def test_cli_upload_rerun_and_pull_by_recipe(
    s3: S3Env, tiny_build: tuple[Path, Path], tmp_path: Path
) -> None:
    from tests.rig.artifacts import tiny_recipe

    source, build = tiny_build
    # Beside the shared build dir, so its lock (and the artifact id it records) is shared too.
    recipe = tiny_recipe(build.parent / "recipes", source, extra=f"store:\n  uri: s3://{s3.bucket}/models\n")
    env = s3.subprocess_env(PACKAGER_BUILD_DIR=str(build))

    first = run_packager("upload", str(recipe), "--json", env=env)

    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    artifact_id = data["artifact_id"]
    assert data["uri"] == f"s3://{s3.bucket}/models/tiny/{artifact_id}"
    assert data["files_sent"] > 0
    # The re-run must not need the local artifact at all: hide it.
    local = build / "artifacts"
    hidden = build / "artifacts-hidden"
    local.rename(hidden)
    s3.traffic.reset()
    try:
        again = run_packager("upload", str(recipe), env=env)
    finally:
        hidden.rename(local)
    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stdout
    assert "converting" not in again.stderr
    assert [r.op for r in s3.traffic.select(s3.bucket)] == ["HeadObject"]

    pulled = run_packager("pull", str(recipe), str(tmp_path / "pulled"), env=env)

    assert pulled.returncode == 0, pulled.stderr
    assert "fetched" in pulled.stdout
    assert mf.artifact_id_of(tmp_path / "pulled") == artifact_id
    mf.check(tmp_path / "pulled", full_hash=True)


def test_cli_upload_to_a_missing_bucket_fails_before_converting(
    s3: S3Env, tiny_build: tuple[Path, Path], tmp_path: Path
) -> None:
    from tests.rig.artifacts import tiny_recipe

    source, _ = tiny_build
    recipe = tiny_recipe(tmp_path, source, extra="store:\n  uri: s3://no-such-bucket-here/models\n")
    env = s3.subprocess_env(PACKAGER_BUILD_DIR=str(tmp_path / "build"))

    done = run_packager("upload", str(recipe), env=env)

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("packager: error: bucket 'no-such-bucket-here' does not exist"), done.stderr
    assert "converting" not in done.stderr
    assert not (tmp_path / "build" / "artifacts").exists()
