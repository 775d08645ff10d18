"""The HTTP response inside a WARC record, read the way real archives are written.

Crawlers of every age wrote these blocks, and not all of them by the book: ClueWeb09 (WARC/0.18)
ends HTTP header lines with a bare LF; servers send no ``Content-Type`` or a wrong one, a
``Content-Encoding: gzip`` header over a body that the crawler already decoded, a chunked body
the crawler kept as it came, and a charset only in a ``<meta>`` tag — or none at all. fastwarc's
own HTTP parser (quirks mode) reads such heads too, but it hands over the body alone, and the
reader needs the whole block to check its length and digest first; so the head is split here,
with the same tolerance, and everything past that (charset detection, WHATWG label mapping,
decoding with fallbacks) is Resiliparse's.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

import zstandard
from resiliparse.parse.encoding import (
    bytes_to_str,
    detect_encoding,
    detect_mime,
    map_encoding_to_html5,
)

HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("text/plain",)
# Declared types that say nothing about the body: the body itself decides.
UNINFORMATIVE_TYPES = (
    "",
    "application/octet-stream",
    "unknown",
    "unknown/unknown",
    "text/x-unknown",
)
# Families whose bodies are never text, whatever they look like.
BINARY_FAMILIES = ("image/", "audio/", "video/", "font/")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
_HTML_START = re.compile(
    rb"^\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body|title|meta)\b", re.I | re.S
)
_SNIFF_BYTES = 2048


@dataclass
class HttpPayload:
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def charset(self) -> str | None:
        """The charset the Content-Type header declares, as written (not yet checked)."""
        for param in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and value.strip(" \"'"):
                return value.strip(" \"'")
        return None


def parse_http_response(block: bytes) -> HttpPayload:
    """Status, headers (lower-case names) and decoded body of an HTTP response block.

    A block that does not start with a status line has no head: it is all body.
    """
    if not block.startswith(b"HTTP/"):
        return HttpPayload(status=None, body=block)
    found = _HEAD_END.search(block)
    head, body = (block[: found.start()], block[found.end() :]) if found else (block, b"")
    lines = _LINE_END.split(head)
    status_words = lines[0].split()
    status = int(status_words[1]) if len(status_words) > 1 and status_words[1].isdigit() else None
    headers: dict[str, str] = {}
    last = ""
    for raw in lines[1:]:
        line = raw.decode("latin-1")
        if line[:1] in (" ", "\t") and last:  # an obsolete folded continuation line
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if colon:
            last = name.strip().lower()
            headers[last] = value.strip()
    payload = HttpPayload(status=status, headers=headers, body=body)
    payload.body = _content_decoded(_transfer_decoded(body, headers), headers)
    return payload


def _transfer_decoded(body: bytes, headers: dict[str, str]) -> bytes:
    """The body without chunked framing, when it really is chunked (crawlers often removed it
    and kept the header)."""
    if "chunked" not in headers.get("transfer-encoding", "").lower():
        return body
    out, pos = bytearray(), 0
    while True:
        end = body.find(b"\n", pos)
        size_text = body[pos:end].split(b";")[0].strip() if end >= 0 else b""
        try:
            size = int(size_text, 16)
        except ValueError:
            return body  # not chunked after all
        if size == 0:
            return bytes(out)
        start = end + 1
        if start + size > len(body):
            return body
        out += body[start : start + size]
        pos = start + size
        pos += 2 if body[pos : pos + 2] == b"\r\n" else 1 if body[pos : pos + 1] == b"\n" else 0


def _content_decoded(body: bytes, headers: dict[str, str]) -> bytes:
    """The body decompressed as Content-Encoding says, when it is compressed: many archives
    store the decoded body under the original header, so a body that does not decode is kept."""
    for coding in reversed(
        [c.strip().lower() for c in headers.get("content-encoding", "").split(",")]
    ):
        try:
            if coding in ("gzip", "x-gzip") and body[:2] == b"\x1f\x8b":
                body = zlib.decompress(body, wbits=47)
            elif coding == "deflate":
                body = _inflate(body)
            elif coding == "zstd":
                body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        except (zlib.error, zstandard.ZstdError):
            return body
    return body


def _inflate(body: bytes) -> bytes:
    try:
        return zlib.decompress(body)  # zlib-wrapped, as the RFC says
    except zlib.error:
        return zlib.decompress(body, wbits=-15)  # raw deflate, as many servers send


def looks_like_html(body: bytes) -> bool:
    head = body[:_SNIFF_BYTES].lstrip(b"\xef\xbb\xbf")
    return bool(_HTML_START.match(head)) or b"<html" in head.lower()


def looks_like_text(body: bytes) -> bool:
    """No NUL bytes and no binary magic number: text in some charset."""
    sample = body[:_SNIFF_BYTES]
    if b"\x00" in sample.lstrip(b"\xff\xfe").lstrip(b"\xfe\xff"):
        return False
    return detect_mime(sample) in ("text/plain", "text/html", "application/octet-stream")


def body_kind(payload: HttpPayload) -> str | None:
    """ "html", "text", or None when the body is not text (the declared type, or the sniffed
    one where the declaration is missing, generic or plainly wrong, decides)."""
    declared = payload.content_type
    if declared.startswith(BINARY_FAMILIES):
        return None
    if declared in HTML_TYPES or looks_like_html(payload.body):
        return "html"
    if declared in TEXT_TYPES or (
        declared in UNINFORMATIVE_TYPES and looks_like_text(payload.body)
    ):
        return "text"
    return None


def _codec(label: str | None) -> str | None:
    """A Python codec for a charset label, by the WHATWG table (latin-1 → windows-1252, …)."""
    if not label:
        return None
    codec = map_encoding_to_html5(label, fallback_utf8=False)
    # WHATWG decodes "gbk" (and gb2312) with the GB18030 decoder, a superset of both.
    return "gb18030" if codec == "gbk" else codec


_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def decode_body(payload: HttpPayload, *, html: bool) -> str:
    """The body as text, in the WHATWG order: a byte-order mark, else the declared charset when
    it decodes cleanly, else the ``<meta>`` tag's (HTML), else the detected one."""
    body = payload.body
    bom = next((codec for mark, codec in _BOMS if body.startswith(mark)), None)
    detected = _codec(detect_encoding(body, from_html_meta=html))
    declared = _codec(payload.charset)
    for codec in (bom, declared, detected):
        if codec:
            try:
                return body.decode(codec).removeprefix("\ufeff")
            except (UnicodeDecodeError, LookupError):
                continue
    return str(bytes_to_str(body, detected or "utf-8", errors="replace"))
