"""/api/v1/audit: the audit log, newest first, for admins only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from services.api.deps import SessionDep
from services.api.schemas import UtcTimestamp
from services.api.validation import request_error
from services.auth import AdminDep
from services.store import audit

router = APIRouter(prefix="/audit", tags=["audit"])


class AuditEventPublic(BaseModel):
    id: int
    time: datetime
    key_id: str | None
    team: str | None
    role: str | None
    action: str
    resource_type: str
    resource_id: str | None
    request_id: str | None
    status_code: int
    details: dict[str, Any]


class AuditPage(BaseModel):
    data: list[AuditEventPublic]
    count: int
    next_cursor: str | None


@router.get(
    "",
    responses={
        401: {"description": "no valid API key, or the key expired"},
        403: {"description": "admins only"},
        429: {"description": "this key's request rate limit: retry after Retry-After seconds"},
    },
)
def list_audit(
    session: SessionDep,
    _: AdminDep,
    action: Annotated[str | None, Query(max_length=64, description="e.g. job.submit")] = None,
    team: Annotated[str | None, Query(max_length=100, description="the acting key's team")] = None,
    key_id: Annotated[str | None, Query(max_length=32, description="the acting key")] = None,
    resource_type: Annotated[str | None, Query(max_length=32)] = None,
    resource_id: Annotated[str | None, Query(max_length=200)] = None,
    since: Annotated[UtcTimestamp | None, Query(description="from this time (RFC 3339)")] = None,
    until: Annotated[UtcTimestamp | None, Query(description="before this time (RFC 3339)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> AuditPage:
    if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) < 19):
        raise request_error(("query", "cursor"), "not a cursor from this API: pass next_cursor")
    rows = audit.list_events(
        session,
        action=action,
        team=team,
        key_id=key_id,
        resource_type=resource_type,
        resource_id=resource_id,
        since=since,
        until=until,
        before_id=int(cursor) if cursor else None,
        limit=limit + 1,
    )
    page = rows[:limit]
    events = [
        AuditEventPublic.model_validate(
            {f: getattr(e, f) for f in AuditEventPublic.model_fields}
            | {"time": audit.as_utc(e.time)}
        )
        for e in page
    ]
    next_cursor = str(page[-1].id) if len(rows) > limit else None
    return AuditPage(data=events, count=len(events), next_cursor=next_cursor)
