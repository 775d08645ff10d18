"""The one filesystem layer of every stage: local paths, ``file://`` and ``s3://`` URIs.

Everything a job reads or writes goes through here (pyarrow's filesystems, the same ones Ray
Data and Parquet use), so a stage runs the same on a laptop folder and on object storage.
On a cluster pods share no disk: object storage is the data plane, and node-local disk
(``scratch()``) is only ever a cache or a staging area of the node that wrote it.

Where S3 is and who we are come from the environment only, never from a spec: the AWS SDK's
standard variables, which pyarrow, boto3, the aws CLI and Ray Data all read the same way.

- ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``: an S3-compatible server (MinIO, moto);
  unset means AWS itself.
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``), or an instance or
  workload identity.
- ``AWS_REGION`` or ``AWS_DEFAULT_REGION`` (``us-east-1`` when unset).

Writes are whole-object: a local file is written under a temporary name and renamed, an S3
object appears only once its upload completes. A reader therefore never sees half a file; what
decides that a *folder* of files is finished is the job's completion marker (``result.json``),
written last.
"""

from __future__ import annotations

import atexit
import fcntl
import gc
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import urlparse

from pyarrow import fs as pafs

ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_ENVS = ("AWS_REGION", "AWS_DEFAULT_REGION")
SCRATCH_ENV = "LLMFORGE_SCRATCH"
_CONNECT_TIMEOUT_S = 5.0
_REQUEST_TIMEOUT_S = 60.0
_RETRIES = 3


class StorageError(OSError):
    """Object storage could not be used as asked: the message says what to fix."""


def is_remote(uri: str) -> bool:
    """True for URIs of a remote filesystem (``s3://``), false for paths and ``file://``."""
    return "://" in uri and not uri.startswith("file://")


def endpoint() -> str | None:
    """The S3-compatible endpoint URL from the environment, or None for AWS."""
    for name in ENDPOINT_ENVS:
        if os.environ.get(name):
            return os.environ[name]
    return None


@lru_cache(maxsize=8)
def _s3(endpoint_url: str | None, region: str, key_id: str | None) -> pafs.S3FileSystem:
    # key_id is part of the cache key only: credentials are read from the environment by the
    # AWS SDK, and a changed key must not reuse a filesystem signed with the old one.
    del key_id
    options: dict[str, Any] = {
        "region": region,
        "connect_timeout": _CONNECT_TIMEOUT_S,
        "request_timeout": _REQUEST_TIMEOUT_S,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=_RETRIES),
        # A missing bucket is an error to report, never something to create by accident.
        "allow_bucket_creation": False,
        "allow_bucket_deletion": False,
    }
    if endpoint_url:
        parsed = urlparse(endpoint_url)
        options["endpoint_override"] = parsed.netloc or parsed.path
        options["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**options)


def _release_s3_clients() -> None:
    """Drop the cached S3 filesystems before pyarrow shuts the AWS SDK down at exit: one that
    outlives the SDK may crash the interpreter after the work is done (apache/arrow#41087,
    #38352). Registered after pyarrow.fs was imported, so it runs before pyarrow's own hook."""
    _s3.cache_clear()
    gc.collect()


atexit.register(_release_s3_clients)


def s3_filesystem() -> pafs.S3FileSystem:
    """The S3 filesystem the environment describes (endpoint, region, credentials)."""
    region = next((os.environ[n] for n in REGION_ENVS if os.environ.get(n)), "us-east-1")
    return _s3(endpoint(), region, os.environ.get("AWS_ACCESS_KEY_ID"))


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem for ``uri`` and the path within it (``bucket/key`` for S3)."""
    if uri.startswith("s3://"):
        return s3_filesystem(), uri.removeprefix("s3://").rstrip("/")
    if is_remote(uri):
        raise StorageError(f"unsupported URI scheme in {uri!r}: use a local path or s3://")
    path = uri.removeprefix("file://")
    return pafs.LocalFileSystem(), os.path.abspath(path) if path else path


def to_uri(uri_like: str, path: str) -> str:
    """A path inside ``uri_like``'s filesystem written back as a URI of the same kind."""
    return f"s3://{path}" if uri_like.startswith("s3://") else path


def resolve(uri: str) -> str:
    """``uri`` as every process of a job can use it: a local path (or ``file://`` URI) made
    absolute, since Ray workers run in other working directories; a remote URI as it is."""
    if is_remote(uri):
        return uri
    return os.path.abspath(uri.removeprefix("file://"))


def join(uri: str, *parts: str) -> str:
    """``uri`` with ``parts`` appended, ``/``-separated (the same on every filesystem)."""
    base = uri.rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts if p)])


