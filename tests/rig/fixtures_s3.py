"""pytest fixtures: s3 (see tests/conftest.py).

`s3_server` is one counting moto server for the session; `s3` gives each test a fresh bucket, the
environment a user would have set (endpoint, fake keys, region; no ~/.aws), a boto3 client for
setting the scene, and the server's traffic reset to zero.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.rig.s3 import CountingMotoServer, Traffic

_bucket_numbers = itertools.count()


@dataclass
class S3Env:
    endpoint_url: str
    bucket: str
    env: dict[str, str]
    client: Any
    traffic: Traffic
    buckets: list[str]

    def uri(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def new_bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def keys(self, prefix: str = "", bucket: str | None = None) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket or self.bucket, Prefix=prefix
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def subprocess_env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **self.env, **extra}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[CountingMotoServer]:
    server = CountingMotoServer()
    server.start()
    yield server
    server.stop()


def s3_environment(endpoint_url: str, home: str) -> dict[str, str]:
    """What a user would export to reach the store; AWS config files point nowhere real."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.path.join(home, "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": os.path.join(home, "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture
def s3(
    s3_server: CountingMotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Env]:
    import boto3

    env = s3_environment(s3_server.endpoint_url, str(tmp_path_factory.mktemp("aws-home")))
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bucket = f"test-bucket-{os.getpid()}-{next(_bucket_numbers)}"
    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    s3_server.traffic.reset()
    rig = S3Env(s3_server.endpoint_url, bucket, env, client, s3_server.traffic, [bucket])
    yield rig
    s3_server.traffic.reset()
    for name in rig.buckets:
        _empty(client, name)


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny fixture model and a build dir (PACKAGER_BUILD_DIR) shared by the session's CLI tests of
    upload, pull and seed, so the model is built and converted once."""
    from tests.rig.artifacts import tiny_source

    root = tmp_path_factory.mktemp("tiny-store")
    return tiny_source(root / "source"), root / "build"


def _empty(client: Any, bucket: str) -> None:
    """Free the bucket's objects: moto keeps them in memory for the whole session."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    for up in uploads:
        client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    client.delete_bucket(Bucket=bucket)
