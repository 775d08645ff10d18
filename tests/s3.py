"""A real S3 endpoint for tests: moto's server over HTTP on loopback, with the environment a
cluster's operator would give the jobs (never a spec's business)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.ray_head import free_port


@dataclass(frozen=True)
class S3:
    endpoint: str
    client: Any  # a boto3 S3 client
    env: dict[str, str]

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def upload_folder(self, folder: Path, bucket: str, prefix: str) -> str:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            self.client.upload_file(str(path), bucket, key)
        return f"s3://{bucket}/{prefix}"


@contextmanager
def moto_process(log: Path | None = None) -> Iterator[str]:
    """moto's S3 server in a process of its own (``python -m moto.server``), its endpoint URL.
    Not a thread of the test process: there it would share one GIL with the control plane and
    the test, and every request of a multi-node job would wait for both."""
    pytest.importorskip("moto.server")
    port = free_port()
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto's server exited with {process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto's server did not listen within 30 s") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log is not None:
            out.close()  # type: ignore[union-attr]


@contextmanager
def s3_server(*buckets: str) -> Iterator[S3]:
    boto3 = pytest.importorskip("boto3")
    with moto_process() as endpoint:
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield S3(endpoint, client, env)