def _wrap(uri: str, e: OSError) -> OSError:
    """A pyarrow error as one a user can act on: what is missing, unreachable or refused."""
    text = str(e)
    if isinstance(e, FileNotFoundError) or "NoSuchKey" in text or "Path does not exist" in text:
        return FileNotFoundError(f"not found: {uri}")
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return StorageError(f"bucket of {uri} does not exist: create it or fix the URI")
    if any(s in text for s in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")):
        return StorageError(
            f"access to {uri} refused ({text.splitlines()[0]}): check AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or the workload identity) of the cluster"
        )
    if any(s in text for s in ("connect", "Couldn't resolve", "timed out", "Connection")):
        return StorageError(
            f"cannot reach the object store for {uri} at {endpoint() or 'AWS'} ({text}): check "
            f"{' / '.join(ENDPOINT_ENVS)}"
        )
    return e


def info(uri: str) -> pafs.FileInfo:
    filesystem_, path = filesystem(uri)
    try:
        return filesystem_.get_file_info(path)
    except OSError as e:
        raise _wrap(uri, e) from e


def exists(uri: str) -> bool:
    return bool(info(uri).type != pafs.FileType.NotFound)


def is_file(uri: str) -> bool:
    return bool(info(uri).type == pafs.FileType.File)


def is_dir(uri: str) -> bool:
    """A local folder, or an S3 prefix that holds at least one object."""
    if not is_remote(uri):
        return os.path.isdir(uri.removeprefix("file://"))
    return bool(list_files(uri, limit=1))


def read_bytes(uri: str) -> bytes:
    filesystem_, path = filesystem(uri)
    try:
        with filesystem_.open_input_stream(path, compression=None) as f:
            return bytes(f.read())
    except OSError as e:
        raise _wrap(uri, e) from e


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_bytes(uri: str, data: bytes) -> None:
    """Write the whole object at once: never a half-written file under ``uri``'s name."""
    filesystem_, path = filesystem(uri)
    try:
        if isinstance(filesystem_, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the rename must not land before the bytes after a crash
            os.replace(tmp, path)
            return
        with filesystem_.open_output_stream(path, compression=None) as out:
            out.write(data)
    except OSError as e:
        raise _wrap(uri, e) from e


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str, value: Any) -> None:
    write_text(uri, json.dumps(value, indent=2, sort_keys=True))


def open_input(uri: str) -> IO[bytes]:
    """A buffered binary stream of the raw bytes (no decompression), with ``readline``."""
    filesystem_, path = filesystem(uri)
    try:
        native = filesystem_.open_input_stream(path, compression=None)
    except OSError as e:
        raise _wrap(uri, e) from e
    # pyarrow streams read but have no readline; a buffer on top gives the full interface.
    return cast(IO[bytes], io.BufferedReader(native, buffer_size=1 << 20))


def open_input_file(uri: str) -> pafs.NativeFile:
    """A random-access file: ranged reads on S3 (what Parquet and token shards need)."""
    filesystem_, path = filesystem(uri)
    try:
        return filesystem_.open_input_file(path)
    except OSError as e:
        raise _wrap(uri, e) from e


def open_output(uri: str) -> pafs.NativeFile:
    """A stream that writes ``uri`` (the object appears on S3 when the stream closes)."""
    filesystem_, path = filesystem(uri)
    if isinstance(filesystem_, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        return filesystem_.open_output_stream(path, compression=None)
    except OSError as e:
        raise _wrap(uri, e) from e


def sha256(uri: str) -> str:
    """The SHA-256 of the file's bytes, streamed (never the whole object in memory)."""
    digest = hashlib.sha256()
    with open_input(uri) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Entry:
    uri: str
    size: int


def list_files(uri: str, limit: int | None = None) -> list[Entry]:
    """Every file under the folder or prefix ``uri`` (recursively), sorted by URI; none when
    there is nothing there."""
    filesystem_, path = filesystem(uri)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    try:
        found = filesystem_.get_file_info(selector)
    except OSError as e:
        raise _wrap(uri, e) from e
    entries = sorted(
        (
            Entry(to_uri(uri, i.path), int(i.size or 0))
            for i in found
            if i.type == pafs.FileType.File
        ),
        key=lambda e: e.uri,
    )
    return entries[:limit] if limit is not None else entries


def delete(uri: str) -> None:
    """Remove the file or everything under the folder or prefix ``uri``; nothing there is fine."""
    filesystem_, path = filesystem(uri)
    try:
        kind = filesystem_.get_file_info(path).type
        if kind == pafs.FileType.File:
            filesystem_.delete_file(path)
        elif kind == pafs.FileType.Directory:
            filesystem_.delete_dir(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise _wrap(uri, e) from e


def upload(local: str | Path, uri: str) -> None:
    """Copy a local file or folder (recursively) to ``uri``; on local disk, a copy."""
    filesystem_, path = filesystem(uri)
    source = os.fspath(local)
    try:
        if os.path.isdir(source):
            if isinstance(filesystem_, pafs.LocalFileSystem):
                shutil.copytree(source, path, dirs_exist_ok=True)
                return
            pafs.copy_files(
                source,
                path,
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=filesystem_,
                use_threads=True,
            )
        else:
            with open(source, "rb") as f:
                write_bytes(uri, f.read())
    except OSError as e:
        raise _wrap(uri, e) from e


def download(uri: str, local: str | Path) -> Path:
    """Copy the file or folder ``uri`` to the local path ``local``; returns ``local``."""
    target = Path(local)
    kind = info(uri).type
    if kind == pafs.FileType.File:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        with open_input(uri) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, target)
        return target
    entries = list_files(uri)
    if not entries:
        raise FileNotFoundError(f"not found: {uri}")
    base = uri.rstrip("/")
    for entry in entries:
        download(entry.uri, target / entry.uri[len(base) + 1 :])
    return target


def walk_dirs(uri: str) -> Iterator[str]:
    """The immediate sub-folders (prefixes) of ``uri``, as URIs, sorted."""
    filesystem_, path = filesystem(uri)
    try:
        found = filesystem_.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as e:
        raise _wrap(uri, e) from e
    yield from sorted(to_uri(uri, i.path) for i in found if i.type == pafs.FileType.Directory)


def scratch(*parts: str) -> Path:
    """This node's scratch folder (``$LLMFORGE_SCRATCH``, else the system temp dir), created.

    Only the node that wrote a scratch file may read it: it is a cache or a staging area, never
    a way to hand data to another process that may run elsewhere."""
    root = Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "llmforge-scratch")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def node_lock(local: Path) -> Iterator[None]:
    """Hold this node's lock on the scratch path ``local``: the processes of one node that share
    a cache take turns, so one fills it and the others find it filled."""
    local.parent.mkdir(parents=True, exist_ok=True)
    with open(local.parent / f".{local.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cache(uri: str, local: Path, verify: Callable[[Path], None] | None = None) -> Path:
    """``uri`` (a file or folder) copied to the node-local path ``local`` once per node, and
    checked there with ``verify`` before it is used; returns ``local``.

    The first process of the node downloads it while the others wait on the node's lock; the
    copy is renamed into place only once complete and verified, so ``local`` existing means it
    is whole. Callers name ``local`` by a digest of what they expect, never by ``uri`` alone, so
    changed content never hits a stale copy."""
    with node_lock(local):
        if not local.exists():
            tmp = local.with_name(f".{local.name}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                download(uri, tmp)
                if verify is not None:
                    verify(tmp)
                os.replace(tmp, local)
            finally:
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                elif tmp.exists():
                    tmp.unlink()
    return local


def check_access(uri: str, *, write: bool = False) -> None:
    """Fail now, with what to fix, when ``uri``'s bucket is missing, the credentials are wrong
    or the endpoint does not answer; with ``write``, also when a test object cannot be written
    there. Local paths are checked by the job itself."""
    if not is_remote(uri):
        return
    filesystem_, path = filesystem(uri)
    bucket = path.split("/", 1)[0]
    try:
        kind = filesystem_.get_file_info(bucket).type
    except OSError as e:
        raise _wrap(uri, e) from e
    if kind == pafs.FileType.NotFound:
        raise StorageError(f"bucket {bucket!r} of {uri} does not exist: create it or fix the URI")
    if write:
        probe = join(uri, f".llmforge-write-check-{uuid.uuid4().hex[:8]}")
        write_bytes(probe, b"")
        delete(probe)
