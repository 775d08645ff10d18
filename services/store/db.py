"""Engine and sessions: SQLite (WAL) on one machine, PostgreSQL by URL on a team cluster."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

from services.store.migrate import upgrade

# 19 digits in a row: an integer that may not fit in 64 bits, which orjson would turn into a
# float without a word (2**70 + 1 would come back as 1.1805916207174113e+21)
_LONG_NUMBER, _LONG_NUMBER_TEXT = re.compile(rb"\d{19}"), re.compile(r"\d{19}")


def json_loads(data: str | bytes | bytearray | memoryview) -> Any:
    """The store's JSON columns (job specs and results, metric tags…) decoded by orjson: a page
    of 50 jobs decodes 100 documents, and the standard library's decoder was 18% of listing them
    (bench/api_load.py). A document with a number of 19 digits or more, and anything orjson
    refuses (NaN in SQLite's text), goes to the standard library, which keeps big integers
    exact."""
    if isinstance(data, memoryview):
        data = bytes(data)
    long = _LONG_NUMBER_TEXT if isinstance(data, str) else _LONG_NUMBER
    if long.search(data) is None:  # type: ignore[arg-type]
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            json_deserializer=json_loads,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            # WAL lets the API read while the scheduler thread writes.
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    else:
        # Sized for the API's worker threads, so concurrent requests do not queue for a connection.
        engine = create_engine(url, pool_size=20, max_overflow=20, json_deserializer=json_loads)
        ping_when_idle(engine)
    upgrade(engine)
    return engine


# A pooled connection idle for longer than this is pinged before it is handed out.
PING_AFTER_IDLE_S = 1.0


def ping_when_idle(engine: Engine) -> None:
    """SQLAlchemy's pessimistic disconnect handling, only for connections that sat in the pool.

    ``pool_pre_ping`` sends a ``SELECT 1`` round trip on every checkout: under load
    (bench/api_load.py, one server process, 50 clients listing jobs) the ping was 18% of the
    server's samples, a second round trip for every read. A connection that went back to the
    pool under ``PING_AFTER_IDLE_S`` ago was just used; one idle for longer (PostgreSQL restarted, a
    proxy or failover dropped it) is pinged, and a dead one is replaced before the request sees
    it (SQLAlchemy's documented checkout-event recipe: DisconnectionError makes the pool retry
    with a new connection). A connection that dies within that second fails its next query, and
    SQLAlchemy then drops every connection of the pool, as it does without a ping."""
    limit = PING_AFTER_IDLE_S

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < limit:
            return  # a new connection, or one just used
        try:
            engine.dialect.do_ping(dbapi)
        except engine.dialect.loaded_dbapi.Error as e:
            raise exc.DisconnectionError(f"a pooled connection idle {limit}s is gone: {e}") from e


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def read_session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for reads only, in autocommit: each query its own snapshot, and no BEGIN nor
    ROLLBACK sent around it (two of a read's four round trips to PostgreSQL). It must not
    write: nothing would hold its writes together."""
    with sessions() as session:
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session
