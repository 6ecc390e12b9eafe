"""Benchmark: uploading an artifact to S3, the packager's store vs `aws s3 cp --recursive`.

Both upload the same directory to the same local S3 server (moto, in a process of its own, so
neither client shares a process with it), each into a fresh prefix, runs interleaved and medians
reported. Each variant is a fresh process, start-up and imports included, as a user runs it:

  packager   the store code `packager upload` runs (S3Store.upload: s3transfer, 16 MiB parts,
             10 concurrent requests, CRC32 trailers, sha256 metadata from the manifest, manifest last)
  awscli     aws s3 cp --recursive DIR s3://... with the AWS CLI's defaults (8 MiB parts,
             10 concurrent requests, CRC32 checksums)
  no-op      the packager's store code again on an artifact already in the store: one HEAD

ratio = median awscli / median packager (≥ 1.0: the packager is at least as fast).

The artifact is `--artifact DIR` (e.g. the full-size fp16 artifact converted from
bench/fullsize.py's model, ~2.1 GB), or by default a synthetic one of `--size-mb` random bytes in
the SD layout (unet 80 %, text encoder 12 %, vae 8 %, small configs). moto keeps what it is sent in
memory (spilling big objects to temp files) and each run's objects are deleted before the next,
but 2 GB uploads still make it heavy; hence 512 MB by default. `--quick`: 128 MB, 2 runs.

  python -m bench.upload [--quick] [--size-mb N] [--artifact DIR] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results" / "upload.json"
BUCKET = "bench-upload"
TARGET_RATIO = 1.0
TARGET_NOOP_S = 1.0
RUN_TIMEOUT_S = 1800


def _env(endpoint: str, home: Path) -> dict[str, str]:
    from tests.rig.fixtures_s3 import s3_environment

    env = {**os.environ, **s3_environment(endpoint, str(home))}
    env.pop("AWS_PROFILE", None)
    env["PYTHONPATH"] = str(REPO)
    return env


def _start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.rig.s3"], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    endpoint = proc.stdout.readline().strip()
    if not endpoint.startswith("http://127.0.0.1:"):
        proc.kill()
        raise SystemExit(f"bench: the local S3 server did not start (said {endpoint!r})")
    return proc, endpoint


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd[:4])} … failed: {done.stderr.strip()[-500:]}")
    return elapsed


def _packager_cmd(uri: str, artifact: Path) -> list[str]:
    return [sys.executable, "-m", "bench.upload", "--one", uri, "--artifact", str(artifact)]


def _awscli_cmd(uri: str, artifact: Path, endpoint: str) -> list[str]:
    aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or "aws"
    return [aws, "s3", "cp", "--recursive", "--quiet", "--endpoint-url", endpoint, str(artifact), uri + "/"]


def _one(uri: str, artifact: Path) -> None:
    """The child process of the `packager` and `no-op` variants: the store code, as the CLI runs it."""
    from artifact_format import manifest as mf
    from packager.convert.artifact import Artifact
    from packager.store.stores import open_store_uri

    manifest = mf.load(artifact)
    loaded = Artifact(name=manifest.name, id=mf.artifact_id_of(artifact), dir=artifact, manifest=manifest)
    result = open_store_uri(uri).upload(loaded, progress=False)
    print(json.dumps(result.to_json()))


def _objects(client: Any, prefix: str) -> list[dict[str, Any]]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj for page in pages for obj in page.get("Contents", [])]


def _clear(client: Any, prefix: str) -> None:
    for obj in _objects(client, prefix):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])


def run(artifact: Path, runs: int, source: str) -> dict[str, Any]:
    import boto3

    from artifact_format import manifest as mf

    manifest = mf.load(artifact)
    artifact_id = mf.artifact_id_of(artifact)
    total = sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file())
    load_at_start = round(os.getloadavg()[0], 2)
    home = Path(tempfile.mkdtemp(prefix="bench-upload-home-"))
    server, endpoint = _start_server()
    try:
        env = _env(endpoint, home)
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        client.create_bucket(Bucket=BUCKET)
        times: dict[str, list[float]] = {"packager": [], "awscli": [], "noop": []}
        for i in range(runs):
            order = ("packager", "awscli") if i % 2 == 0 else ("awscli", "packager")
            for variant in order:
                prefix = f"run{i}-{variant}"
                uri = f"s3://{BUCKET}/{prefix}"
                if variant == "packager":
                    times["packager"].append(_timed(_packager_cmd(uri, artifact), env))
                    keys = {o["Key"] for o in _objects(client, prefix + "/")}
                    assert f"{prefix}/{manifest.name}/{artifact_id}/{mf.MANIFEST_NAME}" in keys, (
                        "upload incomplete"
                    )
                    times["noop"].append(_timed(_packager_cmd(uri, artifact), env))
                else:
                    times["awscli"].append(_timed(_awscli_cmd(uri, artifact, endpoint), env))
                    assert len(_objects(client, prefix + "/")) == len(manifest.files) + 1, (
                        "aws s3 cp incomplete"
                    )
                _clear(client, prefix + "/")
                print(f"  run {i + 1}/{runs} {variant:<8} {times[variant][-1]:7.2f} s", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "artifact": {"source": source, "bytes": total, "files": len(manifest.files) + 1},
        "server": "moto (tests/rig/s3.py) on 127.0.0.1, its own process",
        "runs": runs,
        "cpus": os.cpu_count(),
        # Shared machines: a load average above the CPU count inflates every figure, so say so.
        "loadavg_1m_at_start": load_at_start,
        "seconds": times,
        "median_s": med,
        "throughput_mb_s": {k: total / 1e6 / med[k] for k in ("packager", "awscli")},
        "ratio_awscli_over_packager": med["awscli"] / med["packager"],
        "targets": {"ratio_min": TARGET_RATIO, "noop_max_s": TARGET_NOOP_S},
        "met": {
            "ratio": med["awscli"] / med["packager"] >= TARGET_RATIO,
            "noop": med["noop"] < TARGET_NOOP_S,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, help="an artifact directory (default: a synthetic one)")
    parser.add_argument(
        "--size-mb", type=int, default=512, help="size of the synthetic artifact (default 512)"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs of each variant (default 5)")
    parser.add_argument("--quick", action="store_true", help="128 MB synthetic artifact, 2 runs")
    parser.add_argument("--one", metavar="URI", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        _one(args.one, args.artifact)
        return 0
    if args.quick:
        args.size_mb, args.runs = 128, 2
    scratch = None
    if args.artifact:
        artifact, source = args.artifact.resolve(), f"dir {args.artifact}"
    else:
        from tests.rig.s3 import synthetic_artifact

        scratch = Path(tempfile.mkdtemp(prefix="bench-upload-"))
        artifact, _ = synthetic_artifact(scratch / "artifact", args.size_mb * 1024 * 1024, name="bench")
        source = f"synthetic {args.size_mb} MB"
    try:
        print(f"bench upload: {source}, {args.runs} runs each", file=sys.stderr)
        results = run(artifact, args.runs, source)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    results["mode"] = "quick" if args.quick else "full"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    _table(results)
    return 0


def _table(r: dict[str, Any]) -> None:
    from packager.output import grid, human_bytes

    rows = [
        [
            name,
            f"{r['median_s'][key]:.2f}",
            f"{min(r['seconds'][key]):.2f}",
            f"{max(r['seconds'][key]):.2f}",
            mbps,
        ]
        for name, key, mbps in (
            ("packager upload", "packager", f"{r['throughput_mb_s']['packager']:.0f}"),
            ("aws s3 cp --recursive", "awscli", f"{r['throughput_mb_s']['awscli']:.0f}"),
            ("packager no-op re-run", "noop", "-"),
        )
    ]
    art = r["artifact"]
    print(
        f"artifact: {art['source']}, {human_bytes(art['bytes'])}, {art['files']} files; "
        f"{r['cpus']} CPUs, load average {r['loadavg_1m_at_start']} at start"
    )
    print(grid(["variant", "median s", "min s", "max s", "MB/s"], rows))
    print(
        f"ratio awscli/packager = {r['ratio_awscli_over_packager']:.2f} (target ≥ {TARGET_RATIO}); "
        f"no-op {r['median_s']['noop']:.2f} s (target < {TARGET_NOOP_S} s)"
    )
    print(f"results: {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    sys.exit(main())
