"""API keys and roles: who may read, submit, cancel, and manage keys.

Keys are random, shown once, stored as SHA-256 hashes. Roles rank read_only < member < admin:
reads need read_only, writes need member, key management needs admin. A user sees the jobs of
their own team; cancelling another user's job needs admin. The first start of a control plane
with no keys creates an admin key in ``LLMFORGE_HOME/admin.key`` (mode 0600), for the CLI.
A key may expire (401 saying so), be rotated (a new key, the old one revoked at once or after a
grace period) and is rate limited per key (429 with ``Retry-After``; ``services.api.ratelimit``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from services.api.request_id import request_id_of
from services.store import audit
from services.store.models import DEFAULT_TEAM, ApiKey, Role, utcnow

log = logging.getLogger("llmforge.auth")
ADMIN_KEY_FILE = "admin.key"


@dataclass(frozen=True)
class Principal:
    key_id: str | None
    role: Role
    team: str

    def allowed(self, role: Role) -> bool:
        return self.role.rank >= role.rank


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    session: Session,
    *,
    name: str,
    role: Role,
    team: str,
    expires_at: datetime | None = None,
    rate_limit_per_min: int | None = None,
) -> tuple[ApiKey, str]:
    """A new key (``expires_at``: naive UTC, or None for a key that does not expire)."""
    raw = f"lf_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        id=secrets.token_hex(6),
        name=name,
        key_hash=hash_key(raw),
        role=role.value,
        team=team,
        expires_at=expires_at,
        rate_limit_per_min=rate_limit_per_min,
    )
    session.add(key)
    session.flush()
    return key, raw


def bootstrap_admin_key(session: Session, home: Path) -> Path | None:
    """On a store without keys, create an admin key and write it where only this user reads."""
    if session.scalar(select(func.count()).select_from(ApiKey)):
        return None
    _, raw = create_key(session, name="bootstrap admin", role=Role.admin, team=DEFAULT_TEAM)
    session.commit()
    path = home / ADMIN_KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(raw + "\n")
    log.warning("created the first admin API key in %s", path)
    return path


PROVIDED_KEY_MIN_CHARS = 32


def provide_admin_key(session: Session, raw: str) -> bool:
    """Make ``raw`` (a key a deployment keeps in a Secret) an admin key of the store, unless the
    store knows it already (a revoked one stays revoked). True when it was added. Idempotent, so
    every start and every replica may call it: the key survives pod restarts and is never
    written anywhere but the store, as a hash."""
    raw = raw.strip()
    if len(raw) < PROVIDED_KEY_MIN_CHARS:
        raise ValueError(
            f"LLMFORGE_BOOTSTRAP_ADMIN_KEY must be at least {PROVIDED_KEY_MIN_CHARS} characters "
            "(e.g. `lf_` and `openssl rand -hex 32`)"
        )
    digest = hash_key(raw)
    if session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.key_hash == digest)):
        return False
    key = ApiKey(
        id=secrets.token_hex(6),
        name="bootstrap admin (provided)",
        key_hash=digest,
        role=Role.admin.value,
        team=DEFAULT_TEAM,
    )
    session.add(key)
    try:
        session.commit()
    except SQLAlchemyError:  # another replica added it at the same moment
        session.rollback()
        return False
    log.warning("added the provided bootstrap admin key (LLMFORGE_BOOTSTRAP_ADMIN_KEY)")
    return True


def admin_key_file_holds(home: Path, key_hash: str) -> bool:
    """Whether ``home``'s admin.key (the first start's admin key) is the key with this hash."""
    try:
        current = (home / ADMIN_KEY_FILE).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, PermissionError, UnicodeDecodeError):
        return False
    return hmac.compare_digest(hash_key(current), key_hash)


def rewrite_admin_key_file(home: Path, raw: str) -> Path:
    """Put a rotated bootstrap key in admin.key, whole or not at all (mode 0600), so the local
    CLI that reads it goes on working once the old key is revoked."""
    path = home / ADMIN_KEY_FILE
    staged = path.with_name(f".{ADMIN_KEY_FILE}.{os.getpid()}.tmp")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(raw + "\n")
    os.replace(staged, path)
    log.warning("rotated the admin key in %s", path)
    return path


def _lookup(session: Session, raw: str) -> ApiKey | None:
    """The key, unless unknown or revoked (a revocation in the future is a rotation's grace
    period); an expired key is returned, for the caller to say so."""
    key = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(raw))).first()
    if key is None or (key.revoked_at is not None and key.revoked_at <= utcnow()):
        return None
    # The hash lookup already matched; compare again in constant time for good measure.
    return key if hmac.compare_digest(key.key_hash, hash_key(raw)) else None


# Declared as OpenAPI security schemes (not as header parameters), so the schema says how to
# authenticate and clients and test generators do not treat the key as ordinary input.
bearer_key = HTTPBearer(
    scheme_name="ApiKeyBearer", auto_error=False, description="Authorization: Bearer <API key>"
)
header_key = APIKeyHeader(name="X-API-Key", scheme_name="ApiKeyHeader", auto_error=False)


async def principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_key)],
    x_api_key: Annotated[str | None, Depends(header_key)],
) -> Principal:
    """``async``, with the store lookup in a worker thread only when there is a key to look up:
    a plain ``def`` dependency costs a thread-pool hop on every request, which under load is
    a wait for the GIL and the event loop each way."""
    if not request.app.state.settings.auth:
        return Principal(key_id=None, role=Role.admin, team=DEFAULT_TEAM)
    raw = x_api_key or (bearer.credentials.strip() if bearer else "")
    return await run_in_threadpool(_principal_of_key, request, raw)


def _principal_of_key(request: Request, raw: str) -> Principal:
    with request.app.state.sessions() as session:
        key = _lookup(session, raw) if raw else None
    if key is None:
        _record_refusal(request, 401, "auth.refused", "no valid API key", None)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid API key is required: 'Authorization: Bearer <key>' or "
            "'X-API-Key: <key>' (admins create keys with `llmforge keys create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if key.expires_at is not None and key.expires_at <= utcnow():
        _record_refusal(request, 401, "auth.refused", "the key expired", key)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            f"this API key ({key.id}) expired at {key.expires_at.isoformat()}: ask an admin "
            "for a new one (`llmforge keys create` or `llmforge keys rotate`)",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    wait = request.app.state.rate_limiter.wait_s(key.id, key.rate_limit_per_min)
    if wait:
        _record_refusal(request, 429, "rate_limit.refused", f"retry in {wait} s", key)
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"rate limit of this API key reached: retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    return Principal(key_id=key.id, role=Role(key.role), team=key.team)


def _record_refusal(
    request: Request, code: int, action: str, reason: str, by: ApiKey | Principal | None
) -> None:
    """An audit row for a request refused before any route ran (no key, an expired key, a
    rate limit, a role too low): throttled per caller (``AuditThrottle``), in its own
    transaction. A failing store must not turn the refusal into a 500: it is logged."""
    host = request.client.host if request.client else None
    key_id = by.key_id if isinstance(by, Principal) else by.id if by is not None else None
    left_out = request.app.state.audit_throttle.admit(action, key_id or f"client:{host}")
    if left_out is None:
        return
    details: dict[str, object] = {"reason": reason, "client": host}
    if left_out:
        details["left_out_before"] = left_out
    try:
        with request.app.state.sessions() as session:
            audit.record(
                session,
                action=action,
                resource_type="request",
                resource_id=f"{request.method} {request.url.path}"[:200],
                key_id=key_id,
                team=by.team if by is not None else None,
                role=(by.role.value if isinstance(by, Principal) else by.role) if by else None,
                request_id=request_id_of(request),
                status_code=code,
                details=details,
            )
            session.commit()
    except SQLAlchemyError:
        log.exception("could not record a refused request in the audit log")


async def authorize(request: Request, who: Annotated[Principal, Depends(principal)]) -> Principal:
    """Reads need read_only, anything else member."""
    needed = Role.read_only if request.method in ("GET", "HEAD") else Role.member
    if not who.allowed(needed):
        await run_in_threadpool(
            _record_refusal, request, 403, "access.refused", f"needs {needed}", who
        )
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"this key's role ({who.role}) may not {request.method} here; "
            f"it needs {needed} or above",
        )
    return who


async def require_admin(
    request: Request, who: Annotated[Principal, Depends(principal)]
) -> Principal:
    if not who.allowed(Role.admin):
        await run_in_threadpool(_record_refusal, request, 403, "access.refused", "needs admin", who)
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"admin role needed (this key: {who.role})")
    return who


def revoke(key: ApiKey, at: datetime | None = None) -> None:
    """Revoke now, or at ``at``: until then the key still works."""
    key.revoked_at = at or utcnow()


PrincipalDep = Annotated[Principal, Depends(authorize)]
AdminDep = Annotated[Principal, Depends(require_admin)]
