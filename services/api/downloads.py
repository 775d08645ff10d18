"""Streaming one file of a job's output or a registry artifact to a client, with HTTP ranges.

A requested path is relative to the output (a local folder or an ``s3://`` prefix) and must be a
plain, canonical relative path: no ``..``, ``.`` or empty segments, no leading ``/``, no
backslashes, no ``%`` (a client's double-encoded ``%2e%2e`` would arrive as ``%2e``), no control
characters and nothing that Unicode normalisation (NFKC) would change, so look-alikes such as
``．．`` (full-width dots) or ``‥`` cannot become ``..`` anywhere downstream. A local output's
file is resolved (symlinks followed) and must stay inside the resolved output folder.
"""

from __future__ import annotations

import mimetypes
import os
import re
import unicodedata
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import quote

import pyarrow.fs as pafs
from fastapi import Header, HTTPException, status
from fastapi.responses import StreamingResponse

from llm import storage
from services.redact import redact

CHUNK = 1 << 20  # bytes read and sent at a time: a large file never sits in memory whole
MAX_PATH = 1024

_ERROR: dict[str, Any] = {"content": {"application/json": {}}}
# The OpenAPI answers of a download route (auth and rate limiting included).
DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the whole file",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    206: {
        "description": "the requested byte range (`Range: bytes=a-b`), with Content-Range",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    400: {"description": "the path is not a plain relative path inside the output", **_ERROR},
    401: {"description": "no valid API key, or the key expired", **_ERROR},
    404: {"description": "no such job, artifact or file visible to this key", **_ERROR},
    416: {"description": "the range starts past the end of the file", **_ERROR},
    429: {"description": "this key's request rate limit: retry after Retry-After seconds"},
    502: {"description": "the storage could not be read", **_ERROR},
}

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def bad_path(message: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, f"refused path: {message}")


def check_relative(path: str) -> str:
    """``path`` if it is a plain relative path (see the module's docstring), else a 400."""
    if not path:
        raise bad_path("give a file's path relative to the output")
    if len(path) > MAX_PATH:
        raise bad_path(f"longer than {MAX_PATH} characters")
    if "\\" in path:
        raise bad_path("backslashes are not path separators here")
    if "%" in path:
        raise bad_path("percent-encoded characters (send the path URL-encoded once)")
    if any(unicodedata.category(c).startswith("C") for c in path):
        raise bad_path("control or format characters")
    if unicodedata.normalize("NFKC", path) != path:
        raise bad_path("characters that Unicode normalisation changes (look-alikes)")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise bad_path("absolute paths are refused: give a path relative to the output")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise bad_path(f"'{part}' segments are refused: no traversal, no empty segments")
    return path


def locate(base: str, path: str, what: str) -> tuple[str, int]:
    """The URI of the file ``path`` inside ``base`` and its size; 400 or 404 otherwise."""
    check_relative(path)
    if not base:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} has no output")
    try:
        if storage.is_remote(base):
            uri = storage.join(base, path)
        else:
            root = os.path.realpath(storage.resolve(base))
            uri = os.path.realpath(os.path.join(root, path))
            if os.path.commonpath([root, uri]) != root or uri == root:
                raise bad_path("it leaves the output folder (through a symlink)")
        found = storage.info(uri)
    except (storage.StorageError, PermissionError) as e:
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY, redact(f"cannot read {what}'s output: {e}")
        ) from e
    except OSError as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} has no file {path}") from e
    if found.type != pafs.FileType.File:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} has no file {path}")
    return uri, int(found.size)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range asked for, None for the whole file (no header, one we do not
    serve such as several ranges, or a malformed one: RFC 9110 lets a server ignore those), or
    a 416 when the range cannot be satisfied."""
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # bytes=-n: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise unsatisfiable(size)
        return max(size - n, 0), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # syntactically invalid: ignored
    if start >= size:
        raise unsatisfiable(size)
    end = int(last) if last else size - 1
    return start, min(end, size - 1)


def unsatisfiable(size: int) -> HTTPException:
    return HTTPException(
        416,
        f"range not satisfiable: the file has {size} bytes",
        headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
    )


def _chunks(f: pafs.NativeFile, start: int, length: int) -> Iterator[bytes]:
    with f:
        f.seek(start)
        left = length
        while left > 0:
            data = f.read(min(CHUNK, left))
            if not data:
                break
            left -= len(data)
            yield bytes(data)


def file_response(uri: str, size: int, range_header: str | None) -> StreamingResponse:
    """The file (or its requested range) streamed in chunks, with the headers a resuming
    client needs."""
    wanted = parse_range(range_header, size)
    start, end = wanted if wanted else (0, size - 1)
    length = end - start + 1 if size else 0
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Length": str(length),
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}",
    }
    if wanted:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    try:  # opened now: a file that cannot be read is an error answer, not a broken stream
        f = storage.open_input_file(uri)
    except OSError as e:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, redact(f"cannot read {name}: {e}")) from e
    return StreamingResponse(
        _chunks(f, start, length),
        status_code=status.HTTP_206_PARTIAL_CONTENT if wanted else status.HTTP_200_OK,
        media_type=media_type,
        headers=headers,
    )


# The Range header every download route takes (RFC 9110 byte ranges).
RangeHeader = Annotated[
    str | None, Header(description="bytes=first-last, bytes=first- or bytes=-suffix")
]
