"""Engine and sessions: SQLite (WAL) on one machine, PostgreSQL by URL on a team cluster."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from services.store.migrate import upgrade


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

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
        engine = create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=20)
    upgrade(engine)
    return engine


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
