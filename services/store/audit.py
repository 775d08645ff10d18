"""The audit log: one row per change a key made (submit, cancel, delete, keys, limits)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.store.models import AuditEvent


def record(
    session: Session,
    *,
    action: str,
    resource_type: str,
    resource_id: str | None,
    key_id: str | None,
    team: str | None,
    role: str | None,
    request_id: str | None,
    status_code: int,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add the event to the session: it is committed with the change it describes."""
    event = AuditEvent(
        time=datetime.now(UTC),
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        key_id=key_id,
        team=team,
        role=role,
        request_id=request_id,
        status_code=status_code,
        details=details or {},
    )
    session.add(event)
    session.flush()
    return event


def as_utc(time: datetime) -> datetime:
    """SQLite hands back naive datetimes: they are UTC."""
    return time.replace(tzinfo=UTC) if time.tzinfo is None else time.astimezone(UTC)


def list_events(
    session: Session,
    *,
    action: str | None = None,
    team: str | None = None,
    key_id: str | None = None,
    resource_type: str | None = None,
    resource_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[AuditEvent]:
    """Newest first; ``before_id`` continues a previous page."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    for column, value in (
        (AuditEvent.action, action),
        (AuditEvent.team, team),
        (AuditEvent.key_id, key_id),
        (AuditEvent.resource_type, resource_type),
        (AuditEvent.resource_id, resource_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(AuditEvent.time >= as_utc(since))
    if until is not None:
        query = query.where(AuditEvent.time < as_utc(until))
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    return list(session.scalars(query))
