"""Schema migrations (Alembic), run by the control plane at start-up and by the tests."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, text

MIGRATIONS = Path(__file__).with_name("migrations")
# Control planes that start at once on one PostgreSQL store (replicas) take turns ("lfmg", and
# the store's schema: stores in two schemas of a database do not wait for each other).
STARTUP_LOCK_SPACE = int.from_bytes(b"lfmg", "big")


def serialize_startup(conn: Connection) -> None:
    """Until ``conn``'s transaction ends, no other control plane migrates or bootstraps this
    PostgreSQL store (a transaction-scoped advisory lock); SQLite has a single writer."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:space, hashtext(current_schema()))"),
            {"space": STARTUP_LOCK_SPACE},
        )


def _config(engine: Engine, connection: object) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.begin() as conn:
        serialize_startup(conn)  # the second replica waits, then finds the schema at head
        command.upgrade(_config(engine, conn), revision)


def downgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.downgrade(_config(engine, conn), revision)
