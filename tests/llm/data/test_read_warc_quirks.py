"""WARC records as real archives write them: old WARC versions, bare-LF HTTP heads, missing or
wrong Content-Type, Content-Encoding headers over bodies that are (or are not) encoded, chunked
bodies, and charsets declared in the header, only in a <meta> tag, wrongly, or not at all."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pytest

from llm.data.http_payload import parse_http_response
from llm.data.langid import LanguageFilter
from llm.data.read_warc import read_warc, response_text
from tests.llm.data.batches import make_batch

JAPANESE = "日本語のウェブページです。今日は天気がとても良いので、公園へ散歩に行きました。" * 4
CHINESE = "这是一个中文网页。今天天气很好，我们去公园散步，然后在饭馆吃了午饭。" * 4
FRENCH = "Le café était très apprécié en été; où est la bibliothèque du château ? " * 4
ENGLISH = "The river was wide and slow, and the boats drifted past the old mill. " * 4


def html(text: str, head: str = "") -> str:
    return f"<html><head>{head}<title>t</title></head><body><p>{text}</p></body></html>"


def http(headers: list[str], body: bytes, eol: bytes = b"\r\n") -> bytes:
    head = eol.join(h.encode("latin-1") for h in ["HTTP/1.1 200 OK", *headers])
    return head + eol + eol + body


def warc(blocks: list[bytes], version: str = "WARC/1.0") -> bytes:
    out = b""
    for i, block in enumerate(blocks):
        head = (
            f"{version}\r\nWARC-Type: response\r\nWARC-Target-URI: http://example.org/{i}\r\n"
            f"WARC-Date: 2009-03-01T00:00:00Z\r\nWARC-Record-ID: <urn:uuid:{i:08d}>\r\n"
            f"Content-Type: application/http;msgtype=response\r\n"
            f"Content-Length: {len(block)}\r\n\r\n"
        )
        out += head.encode() + block + b"\r\n\r\n"
    return out


def chunked(body: bytes, size: int = 50) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


CASES = {
    # ClueWeb09's own shape: bare LF in the HTTP head, the charset declared in the header.
    "euc_jp_bare_lf": (
        http(["Content-Type: text/html; charset=EUC-JP"], html(JAPANESE).encode("euc-jp"), b"\n"),
        JAPANESE[:20],
    ),
    "shift_jis_meta_only_no_content_type": (
        http(
            ["Server: x"],
            html(
                JAPANESE,
                '<meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS">',
            ).encode("shift_jis"),
        ),
        JAPANESE[:20],
    ),
    "gb18030_declared_gb2312": (
        http(["Content-Type: text/html; charset=gb2312"], html(CHINESE).encode("gb18030")),
        CHINESE[:20],
    ),
    "windows_1252_declared_latin1": (
        http(["Content-Type: text/html; charset=ISO-8859-1"], html(FRENCH).encode("cp1252")),
        "Le café était très apprécié",
    ),
    "euc_jp_declared_utf8_wrongly": (
        http(["Content-Type: text/html; charset=utf-8"], html(JAPANESE).encode("euc-jp")),
        JAPANESE[:20],
    ),
    "no_charset_anywhere": (
        http(["Content-Type: text/html"], html(JAPANESE).encode("euc-jp")),
        JAPANESE[:20],
    ),
    "bom_beats_the_header": (
        http(
            ["Content-Type: text/html; charset=windows-1252"],
            b"\xef\xbb\xbf" + html(FRENCH).encode("utf-8"),
        ),
        "Le café était très apprécié",
    ),
    "gzip_header_over_a_decoded_body": (
        http(["Content-Type: text/html", "Content-Encoding: gzip"], html(ENGLISH).encode()),
        ENGLISH[:40],
    ),
    "gzip_body": (
        http(
            ["Content-Type: text/html; charset=utf-8", "Content-Encoding: gzip"],
            gzip.compress(html(ENGLISH).encode()),
        ),
        ENGLISH[:40],
    ),
    "chunked_body": (
        http(
            ["Content-Type: text/html; charset=utf-8", "Transfer-Encoding: chunked"],
            chunked(html(ENGLISH).encode()),
        ),
        ENGLISH[:40],
    ),
    "html_served_as_text_plain": (
        http(["Content-Type: text/plain"], b"<!DOCTYPE html>\n" + html(ENGLISH).encode()),
        ENGLISH[:40],
    ),
    "text_served_as_octet_stream": (
        http(["Content-Type: application/octet-stream"], FRENCH.encode("cp1252")),
        "Le café était très apprécié",
    ),
    "folded_header_line": (
        http(["Content-Type: text/html;", "\tcharset=EUC-JP"], html(JAPANESE).encode("euc-jp")),
        JAPANESE[:20],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_quirky_response_yields_its_text(case: str) -> None:
    block, expected = CASES[case]
    text, reason = response_text(block)
    assert reason is None
    assert expected in text and "<p>" not in text and "\ufffd" not in text


def test_binary_bodies_stay_not_text_with_their_type() -> None:
    png = http(["Content-Type: image/png"], b"\x89PNG\r\n\x1a\n" + bytes(200))
    assert response_text(png) == ("", "not_text:image/png")
    unlabelled = http([], b"%PDF-1.4\n" + bytes(range(256)))
    assert response_text(unlabelled) == ("", "not_text:unknown")


def test_head_parsing_keeps_status_and_headers() -> None:
    payload = parse_http_response(
        b"HTTP/1.0 404 Not Found\nX-A: 1\nContent-Type: Text/HTML\n\nbody"
    )
    assert (payload.status, payload.content_type, payload.body) == (404, "text/html", b"body")
    assert parse_http_response(b"no status line").body == b"no status line"


@pytest.mark.parametrize("version", ["WARC/0.18", "WARC/1.0", "WARC/1.1"])
def test_every_warc_version_reads_and_pages_in_other_languages_reach_langid(
    tmp_path: Path, version: str
) -> None:
    path = tmp_path / "quirks.warc.gz"
    blocks = [block for block, _ in CASES.values()]
    path.write_bytes(gzip.compress(warc(blocks, version)))
    table = pa.concat_tables(read_warc(str(path)))
    assert table.num_rows == len(CASES) and table["reason"].null_count == len(CASES)
    langs = dict(
        zip(
            CASES,
            LanguageFilter(languages=None)
            .apply(make_batch(table["text"].to_pylist()))["lang"]
            .to_pylist(),
            strict=True,
        )
    )
    assert {k for k, lang in langs.items() if lang == "ja"} == {
        "euc_jp_bare_lf",
        "shift_jis_meta_only_no_content_type",
        "euc_jp_declared_utf8_wrongly",
        "no_charset_anywhere",
        "folded_header_line",
    }
    assert langs["gb18030_declared_gb2312"] == "zh"
    assert langs["windows_1252_declared_latin1"] == langs["bom_beats_the_header"] == "fr"
