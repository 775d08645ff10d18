"""Which control-plane process runs the scheduler: exactly one per store.

Several control-plane processes (replicas behind one Service) may share one PostgreSQL database.
Each serves the API; only the *leader* runs the scheduler (polling Ray, retries, submissions).
Leadership is a PostgreSQL session-level advisory lock, ``pg_try_advisory_lock``, taken on a
connection of its own that the leader holds for as long as it leads. When the leader's process
dies its connection closes and PostgreSQL releases the lock at once; a standby, which tries the
lock every ``retry_s``, takes over within about that long. A leader whose machine vanishes
without closing the connection is noticed by the server's TCP keepalives, set short on the lock's
session (``tcp_keepalives_*``), so the lock is free again within about 15 s.

Every check (``lead()``) pings the lock's connection; a leader that cannot reach the database any
more stops leading at once, before the server has released the lock to another. On top of that,
the scheduler's writes are safe against a second scheduler anyway (``services.store.queue``:
a job is claimed with ``SELECT … FOR UPDATE SKIP LOCKED`` and a team's slots are counted under a
transaction-scoped advisory lock of that team), so a brief overlap can cost neither a slot nor a
double start.

SQLite is one machine's store: there the single process is the leader.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool

log = logging.getLogger("llmforge.leader")

# The advisory lock's key is two numbers: this one ("lfld"), and the hash of the schema the store
# lives in, so that stores in two schemas of one database (tests do this) each have a leader.
LEADER_LOCK_SPACE = int.from_bytes(b"lfld", "big")
SCHEMA_HASH = "hashtext(current_schema())"
# The keepalives of the lock's session: the server drops a silent leader after about
# idle + interval * count seconds.
KEEPALIVE_SETTINGS = {
    "tcp_keepalives_idle": 5,
    "tcp_keepalives_interval": 2,
    "tcp_keepalives_count": 3,
}


def identity() -> str:
    """This process, as the leader's row in ``pg_stat_activity`` names it."""
    return f"llmforge-scheduler {socket.gethostname()} pid {os.getpid()}"


class Leadership:
    """``lead()``: whether this process is the leader now (taking the lock when it is free)."""

    def __init__(self, engine: Engine, *, space: int = LEADER_LOCK_SPACE, retry_s: float = 1.0):
        self.url = engine.url
        self.space = space
        self.retry_s = retry_s
        self.postgres = engine.dialect.name == "postgresql"
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._tried = 0.0
        self._mutex = threading.Lock()
        self.since: float | None = None if self.postgres else time.time()
        self.on_change: Callable[[bool], None] | None = None

    @property
    def is_leader(self) -> bool:
        """What the last ``lead()`` found (no database round trip)."""
        return not self.postgres or self._conn is not None

    def lead(self) -> bool:
        if not self.postgres:
            return True
        with self._mutex:
            if self._conn is not None:
                if self._alive(self._conn):
                    return True
                self._lose("the lock's connection to the database failed")
            now = time.monotonic()
            if now - self._tried < self.retry_s:
                return False
            self._tried = now
            return self._try()

    def _try(self) -> bool:
        if self._engine is None:
            # Its own engine without a pool: the lock's connection is never handed to anyone else
            # and is closed, not returned, when leadership ends.
            self._engine = create_engine(
                self.url,
                poolclass=NullPool,
                connect_args={
                    "connect_timeout": 5,
                    "application_name": identity()[:63],
                    "keepalives": 1,
                    "keepalives_idle": 5,
                    "keepalives_interval": 2,
                    "keepalives_count": 3,
                },
            )
        conn: Connection | None = None
        try:
            conn = self._engine.connect()
            for name, value in KEEPALIVE_SETTINGS.items():
                conn.execute(text(f"SET {name} = {int(value)}"))
            query = text(f"SELECT pg_try_advisory_lock(:space, {SCHEMA_HASH})")
            got = bool(conn.execute(query, {"space": self.space}).scalar())
            conn.commit()  # the lock is the session's, not the transaction's
        except Exception as e:
            log.warning("could not try the scheduler's leader lock: %s", type(e).__name__)
            if conn is not None:
                conn.invalidate()
                conn.close()
            return False
        if not got:
            conn.close()
            return False
        self._conn = conn
        self.since = time.time()
        log.warning("this process (%s) now runs the scheduler", identity())
        if self.on_change:
            self.on_change(True)
        return True

    @staticmethod
    def _alive(conn: Connection) -> bool:
        try:
            conn.execute(text("SELECT 1"))
            conn.commit()
        except Exception:
            return False
        return True

    def _lose(self, why: str) -> None:
        conn, self._conn, self.since = self._conn, None, None
        log.error("this process no longer runs the scheduler: %s", why)
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except Exception:
                pass
        if self.on_change:
            self.on_change(False)

    def release(self) -> None:
        """Give the lock back (a clean shutdown): a standby takes over at its next try."""
        with self._mutex:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    query = text(f"SELECT pg_advisory_unlock(:space, {SCHEMA_HASH})")
                    conn.execute(query, {"space": self.space})
                    conn.commit()
                    conn.close()
                except Exception:
                    conn.invalidate()
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


def holder(engine: Engine, space: int = LEADER_LOCK_SPACE) -> str | None:
    """The ``application_name`` of the session that holds the leader lock (PostgreSQL), if any."""
    if engine.dialect.name != "postgresql":
        return None
    # A two-number advisory key shows in pg_locks as classid, objid (as unsigned), objsubid 2.
    query = text(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid::bigint = :space "
        f"AND l.objid::bigint = ({SCHEMA_HASH}::bigint & 4294967295)"
    )
    with engine.connect() as conn:
        row = conn.execute(query, {"space": space}).first()
    return str(row[0]) if row else None
