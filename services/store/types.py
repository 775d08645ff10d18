"""Column types every store shares: timestamps are timezone-aware UTC, in both databases.

PostgreSQL holds them as ``timestamp with time zone``. SQLite has no date type: SQLAlchemy keeps
a string there, and here that string is RFC 3339 with its offset (``2026-12-06T05:16:19.567439
+00:00``), so what the file holds says what it means. Every value is read back aware, in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import TypeDecorator, TypeEngine

# Fixed width and one offset, so SQLite's string order is time order.
SQLITE_FORMAT = (
    "%(year)04d-%(month)02d-%(day)02dT%(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d+00:00"
)


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime: a naive one is taken to be UTC already (as stores before
    migration 0008 held them)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sqlite.DATETIME(storage_format=SQLITE_FORMAT))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)
