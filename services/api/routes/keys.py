"""/api/v1/keys: admins create, list and revoke API keys."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from services.api.deps import SessionDep
from services.api.schemas import Strict
from services.auth import AdminDep, create_key, revoke
from services.store.models import ApiKey, Role

router = APIRouter(prefix="/keys", tags=["keys"])


class KeyCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    role: Role = Role.member
    team: str = Field(default="default", min_length=1, max_length=100, pattern=r"^\w[\w.-]*$")


class KeyPublic(BaseModel):
    id: str
    name: str
    role: str
    team: str
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyPublic):
    key: str = Field(description="shown once: store it now")


def _public(key: ApiKey) -> dict[str, object]:
    return {c: getattr(key, c) for c in KeyPublic.model_fields}


@router.post("", status_code=status.HTTP_201_CREATED)
def create(body: KeyCreate, session: SessionDep, _: AdminDep) -> KeyCreated:
    key, raw = create_key(session, name=body.name, role=body.role, team=body.team)
    session.commit()
    return KeyCreated(**_public(key), key=raw)  # type: ignore[arg-type]


@router.get("")
def list_keys(session: SessionDep, _: AdminDep) -> list[KeyPublic]:
    keys = session.scalars(select(ApiKey).order_by(ApiKey.created_at))
    return [KeyPublic(**_public(k)) for k in keys]  # type: ignore[arg-type]


@router.delete("/{key_id}")
def revoke_key(key_id: str, session: SessionDep, _: AdminDep) -> KeyPublic:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"key {key_id} not found")
    if key.revoked_at is None:
        revoke(key)
        session.commit()
    return KeyPublic(**_public(key))  # type: ignore[arg-type]
