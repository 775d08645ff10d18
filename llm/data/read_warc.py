"""WARC and WET readers: one document per response (WARC) or conversion (WET) record.

WARC responses are HTML turned into text with Resiliparse's extractor (main content only, the
boilerplate-free text FineWeb-style pipelines start from); WET records already hold text. The id
is the record's ``WARC-Record-ID``, the position ``<file name>:<byte offset of the record>``.

A record whose block is shorter than its ``Content-Length`` (a truncated file) or whose
``WARC-Block-Digest`` does not match (corrupt bytes) becomes a ``malformed`` row, as does a
stream that cannot be decompressed past some point; the records before it are still read.
"""

import base64
import hashlib
from collections.abc import Iterator
from typing import Any, Literal

import pyarrow as pa
from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.extract.html2text import extract_plain_text

from llm.data.http_payload import body_kind, decode_body, parse_http_response
from llm.data.readers import BatchBuilder
from llm.data.sources import base_name, open_input

RecordKind = Literal["warc", "wet"]
_RECORD_TYPES = {"warc": WarcRecordType.response, "wet": WarcRecordType.conversion}


def _block_problem(record: Any, block: bytes) -> str | None:
    """Why the record's block cannot be trusted, or None."""
    declared = int(record.headers.get("Content-Length", "-1"))
    if len(block) != declared:
        return f"truncated record ({len(block)} of {declared} bytes)"
    digest = record.headers.get("WARC-Block-Digest")
    if digest and digest.startswith("sha1:"):
        actual = base64.b32encode(hashlib.sha1(block).digest()).decode()
        if digest.removeprefix("sha1:").upper() != actual:
            return "block digest mismatch"
    return None


def response_text(block: bytes) -> tuple[str, str | None]:
    """(document text, removal reason or None) of a WARC response block."""
    payload = parse_http_response(block)
    kind = body_kind(payload)
    if kind == "html":
        return extract_plain_text(decode_body(payload, html=True), main_content=True), None
    if kind == "text":
        return decode_body(payload, html=False), None
    return "", f"not_text:{payload.content_type or 'unknown'}"


def _document(kind: RecordKind, block: bytes) -> tuple[str, str | None]:
    if kind == "wet":
        return block.decode("utf-8", errors="replace"), None
    return response_text(block)


def _add_record(rows: BatchBuilder, record: Any, kind: RecordKind, name: str, limit: int) -> None:
    position = f"{name}:{record.stream_pos}"
    doc_id = str(record.record_id or position).strip("<>")
    if record.content_length > limit:
        rows.add(doc_id, "", position, f"malformed: record over {limit} bytes")
        return
    block = record.reader.read()
    problem = _block_problem(record, block)
    if problem:
        rows.add(doc_id, "", position, f"malformed: {problem}")
        return
    text, reason = _document(kind, block)
    rows.add(doc_id, text, position, reason)


def read_warc(
    path: str,
    *,
    kind: RecordKind = "warc",
    part: int = 0,
    num_parts: int = 1,
    source: str | None = None,
    batch_size: int = 256,
    max_doc_bytes: int = 10_000_000,
) -> Iterator[pa.Table]:
    """Yield document batches from a WARC (``kind="warc"``) or WET file, plain or gzipped.

    Records of the wanted type are numbered from 0; record ``i`` belongs to this reader when
    ``i % num_parts == part``, so ``num_parts`` readers split one file exactly.
    """
    if num_parts < 1 or not 0 <= part < num_parts:
        raise ValueError(f"need 0 <= part < num_parts, got part={part} num_parts={num_parts}")
    name = base_name(path)
    rows = BatchBuilder(source if source is not None else name)
    index, last_pos = -1, 0
    with open_input(path) as stream:
        try:
            records = ArchiveIterator(stream, record_types=_RECORD_TYPES[kind], parse_http=False)
            for record in records:
                index, last_pos = index + 1, record.stream_pos
                if index % num_parts == part:
                    _add_record(rows, record, kind, name, max_doc_bytes)
                if len(rows) >= batch_size:
                    yield rows.flush()
        except (OSError, ValueError) as exc:
            # The reader owning the next record reports it, so split readers report it once.
            if (index + 1) % num_parts == part:
                position = f"{name}:after:{last_pos}"
                reason = f"malformed: unreadable stream ({type(exc).__name__}: {exc})"
                rows.add(position, "", position, reason)
    if len(rows):
        yield rows.flush()
