"""volume_sync: artifacts from the store onto a network volume (a temp dir stands in for it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from artifact_format import manifest as mf
from packager.store.stores import open_store_uri
from tests.rig.fixtures_s3 import S3Env
from tests.rig.s3 import demo_artifact, load_artifact, small_parts, synthetic_artifact
from volume_sync.pull import PullError, PullVerifyError, lock_path, pull

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]
SMALL_PARTS = small_parts()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory):
    return demo_artifact(tmp_path_factory, 2 * MiB)


@pytest.fixture
def in_store(s3: S3Env, artifact) -> str:
    """The artifact uploaded to the test bucket; returns its prefix URI."""
    return open_store_uri(s3.uri("models"), settings=SMALL_PARTS).upload(artifact, progress=False).uri


@pytest.fixture
def mount(tmp_path: Path) -> Path:
    path = tmp_path / "runpod-volume"
    path.mkdir()
    return path


def volume_sync(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "volume_sync", *args],
        cwd=ROOT,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_pull(uri: str, mount: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "volume_sync", "pull", uri, "--mount", str(mount), "--quiet", *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def same_files(artifact, folder: Path) -> bool:
    return all(
        (folder / f.path).read_bytes() == (artifact.dir / f.path).read_bytes()
        for f in artifact.manifest.files
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_pull_puts_a_verified_artifact_on_the_volume(s3: S3Env, artifact, in_store: str, mount: Path) -> None:
    final = pull(in_store, mount)

    assert final == mf.volume_path(mount, "demo", artifact.id)
    assert (final / mf.READY_MARKER).read_text().strip() == artifact.id
    assert same_files(artifact, final)
    assert mf.artifact_id_of(final) == artifact.id
    ready_at = (final / mf.READY_MARKER).stat().st_mtime_ns
    assert all((final / f.path).stat().st_mtime_ns <= ready_at for f in artifact.manifest.files)
    leftovers = sorted(p.name for p in final.parent.iterdir() if p.name != artifact.id)
    assert leftovers == [], "no lock or staging directory left behind"
    s3.traffic.reset()

    assert pull(in_store, mount) == final
    assert s3.traffic.count() == 0, "a ready artifact costs no request"


def test_pull_from_a_local_directory_store(artifact, tmp_path: Path, mount: Path) -> None:
    store = open_store_uri(str(tmp_path / "store"))
    uri = store.upload(artifact, progress=False).uri

    done = volume_sync("pull", uri, "--mount", str(mount))

    assert done.returncode == 0, done.stderr
    final = Path(done.stdout.strip())
    assert final == mf.volume_path(mount, "demo", artifact.id)
    assert (final / mf.READY_MARKER).exists()
    assert same_files(artifact, final)


@pytest.mark.parametrize("schema", [1, 2])
def test_pull_reads_both_manifest_schemas(tmp_path: Path, mount: Path, schema: int) -> None:
    components = (
        {"unet": mf.ComponentPrecision("float8_e4m3fn", "float16", ("norm",))} if schema == 2 else None
    )
    folder, artifact_id = synthetic_artifact(tmp_path / "art", 64 * 1024, name="demo", components=components)
    artifact = load_artifact(folder)
    assert artifact.manifest.schema == schema
    uri = open_store_uri(str(tmp_path / "store")).upload(artifact, progress=False).uri

    final = pull(uri, mount)

    assert mf.artifact_id_of(final) == artifact_id
    assert same_files(artifact, final)
    assert mf.load(final).components == (components or {})


def test_four_workers_at_once_download_once(s3: S3Env, artifact, in_store: str, mount: Path) -> None:
    s3.traffic.reset()
    # Slow GETs keep the first pull busy while the other three arrive.
    s3.traffic.delay_s = 0.05
    s3.traffic.throttle = lambda r: r.op == "GetObject"
    env = s3.subprocess_env()

    procs = [start_pull(in_store, mount, env) for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]

    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err for _, err in outputs]
    final = mf.volume_path(mount, "demo", artifact.id)
    assert {out.strip() for out, _ in outputs} == {str(final)}
    gets = Counter(r.path for r in s3.traffic.select(s3.bucket, "GetObject"))
    assert len(gets) == len(artifact.manifest.files) + 1, "every file and the manifest"
    assert set(gets.values()) == {1}, f"each object fetched once: {gets}"
    done = volume_sync("verify", "--mount", str(mount))
    assert done.returncode == 0
    assert f"ok          demo/{artifact.id}" in done.stdout


def test_a_reader_never_sees_a_half_artifact(s3: S3Env, artifact, in_store: str, mount: Path) -> None:
    s3.traffic.delay_s = 0.1
    s3.traffic.throttle = lambda r: r.op == "GetObject"
    final = mf.volume_path(mount, "demo", artifact.id)
    proc = start_pull(in_store, mount, s3.subprocess_env())
    staged_seen = False
    try:
        while proc.poll() is None:
            staged_seen |= (final.parent / f".{artifact.id}.partial").exists()
            if final.exists():
                # Once the directory has its final name, every file in it is whole.
                mf.check(final, artifact.manifest)
            if (final / mf.READY_MARKER).exists():
                mf.check(final, full_hash=True)
            time.sleep(0.01)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert staged_seen, "the pull staged its files out of sight"
    assert (final / mf.READY_MARKER).exists()


def test_a_killed_pull_resumes_and_fetches_only_the_rest(
    s3: S3Env, artifact, in_store: str, mount: Path
) -> None:
    big = artifact.manifest.file("unet/diffusion_pytorch_model.safetensors")
    # The biggest file hangs; everything else arrives. Then the worker dies.
    s3.traffic.delay_s = 3.0
    s3.traffic.throttle = lambda r: r.op == "GetObject" and r.path.endswith(big.path)
    proc = start_pull(in_store, mount, s3.subprocess_env())
    try:
        deadline = time.monotonic() + 60
        staging = mf.volume_path(mount, "demo", artifact.id).parent / f".{artifact.id}.partial"
        rest = [f for f in artifact.manifest.files if f != big]
        while not all((staging / f.path).is_file() for f in rest):  # all but the big one are in
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    final = mf.volume_path(mount, "demo", artifact.id)
    lock = lock_path(mount, "demo", artifact.id)
    assert lock.exists(), "the dead pull left its lock"
    assert not final.exists(), "and only staged files"
    s3.traffic.reset()

    # The lock's holder is a dead process on this host: taken over at once, no stale timeout to wait.
    assert pull(in_store, mount, timeout_s=30) == final

    fetched = [r.path for r in s3.traffic.select(s3.bucket, "GetObject")]
    assert sorted(p.rsplit("/", 1)[-1] for p in fetched) == sorted([mf.MANIFEST_NAME, Path(big.path).name])
    assert (final / mf.READY_MARKER).exists()
    assert same_files(artifact, final)
    assert not lock.exists()


def test_artifact_renamed_but_not_marked_ready_is_finished(
    s3: S3Env, artifact, in_store: str, mount: Path
) -> None:
    final = pull(in_store, mount)
    (final / mf.READY_MARKER).unlink()  # as if the pull died between the rename and the marker
    s3.traffic.reset()

    assert pull(in_store, mount) == final

    assert [r.path.rsplit("/", 1)[-1] for r in s3.traffic.select(s3.bucket)] == [mf.MANIFEST_NAME]
    assert (final / mf.READY_MARKER).exists()
    assert same_files(artifact, final)


def test_waiting_for_a_live_pull_times_out(in_store: str, artifact, mount: Path) -> None:
    lock = lock_path(mount, "demo", artifact.id)
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}))

    with pytest.raises(
        PullError, match=r"timed out after 0.5s waiting for .* pid \d+ to finish pulling demo/"
    ):
        pull(in_store, mount, timeout_s=0.5)
    assert not mf.volume_path(mount, "demo", artifact.id).exists()


def test_a_stale_lock_is_taken_over(in_store: str, artifact, mount: Path) -> None:
    lock = lock_path(mount, "demo", artifact.id)
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": "some-other-worker", "pid": 1, "time": 0}))
    old = time.time() - 600
    os.utime(lock, (old, old))

    final = pull(in_store, mount, timeout_s=10, lock_stale_s=60)

    assert (final / mf.READY_MARKER).exists()
    assert not lock.exists()


def test_a_corrupt_object_fails_the_pull_with_exit_1(s3: S3Env, artifact, in_store: str, mount: Path) -> None:
    entry = artifact.manifest.file("vae/diffusion_pytorch_model.safetensors")
    key = f"models/demo/{artifact.id}/{entry.path}"
    s3.client.put_object(
        Bucket=s3.bucket, Key=key, Body=b"\7" * entry.size, Metadata={"sha256": entry.sha256}
    )

    done = volume_sync("pull", in_store, "--mount", str(mount), "--quiet", env=s3.subprocess_env())

    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "vae/diffusion_pytorch_model.safetensors: sha256" in lines[0], done.stderr
    final = mf.volume_path(mount, "demo", artifact.id)
    assert not final.exists()
    assert not lock_path(mount, "demo", artifact.id).exists()
    with pytest.raises(PullVerifyError):
        pull(in_store, mount)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("absent", "no manifest.json: the artifact is not in the store"),
        ("bucket", "bucket 'no-such-bucket-here' does not exist"),
        ("credentials", "refused the credentials (InvalidAccessKeyId)"),
        ("endpoint", "cannot reach the S3 endpoint"),
        ("uri", "expected the artifact's prefix in the store"),
    ],
)
def test_pull_failures_are_one_line_exit_2(s3: S3Env, mount: Path, case: str, expected: str) -> None:
    env = s3.subprocess_env()
    uri = f"s3://{s3.bucket}/models/demo/{'d' * 64}"
    if case == "bucket":
        uri = f"s3://no-such-bucket-here/models/demo/{'d' * 64}"
    elif case == "endpoint":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{closed_port()}"
    elif case == "uri":
        uri = f"s3://{s3.bucket}/models/demo"

    if case == "credentials":
        from moto.core.authorization import enable_iam_authentication

        with enable_iam_authentication():
            done = volume_sync("pull", uri, "--mount", str(mount), env=env)
    else:
        done = volume_sync("pull", uri, "--mount", str(mount), env=env)

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("volume_sync: error: "), done.stderr
    assert expected in lines[0], done.stderr
    assert not (mount / "models" / "demo" / ("d" * 64)).exists()


def test_unmounted_volume_is_exit_2(in_store: str, tmp_path: Path) -> None:
    done = volume_sync("pull", in_store, "--mount", str(tmp_path / "nothing-here"))
    assert done.returncode == 2
    assert "is the network volume mounted?" in done.stderr


# -- verify and prune ------------------------------------------------------------------------------


def seed_local(mount: Path, store: Path, name: str, seed: int, ready_at: float | None = None) -> str:
    """Put a small artifact on the volume through a local store; returns its id."""
    folder, artifact_id = synthetic_artifact(
        store.parent / f"src-{name}-{seed}", 64 * 1024, name=name, seed=seed
    )
    uri = open_store_uri(str(store)).upload(load_artifact(folder), progress=False).uri
    final = pull(uri, mount)
    if ready_at is not None:
        os.utime(final / mf.READY_MARKER, (ready_at, ready_at))
    return artifact_id


def test_verify_reports_each_artifact(tmp_path: Path, mount: Path) -> None:
    store = tmp_path / "store"
    good = seed_local(mount, store, "demo", 1)
    bad = seed_local(mount, store, "other", 2)
    half = mf.volume_path(mount, "demo", "e" * 64)
    half.mkdir()
    victim = mf.volume_path(mount, "other", bad) / "unet/diffusion_pytorch_model.safetensors"
    victim.write_bytes(b"\0" * victim.stat().st_size)

    done = volume_sync("verify", "--mount", str(mount))

    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert f"ok          demo/{good}  10 files" in lines
    assert f"incomplete  demo/{'e' * 64}  no .ready" in lines
    assert any(line.startswith(f"failed      other/{bad}") and "sha256" in line for line in lines)
    assert "1 ok, 1 failed, 1 incomplete" in done.stderr
    shutil.rmtree(mf.volume_path(mount, "other", bad))
    assert volume_sync("verify", "--mount", str(mount)).returncode == 0


def test_prune_keeps_the_newest_and_never_a_protected_or_locked_one(tmp_path: Path, mount: Path) -> None:
    store = tmp_path / "store"
    now = time.time()
    oldest, old, newer, newest = (seed_local(mount, store, "demo", s, now - 400 + 100 * s) for s in range(4))
    other = seed_local(mount, store, "other", 9, now - 1000)
    unready = mf.volume_path(mount, "demo", "f" * 64)
    unready.mkdir()
    lock = lock_path(mount, "demo", newer)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": now}))

    dry = volume_sync(
        "prune", "--keep", "1", "--name", "demo", "--mount", str(mount), "--protect", oldest[:12], "--dry-run"
    )
    assert dry.returncode == 0
    assert f"would remove  demo/{old}" in dry.stdout
    assert mf.volume_path(mount, "demo", old).exists()

    done = volume_sync(
        "prune", "--keep", "1", "--name", "demo", "--mount", str(mount), "--protect", oldest[:12]
    )

    assert done.returncode == 0, done.stderr
    assert f"keep          demo/{newest}" in done.stdout
    assert f"locked        demo/{newer}" in done.stdout
    assert f"protected     demo/{oldest}" in done.stdout
    assert f"remove        demo/{old}" in done.stdout
    left = sorted(p.name for p in (mount / "models" / "demo").iterdir() if not p.name.startswith("."))
    assert left == sorted([oldest, newer, newest, "f" * 64])
    assert mf.volume_path(mount, "other", other).exists(), "--name limits pruning to one model"
    lock.unlink()
    again = volume_sync("prune", "--keep", "1", "--mount", str(mount))
    assert again.returncode == 0
    assert sorted(p.name for p in (mount / "models" / "demo").iterdir()) == sorted([newest, "f" * 64])


def test_prune_removes_what_failed_pulls_left_unless_a_pull_holds_it(tmp_path: Path, mount: Path) -> None:
    store = tmp_path / "store"
    kept = seed_local(mount, store, "demo", 1)
    model = mount / "models" / "demo"
    failed, running, pruned = "a" * 64, "b" * 64, "c" * 64
    for leftover in (f".{failed}.partial/unet", f".{running}.partial/vae", f".{pruned}.deleting4242/vae"):
        (model / leftover).mkdir(parents=True)
        (model / leftover / "w.safetensors").write_bytes(b"\0" * 1024)
    live = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    lock_path(mount, "demo", running).write_text(json.dumps(live))

    dry = volume_sync("prune", "--keep", "1", "--mount", str(mount), "--dry-run")
    assert f"would remove  demo/.{failed}.partial" in dry.stdout
    assert (model / f".{failed}.partial").exists()
    done = volume_sync("prune", "--keep", "1", "--mount", str(mount))

    assert done.returncode == 0, done.stderr
    assert f"remove        demo/.{failed}.partial (left by a failed pull or prune)" in done.stdout
    assert f"remove        demo/.{pruned}.deleting4242 (left by a failed pull or prune)" in done.stdout
    assert "removed 2" in done.stderr
    left = sorted(p.name for p in model.iterdir())
    assert left == sorted([kept, f".{running}.lock", f".{running}.partial"]), (
        "a pull in progress keeps its staging"
    )


def test_prune_usage_errors_exit_2(mount: Path) -> None:
    assert volume_sync("prune", "--mount", str(mount)).returncode == 2
    bad = volume_sync("prune", "--keep", "1", "--protect", "abc", "--mount", str(mount))
    assert bad.returncode == 2
    assert "at least 12 hex digits" in bad.stderr


IMPORT_PROBE = """
import sys
import volume_sync.__main__, volume_sync.pull, volume_sync.verify, volume_sync.prune
volume_sync.s3.make_client(endpoint_url="http://127.0.0.1:9", region="us-east-1")
boto3_and_its_deps = {"boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six", "certifi",
                      "brotli", "_brotli", "backports"}
ours = {"volume_sync", "artifact_format", "__main__", "__mp_main__", "_distutils_hack", "sitecustomize"}
loaded = {m.split(".")[0] for m in sys.modules if not m.startswith("__editable__")}
print(sorted(loaded - set(sys.stdlib_module_names) - boto3_and_its_deps - ours))
print(sorted(m for m in sys.modules if m.startswith("worker_runtime")))
"""


def test_volume_sync_imports_nothing_but_boto3_and_the_artifact_format() -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    others, runtime = done.stdout.splitlines()
    assert others == "[]"
    assert runtime == "[]"
