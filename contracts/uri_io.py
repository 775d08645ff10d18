"""Reading and writing job files by URI: a local path, file://, or s3://bucket/key.

S3 goes through pyarrow's S3 filesystem (the same one Ray Data uses). The endpoint comes from
``LLMFORGE_S3_ENDPOINT_URL`` (an S3-compatible server such as MinIO); credentials come from the
environment of the cluster (AWS_* variables, instance or workload identity), never from a spec.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from pyarrow import fs

ENDPOINT_ENV = "LLMFORGE_S3_ENDPOINT_URL"


def s3_filesystem() -> fs.S3FileSystem:
    endpoint = os.environ.get(ENDPOINT_ENV)
    if not endpoint:
        return fs.S3FileSystem()
    parsed = urlparse(endpoint)
    return fs.S3FileSystem(
        endpoint_override=parsed.netloc or parsed.path,
        scheme=parsed.scheme or "https",
        region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )


def filesystem(uri: str) -> tuple[fs.FileSystem, str]:
    """The filesystem for ``uri`` and the path within it."""
    if uri.startswith("s3://"):
        return s3_filesystem(), uri.removeprefix("s3://")
    return fs.LocalFileSystem(), uri.removeprefix("file://")


def read_text(uri: str) -> str:
    filesystem_, path = filesystem(uri)
    try:
        with filesystem_.open_input_stream(path) as f:
            return bytes(f.read()).decode("utf-8")
    except (FileNotFoundError, OSError) as e:
        raise FileNotFoundError(f"cannot read {uri}: {e}") from e


def write_text(uri: str, text: str) -> None:
    filesystem_, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        filesystem_.create_dir(parent, recursive=True)
    with filesystem_.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))


def list_files(uri: str, limit: int = 1000) -> list[dict[str, object]]:
    """Files under ``uri`` (recursively) with their sizes, at most ``limit``."""
    filesystem_, path = filesystem(uri)
    selector = fs.FileSelector(path.rstrip("/"), recursive=True, allow_not_found=True)
    infos = [i for i in filesystem_.get_file_info(selector) if i.type == fs.FileType.File]
    prefix = "s3://" if uri.startswith("s3://") else ""
    return [
        {"uri": f"{prefix}{i.path}", "size": i.size}
        for i in sorted(infos, key=lambda i: i.path)[:limit]
    ]
