"""Where input files live: local paths, ``file://`` or ``s3://`` URIs, through pyarrow filesystems.

Listing and opening go through ``llm.storage`` for remote URIs (its environment-only endpoint
and credentials), so a reader works the same on a laptop and against object storage; local paths
use the plain ``open``.
"""

import os
from typing import IO, Any, Literal

import pyarrow.fs as pafs

from llm import storage

InputFormat = Literal["jsonl", "parquet", "warc", "wet"]

# Checked in order: a WET file is also named "*.warc.wet.gz", so "wet" is tried before "warc".
FORMAT_SUFFIXES: dict[InputFormat, tuple[str, ...]] = {
    "jsonl": (".jsonl", ".jsonl.gz", ".json.gz", ".jsonl.zst"),
    "parquet": (".parquet",),
    "wet": (".wet", ".wet.gz"),
    "warc": (".warc", ".warc.gz"),
}


is_remote = storage.is_remote


def base_name(uri: str) -> str:
    """The file name of a path or URI."""
    return os.path.basename(uri)


def format_of(path: str) -> InputFormat | None:
    """The input format a file name's extension says, or None for files no reader takes."""
    for name, suffixes in FORMAT_SUFFIXES.items():
        if base_name(path).endswith(suffixes):
            return name
    return None


def open_input(uri: str) -> IO[bytes]:
    """A binary stream of the raw file bytes (no decompression), local or remote."""
    if not is_remote(uri):
        return open(uri.removeprefix("file://"), "rb")
    # No decompression: the readers decompress themselves, so a damaged stream becomes a row.
    return storage.open_input(uri)


def _matches(path: str, input_format: InputFormat | None) -> bool:
    found = format_of(path)
    return found is not None and (input_format is None or found == input_format)


def _list_remote(uri: str, input_format: InputFormat | None) -> list[str]:
    filesystem, path = storage.filesystem(uri)
    info = storage.info(uri)
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no such input file or directory: {uri}")
    listing = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(
        storage.to_uri(uri, entry.path)
        for entry in listing
        if entry.type == pafs.FileType.File and _matches(entry.path, input_format)
    )


def list_files(uri: str, input_format: InputFormat | None = None) -> list[str]:
    """The file at ``uri``, or every readable file under the folder or prefix ``uri``, sorted.

    With ``input_format`` only files with that format's extensions are listed; a single file named
    directly is taken whatever its extension.
    """
    if is_remote(uri):
        found = _list_remote(uri, input_format)
    else:
        path = uri.removeprefix("file://")
        if os.path.isfile(path):
            return [path]
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no such input file or directory: {uri}")
        found = sorted(
            os.path.join(root, file)
            for root, _dirs, files in os.walk(path)
            for file in files
            if _matches(file, input_format)
        )
    if not found:
        wanted = (
            FORMAT_SUFFIXES[input_format] if input_format else sum(FORMAT_SUFFIXES.values(), ())
        )
        raise FileNotFoundError(f"no input files ({', '.join(wanted)}) under {uri}")
    return found


def open_seekable(uri: str) -> Any:
    """A random-access file (what Parquet needs): the local path itself, or a pyarrow file."""
    if not is_remote(uri):
        return uri.removeprefix("file://")
    return storage.open_input_file(uri)
