"""Store fixtures for the control-plane tests: SQLite, and PostgreSQL (127.0.0.1:5432, database
``test``). Where no PostgreSQL answers (a laptop) its cases skip; under CI (``CI=true``) they must
run. Each PostgreSQL case works in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from services.store.db import make_engine, make_sessionmaker

POSTGRES_URL = os.environ.get(
    "LLMFORGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def postgres_schema_url() -> Iterator[str]:
    """A URL whose connections use a fresh schema; the schema is dropped when resumed."""
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as e:
        admin.dispose()
        if os.environ.get("CI") == "true":
            raise AssertionError(f"PostgreSQL must answer under CI: {e}") from e
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}")
    schema = f"llmforge_test_{secrets.token_hex(4)}"
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        yield from postgres_schema_url()


@pytest.fixture()
def session(database_url: str) -> Iterator[Session]:
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as s:
            yield s
    finally:
        engine.dispose()
