"""Instruction records from JSON or JSONL: read, mapped to canonical fields, checked.

Two shapes are understood:
  instruction  {"instruction", "input" (optional), "output"}  (Stanford Alpaca, Dolly with a map)
  chat         [{"role", "content"}, ...] or {"messages": [...]}, roles system / user / assistant

A field map renames the canonical fields to the file's own keys. A record that cannot be used
becomes a Rejection with a reason code and a message, never an exception: the caller counts and
writes them aside.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIELD_NAMES = ("instruction", "input", "output", "messages", "role", "content")
FORMATS = ("auto", "instruction", "chat")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Instruction:
    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Chat:
    messages: tuple[Message, ...]


Record = Instruction | Chat


@dataclass(frozen=True)
class Rejection:
    index: int  # position in the JSON array, or the JSONL line number (0-based)
    reason: str  # a short code, counted in the stats
    detail: str  # what is wrong, for the person who fixes the file
    record: Any  # the record as read (the raw text for invalid JSON)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "reason": self.reason,
            "detail": self.detail,
            "record": self.record,
        }


class _Bad(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def field_map(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The canonical field names mapped to the file's keys (identity unless overridden)."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"unknown fields {unknown} in the field map; known: {list(FIELD_NAMES)}")
    return {name: overrides.get(name, name) for name in FIELD_NAMES}


def read_json_records(
    path: str | Path, max_records: int | None = None
) -> Iterator[tuple[int, Any]]:
    """Yield (index, record) for each record of a JSON array or a JSONL file (chosen by the first
    character); index is the position in the array, or the JSONL line number (both 0-based). A
    JSONL line that is not JSON yields a Rejection as its record. Blank lines are not records.

    Raises ValueError (naming the file) when a JSON array file does not parse as a whole.
    """
    path = Path(path)
    with path.open(encoding="utf-8-sig") as f:
        head = f.read(4096).lstrip()
    count = 0
    if head.startswith("["):
        try:
            records = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); give a JSON array or JSONL") from e
        if not isinstance(records, list):
            raise ValueError(f"{path}: the JSON is not an array of records")
        yield from enumerate(records[:max_records])
        return
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f):
            if max_records is not None and count >= max_records:
                return
            if not line.strip():
                continue
            count += 1
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                bad = Rejection(number, "invalid_json", f"line {number + 1}: {e}", line.rstrip())
                yield number, bad


def _text(record: Mapping[str, Any], key: str, *, required: bool, nonempty: bool) -> str:
    if key not in record or record[key] is None:
        if required:
            raise _Bad("missing_field", f"missing field {key!r}")
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise _Bad("wrong_type", f"field {key!r} is {type(value).__name__}, expected a string")
    if nonempty and not value.strip():
        raise _Bad(f"empty_{key}", f"field {key!r} is empty")
    return value


def _instruction(record: Any, fields: Mapping[str, str]) -> Instruction:
    if not isinstance(record, dict):
        raise _Bad("wrong_type", f"record is {type(record).__name__}, expected an object")
    return Instruction(
        instruction=_text(record, fields["instruction"], required=True, nonempty=True),
        input=_text(record, fields["input"], required=False, nonempty=False),
        output=_text(record, fields["output"], required=True, nonempty=True),
    )


def _message(item: Any, position: int, fields: Mapping[str, str]) -> Message:
    if not isinstance(item, dict):
        raise _Bad("bad_message", f"message {position} is {type(item).__name__}, not an object")
    try:
        role = _text(item, fields["role"], required=True, nonempty=True)
        content = _text(item, fields["content"], required=True, nonempty=False)
    except _Bad as e:
        raise _Bad("bad_message", f"message {position}: {e.detail}") from None
    if role not in ROLES:
        raise _Bad("bad_role", f"message {position} has role {role!r}; expected one of {ROLES}")
    if role == "assistant" and not content.strip():
        raise _Bad("empty_output", f"message {position} (assistant) is empty")
    return Message(role, content)


def _chat(record: Any, fields: Mapping[str, str]) -> Chat:
    messages = record.get(fields["messages"]) if isinstance(record, dict) else record
    if not isinstance(messages, list):
        found = type(messages).__name__
        raise _Bad("wrong_type", f"field {fields['messages']!r} is {found}, expected a list")
    parsed = tuple(_message(item, i, fields) for i, item in enumerate(messages))
    if not any(m.role == "assistant" for m in parsed):
        raise _Bad("no_assistant_turn", "no assistant message to learn from")
    return Chat(parsed)


def _is_chat(record: Any, fields: Mapping[str, str]) -> bool:
    return isinstance(record, list) or (isinstance(record, dict) and fields["messages"] in record)


def parse_record(
    index: int, record: Any, fields: Mapping[str, str], fmt: str = "auto"
) -> Record | Rejection:
    """One raw record as an Instruction or a Chat, or the Rejection saying why not."""
    if isinstance(record, Rejection):
        return record
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    try:
        if fmt == "chat" or (fmt == "auto" and _is_chat(record, fields)):
            return _chat(record, fields)
        return _instruction(record, fields)
    except _Bad as e:
        return Rejection(index, e.reason, e.detail, record)
