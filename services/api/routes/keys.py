"""/api/v1/keys: admins create, list and revoke API keys; a key's holder (or an admin) rotates it.

A key may expire (``expires_in_days`` or ``expires_at`` at creation) and may have its own request
rate limit. Rotation makes a new key with the same name, role, team and limit, shows it once, and
revokes the old one now or after ``grace_seconds``; a key that expired is rotated by an admin.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Request, status
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select

from services.api.auditing import audit_event, refusals
from services.api.deps import SessionDep
from services.api.schemas import Strict, UtcTimestamp
from services.api.validation import request_error
from services.auth import (
    AdminDep,
    Principal,
    admin_key_file_holds,
    create_key,
    principal,
    revoke,
    rewrite_admin_key_file,
)
from services.store.models import ApiKey, Role, utcnow

router = APIRouter(prefix="/keys", tags=["keys"])
MAX_DAYS = 3650
_KEY_ANSWERS: dict[int | str, dict[str, str]] = {
    401: {"description": "no valid API key, or the key expired"},
    403: {"description": "this key may not do this"},
    429: {"description": "this key's request rate limit: retry after Retry-After seconds"},
}


class KeyCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    role: Role = Role.member
    team: str = Field(default="default", min_length=1, max_length=100, pattern=r"^\w[\w.-]*$")
    expires_in_days: int | None = Field(
        default=None, ge=1, le=MAX_DAYS, description="the key stops working after this many days"
    )
    expires_at: UtcTimestamp | None = Field(
        default=None, description="or at this time (RFC 3339, with its offset)"
    )
    rate_limit_per_min: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="this key's requests a minute (0: none); default LLMFORGE_RATE_LIMIT_PER_MIN",
    )

    @model_validator(mode="after")
    def _one_expiry(self) -> KeyCreate:
        if self.expires_in_days is not None and self.expires_at is not None:
            raise ValueError("give expires_in_days or expires_at, not both")
        return self


class KeyRotate(Strict):
    grace_seconds: int = Field(
        default=0, ge=0, le=7 * 86400, description="the old key keeps working this long"
    )
    expires_in_days: int | None = Field(
        default=None,
        ge=1,
        le=MAX_DAYS,
        description="the new key's lifetime (default: the old key's lifetime, if it had one)",
    )


class KeyPublic(BaseModel):
    id: str
    name: str
    role: str
    team: str
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None
    rate_limit_per_min: int | None


class KeyCreated(KeyPublic):
    key: str = Field(description="shown once: store it now")


class KeyRotated(KeyCreated):
    previous: KeyPublic = Field(description="the old key, revoked at revoked_at")


def _public(key: ApiKey) -> dict[str, object]:
    return {c: getattr(key, c) for c in KeyPublic.model_fields}


def _expiry(body: KeyCreate) -> datetime | None:
    if body.expires_in_days is not None:
        return utcnow() + timedelta(days=body.expires_in_days)
    if body.expires_at is None:
        return None
    when = body.expires_at
    if when <= utcnow():
        raise request_error(("body", "expires_at"), "expires_at must be in the future")
    if when > utcnow() + timedelta(days=MAX_DAYS):
        raise request_error(("body", "expires_at"), f"expires_at is over {MAX_DAYS} days away")
    return when


@router.post("", status_code=status.HTTP_201_CREATED, responses=_KEY_ANSWERS)
def create(body: KeyCreate, session: SessionDep, who: AdminDep, request: Request) -> KeyCreated:
    key, raw = create_key(
        session,
        name=body.name,
        role=body.role,
        team=body.team,
        expires_at=_expiry(body),
        rate_limit_per_min=body.rate_limit_per_min,
    )
    audit_event(
        session, request, who, "key.create", "key", key.id, status_code=201,
        name=body.name, role=body.role.value, owner_team=body.team,
        expires_at=key.expires_at.isoformat() if key.expires_at else None,
    )  # fmt: skip
    session.commit()
    return KeyCreated(**_public(key), key=raw)  # type: ignore[arg-type]


@router.get("", responses=_KEY_ANSWERS)
def list_keys(session: SessionDep, _: AdminDep) -> list[KeyPublic]:
    keys = session.scalars(select(ApiKey).order_by(ApiKey.created_at))
    return [KeyPublic(**_public(k)) for k in keys]  # type: ignore[arg-type]


def _key_or_404(session: SessionDep, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"key {key_id} not found")
    return key


@router.delete(
    "/{key_id}", responses=_KEY_ANSWERS, dependencies=[refusals("key.revoke", "key", "key_id")]
)
def revoke_key(key_id: str, session: SessionDep, who: AdminDep, request: Request) -> KeyPublic:
    key = _key_or_404(session, key_id)
    if key.revoked_at is None or key.revoked_at > utcnow():  # a grace period ends now
        revoke(key)
        audit_event(session, request, who, "key.revoke", "key", key_id, owner_team=key.team)
        session.commit()
    return KeyPublic(**_public(key))  # type: ignore[arg-type]


@router.post(
    "/{key_id}/rotate",
    status_code=status.HTTP_201_CREATED,
    responses=_KEY_ANSWERS,
    dependencies=[refusals("key.rotate", "key", "key_id")],
)
def rotate_key(
    key_id: str,
    session: SessionDep,
    who: Annotated[Principal, Depends(principal)],
    request: Request,
    body: Annotated[KeyRotate | None, Body()] = None,
) -> KeyRotated:
    """A new key like this one (shown once); this one is revoked now or after grace_seconds.
    Admins rotate any key, other roles only the key they call with."""
    body = body or KeyRotate()
    if not who.allowed(Role.admin) and who.key_id != key_id:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "only an admin may rotate another key than this one"
        )
    old = _key_or_404(session, key_id)
    now = utcnow()
    if old.revoked_at is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"key {key_id} is revoked or already being rotated"
        )
    if body.expires_in_days is not None:
        expires_at: datetime | None = now + timedelta(days=body.expires_in_days)
    elif old.expires_at is not None:
        expires_at = now + max(old.expires_at - old.created_at, timedelta(seconds=1))
    else:
        expires_at = None
    new, raw = create_key(
        session,
        name=old.name,
        role=Role(old.role),
        team=old.team,
        expires_at=expires_at,
        rate_limit_per_min=old.rate_limit_per_min,
    )
    revoke(old, now + timedelta(seconds=body.grace_seconds))
    home = request.app.state.settings.home
    in_key_file = admin_key_file_holds(home, old.key_hash)
    audit_event(
        session, request, who, "key.rotate", "key", key_id, status_code=201,
        new_key_id=new.id, grace_seconds=body.grace_seconds, owner_team=old.team,
        bootstrap_file_rewritten=in_key_file,
    )  # fmt: skip
    session.commit()
    if in_key_file:  # the first start's key: the local CLI reads it from there
        rewrite_admin_key_file(home, raw)
    return KeyRotated(
        **_public(new),  # type: ignore[arg-type]
        key=raw,
        previous=KeyPublic(**_public(old)),  # type: ignore[arg-type]
    )
