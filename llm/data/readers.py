"""JSONL readers that turn raw files into document batches (local paths or ``s3://`` URIs).

Bad input is data too: a line that cannot be read becomes a row with ``reason="malformed: ..."``
and its position, so a curation funnel can account for every line of every input file.
"""

import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa
import zstandard

from llm.data.schema import DOC_SCHEMA, ID, POSITION, REASON, SOURCE, TEXT
from llm.data.sources import FORMAT_SUFFIXES, InputFormat, base_name, list_files, open_input

INPUT_SUFFIXES: tuple[str, ...] = FORMAT_SUFFIXES["jsonl"]

# Enough of a bad line to see what went wrong without copying a huge blob into every batch.
RAW_TEXT_CHARS = 1000
_SKIP_CHUNK_BYTES = 1 << 20

# What a damaged compressed stream raises mid-read; reported as a row, not an exception, so the
# lines read before the damage are still used.
_STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError)


@dataclass(frozen=True)
class FieldMap:
    """Which JSON fields hold the text and the id (None: derive the id from the position)."""

    text: str = "text"
    id: str | None = "id"


class BatchBuilder:
    """Collects documents row by row and hands them out as ``DOC_SCHEMA`` tables."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.columns: dict[str, list[str | None]] = {ID: [], TEXT: [], POSITION: [], REASON: []}

    def __len__(self) -> int:
        return len(self.columns[ID])

    def add(self, doc_id: str, text: str, position: str, reason: str | None) -> None:
        for name, value in ((ID, doc_id), (TEXT, text), (POSITION, position), (REASON, reason)):
            self.columns[name].append(value)

    def flush(self) -> pa.Table:
        data = dict(self.columns)
        data[SOURCE] = [self.source] * len(self)
        self.columns = {name: [] for name in self.columns}
        return pa.table({name: data[name] for name in DOC_SCHEMA.names}, schema=DOC_SCHEMA)


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of one or more zstd frames. zstandard's own ``stream_reader``
    ends quietly at a truncated frame, which would drop its lines without a word; this one
    raises ``ZstdError`` there, so the cut becomes a malformed row."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.pending = raw, b""
        self.frame: Any = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            compressed = self.raw.read(1 << 16)
            if not compressed:
                if self.frame is not None and not self.frame.eof:
                    raise zstandard.ZstdError("truncated zstd stream")
                return 0
            while compressed:
                if self.frame is None or self.frame.eof:
                    self.frame = zstandard.ZstdDecompressor().decompressobj()
                self.pending += self.frame.decompress(compressed)
                compressed = self.frame.unused_data if self.frame.eof else b""
        size = min(len(buffer), len(self.pending))
        buffer[:size], self.pending = self.pending[:size], self.pending[size:]
        return size


def _decompressed(raw: IO[bytes], path: str) -> IO[bytes]:
    """``raw`` decompressed by the file's extension; closing the result leaves ``raw`` open."""
    if base_name(path).endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if base_name(path).endswith(".zst"):
        return io.BufferedReader(_ZstdFrames(raw))
    return raw


def _iter_lines(stream: IO[bytes], max_bytes: int) -> Iterator[tuple[bytes, bool]]:
    """Yield (line, too_long); an over-long line is skipped in chunks, never held in memory."""
    while line := stream.readline(max_bytes + 1):
        if len(line) <= max_bytes or line.endswith(b"\n"):
            yield line, False
            continue
        rest = line
        while rest and not rest.endswith(b"\n"):
            rest = stream.readline(_SKIP_CHUNK_BYTES)
        yield line, True


def _raw_text(line: bytes) -> str:
    return (
        line[: RAW_TEXT_CHARS * 4].decode("utf-8", errors="replace").rstrip("\r\n")[:RAW_TEXT_CHARS]
    )


def _is_encodable(value: str) -> bool:
    # json.loads accepts lone surrogates ("\ud800") that can never be written as UTF-8.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_record(line: bytes, field_map: FieldMap) -> tuple[str | None, str] | str:
    """The record's (id or None, text), or a description of why the line is malformed."""
    try:
        record: Any = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return "invalid utf-8"
    except (json.JSONDecodeError, RecursionError):
        return "invalid json"
    if not isinstance(record, dict):
        return "not a json object"
    if field_map.text not in record:
        return f"missing field '{field_map.text}'"
    text = record[field_map.text]
    if not isinstance(text, str) or not _is_encodable(text):
        return f"field '{field_map.text}' is not a valid string"
    raw_id = record.get(field_map.id) if field_map.id is not None else None
    if raw_id is None:
        return None, text
    valid_id = isinstance(raw_id, str | int) and not isinstance(raw_id, bool)
    if not valid_id or not _is_encodable(str(raw_id)):
        return f"field '{field_map.id}' is not a string or integer"
    return str(raw_id), text


def _check_args(part: int, num_parts: int, batch_size: int, max_doc_bytes: int) -> None:
    if num_parts < 1 or not 0 <= part < num_parts:
        raise ValueError(f"need 0 <= part < num_parts, got part={part} num_parts={num_parts}")
    if batch_size < 1 or max_doc_bytes < 1:
        raise ValueError("batch_size and max_doc_bytes must be positive")


def read_jsonl(
    path: str,
    *,
    part: int = 0,
    num_parts: int = 1,
    source: str | None = None,
    field_map: FieldMap = FieldMap(),
    batch_size: int = 1024,
    max_doc_bytes: int = 10_000_000,
) -> Iterator[pa.Table]:
    """Yield document batches from a JSONL file (plain, .gz, or .zst).

    Line numbers start at 1 and a line belongs to this reader when
    ``line_number % num_parts == part``, so ``num_parts`` readers split one file exactly.
    Blank lines hold no document and yield no row. Positions and derived ids are
    ``"<file name>:<line number>"``.
    """
    _check_args(part, num_parts, batch_size, max_doc_bytes)
    name = base_name(path)
    rows = BatchBuilder(source if source is not None else name)
    line_no = 0
    with open_input(path) as raw, _decompressed(raw, path) as stream:
        try:
            for line, too_long in _iter_lines(stream, max_doc_bytes):
                line_no += 1
                if line_no % num_parts != part or (not too_long and not line.strip()):
                    continue
                _add_line(rows, line, too_long, f"{name}:{line_no}", field_map, max_doc_bytes)
                if len(rows) >= batch_size:
                    yield rows.flush()
        except _STREAM_ERRORS as exc:
            # Only the reader owning the broken line reports it, so split readers report it once.
            if (line_no + 1) % num_parts == part:
                position = f"{name}:{line_no + 1}"
                reason = f"malformed: truncated or corrupt stream ({type(exc).__name__}: {exc})"
                rows.add(position, "", position, reason)
    if len(rows):
        yield rows.flush()


def _add_line(
    rows: BatchBuilder,
    line: bytes,
    too_long: bool,
    position: str,
    field_map: FieldMap,
    max_doc_bytes: int,
) -> None:
    parsed = f"line over {max_doc_bytes} bytes" if too_long else _parse_record(line, field_map)
    if isinstance(parsed, str):
        rows.add(position, _raw_text(line), position, f"malformed: {parsed}")
        return
    doc_id, text = parsed
    rows.add(doc_id if doc_id is not None else position, text, position, None)


def list_input_files(uri: str, input_format: InputFormat | None = "jsonl") -> list[str]:
    """The input file at ``uri``, or every file of ``input_format`` under ``uri``, sorted.

    ``uri`` is a path, a ``file://`` or an ``s3://`` URI; None for ``input_format`` lists every
    format a reader takes.
    """
    return list_files(uri, input_format)
