"""The PostgreSQL store's pool pings a connection only after it sat idle, and replaces a dead one
before a request sees it (services.store.db.ping_when_idle), on the real PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from services.store import db
from tests.services.conftest import POSTGRES_URL, postgres_schema_url


@pytest.fixture()
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.3)
    for url in postgres_schema_url():
        made = db.make_engine(url)
        try:
            yield made
        finally:
            made.dispose()


def _count_pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi: Any) -> bool:
        pings.append(1)
        return ping(dbapi)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_just_used_is_not_pinged_one_left_idle_is(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _count_pings(engine, monkeypatch)
    first = _backend_pid(engine)
    for _ in range(5):  # back to back: the same pooled connection, no ping round trip
        assert _backend_pid(engine) == first
    assert pings == []
    time.sleep(0.4)
    assert _backend_pid(engine) == first
    assert pings == [1]


def test_a_connection_that_died_in_the_pool_is_replaced_before_a_query_sees_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _count_pings(engine, monkeypatch)
    with engine.connect() as a, engine.connect() as b:  # two pooled connections
        pids = {int(c.execute(text("SELECT pg_backend_pid()")).scalar_one()) for c in (a, b)}
    # PostgreSQL ends both while they sit in the pool (a restart, a failover, an idle timeout)
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.connect() as conn:
            for pid in pids:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        admin.dispose()
    time.sleep(0.4)
    assert _backend_pid(engine) not in pids  # no error: the dead ones were pinged and replaced
    assert pings
