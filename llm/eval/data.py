"""Read an evaluation set's records: JSONL (optionally gzipped), Parquet or plain text, from a
local path or ``s3://``, counting malformed records instead of failing on them.

Relative paths in task files resolve against the data root: ``$LLMFORGE_DATA_ROOT``, else the
``shared/data`` folder beside the checkout, so built-in tasks work wherever the data lives.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import IO, Any

DATA_ROOT_ENV = "LLMFORGE_DATA_ROOT"
FORMATS = ("jsonl", "json", "parquet", "text")


class DataNotFoundError(FileNotFoundError):
    """A task's data file does not exist (the message names the path and the data root)."""


@dataclass(frozen=True)
class Malformed:
    """A record that could not be used, where it was and why."""

    row: int  # 0-based record index in the task's data (what item sharding slices)
    line: int  # 1-based line (JSONL, text) or entry number (JSON array, Parquet) in its file
    file: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "line": self.line, "file": self.file, "reason": self.reason}


@dataclass(frozen=True)
class Record:
    row: int
    line: int
    file: str
    data: dict[str, Any]


@dataclass
class Records:
    """Every record of a data source in file order: the usable ones and the malformed ones."""

    good: list[Record] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.good) + len(self.malformed)


def default_data_root() -> Path | None:
    """$LLMFORGE_DATA_ROOT, else <checkout>/../shared/data when that folder exists."""
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[3] / "shared" / "data"
    return beside if beside.is_dir() else None


def locate(path: str, *, task_file: str, data_root: str | Path | None = None) -> str:
    """Where a task's data path points, without looking: an s3:// URI or absolute path as
    given, a relative path under the data root (a local folder or an s3:// prefix)."""
    if path.startswith("s3://") or Path(path).is_absolute():
        return path
    root = data_root or default_data_root()
    if root is None:
        raise DataNotFoundError(
            f"{task_file}: data path {path!r} is relative but no data root is set "
            f"(set ${DATA_ROOT_ENV} to the folder holding the evaluation data)"
        )
    return f"{str(root).rstrip('/')}/{path}"


def resolve(path: str, *, task_file: str, data_root: str | Path | None = None) -> str:
    """:func:`locate`, and the file (or, for a local glob, at least one match) must exist."""
    path = locate(path, task_file=task_file, data_root=data_root)
    if path.startswith("s3://"):
        from llm import storage

        if storage.is_file(path):
            return path
    elif glob.glob(path) if glob.has_magic(path) else Path(path).is_file():
        return path
    raise DataNotFoundError(
        f"{task_file}: data file {path} not found (data root: "
        f"{data_root or default_data_root()}; set ${DATA_ROOT_ENV} to change it)"
    )


def data_files(
    data: str | None, fewshot_data: str | None, *, task_file: str, data_root: str | Path | None
) -> list[tuple[str, str]]:
    """(field, file) for every file a task reads: its ``data`` and ``fewshot_data``, a local
    glob expanded to its matches (the pattern itself when nothing matches yet). What a job
    checks against its storage roots before it reads them."""
    found = []
    for name, value in (("data", data), ("fewshot_data", fewshot_data)):
        if value is None:
            continue
        path = locate(value, task_file=task_file, data_root=data_root)
        found += [(name, file) for file in _files(path) or [path]]
    return found


def infer_format(path: str) -> str:
    name = path.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".txt"):
        return "text"
    raise ValueError(f"cannot tell the format of {path}: give data_format ({', '.join(FORMATS)})")


def _open(path: str) -> IO[bytes]:
    """A binary stream of the file's bytes, gunzipped when the name ends in .gz."""
    if path.startswith("s3://"):
        from llm import storage

        raw: IO[bytes] = io.BytesIO(storage.read_bytes(path))
    else:
        raw = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    return gzip.open(raw) if path.endswith(".gz") else raw  # type: ignore[return-value]


def _files(path: str) -> list[str]:
    return sorted(glob.glob(path)) if glob.has_magic(path) and "://" not in path else [path]


def _jsonl(path: str, out: Records) -> None:
    with _open(path) as f:
        for line_no, raw in enumerate(f, start=1):
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue  # blank lines separate nothing and hold no record
            row = out.total
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                out.malformed.append(Malformed(row, line_no, path, f"invalid JSON: {e.msg}"))
                continue
            if not isinstance(data, dict):
                reason = f"not a JSON object (got {type(data).__name__})"
                out.malformed.append(Malformed(row, line_no, path, reason))
                continue
            out.good.append(Record(row, line_no, path, data))


def _json(path: str, out: Records) -> None:
    """A JSON array of records (a .json file that is really JSON Lines is read as such)."""
    with _open(path) as f:
        raw = f.read()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        _jsonl(path, out)
        return
    for i, entry in enumerate(data if isinstance(data, list) else [data]):
        if isinstance(entry, dict):
            out.good.append(Record(out.total, i + 1, path, entry))
        else:
            reason = f"array entry {i} is not a JSON object (got {type(entry).__name__})"
            out.malformed.append(Malformed(out.total, i + 1, path, reason))


def _parquet(path: str, out: Records) -> None:
    import pyarrow.parquet as pq

    with _open(path) as f:
        table = pq.read_table(f)
    for i, data in enumerate(table.to_pylist()):
        out.good.append(Record(out.total, i + 1, path, data))


def _text_documents(text: str, document_start: str | None) -> Iterator[tuple[int, str]]:
    """(1-based first line, document) pairs: the whole text, or one document from each match
    of document_start (a regex, multi-line mode) to the next."""
    found = re.finditer(document_start, text, re.MULTILINE) if document_start else iter(())
    starts = [m.start() for m in found]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    for begin, end in pairwise([*starts, len(text)]):
        doc = text[begin:end]
        if doc.strip():  # text before the first match may be blank lines only
            yield text.count("\n", 0, begin) + 1, doc


def _text(path: str, document_start: str | None, out: Records) -> None:
    with _open(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # older e-texts (two of NLTK's Gutenberg books) are Latin-1, which decodes any bytes
        text = raw.decode("latin-1")
    name = Path(path).name
    for line_no, doc in _text_documents(text, document_start):
        out.good.append(Record(out.total, line_no, path, {"text": doc, "file": name}))


def read_records(path: str, fmt: str | None = None, document_start: str | None = None) -> Records:
    """All records of path (a file, an s3:// URI, or a local glob of files read in name order).

    Plain text (UTF-8, else Latin-1) yields one record {"text", "file"} per document: the
    whole file, or one per match of document_start.
    """
    fmt = fmt or infer_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"data_format must be one of {list(FORMATS)}, got {fmt!r}")
    out = Records()
    for file in _files(path):
        if fmt == "jsonl":
            _jsonl(file, out)
        elif fmt == "json":
            _json(file, out)
        elif fmt == "parquet":
            _parquet(file, out)
        else:
            _text(file, document_start, out)
    return out
