"""Writing the audit log from a route: who (the key), which request, what, to which resource.

The event joins the route's own transaction, so it is stored exactly when the change is. Details
pass through :func:`safe_details`: small, and never a value under a secret-looking name. A route
with ``dependencies=[refusals(...)]`` also records the attempts it refuses (403, 404, 409, 422…)
with their status code, in a transaction of their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.orm import Session

from services.api.request_id import request_id_of
from services.auth import Principal, principal
from services.redact import redact
from services.store import audit

_SECRET = re.compile(r"key|token|secret|password|credential|authorization", re.IGNORECASE)
_MAX_TEXT = 500


def safe_details(details: dict[str, Any]) -> dict[str, Any]:
    """Only short scalars, nothing under a secret-looking name, URLs' passwords masked."""
    kept: dict[str, Any] = {}
    for name, value in details.items():
        if _SECRET.search(name) and not name.endswith("_id"):
            continue
        if isinstance(value, str):
            value = redact(value)[:_MAX_TEXT]
        elif not isinstance(value, int | float | bool | None):
            value = redact(str(value))[:_MAX_TEXT]
        kept[name] = value
    return kept


def audit_event(
    session: Session,
    request: Request,
    who: Principal,
    action: str,
    resource_type: str,
    resource_id: str | None,
    *,
    status_code: int = 200,
    **details: Any,
) -> None:
    audit.record(
        session,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        key_id=who.key_id,
        team=who.team,
        role=who.role.value,
        request_id=request_id_of(request),
        status_code=status_code,
        details=safe_details(details),
    )


def refusals(action: str, resource_type: str, id_param: str | None = None) -> Any:
    """A route dependency that records the route's refusals of ``action`` (a 4xx it raises)."""

    def record_refusal(
        request: Request, who: Annotated[Principal, Depends(principal)]
    ) -> Iterator[None]:
        try:
            yield
        except (HTTPException, RequestValidationError) as e:
            code = e.status_code if isinstance(e, HTTPException) else 422
            if 400 <= code < 500 and code != 429:
                detail = e.detail if isinstance(e, HTTPException) else "invalid request"
                with request.app.state.sessions() as session:
                    resource = request.path_params.get(id_param) if id_param else None
                    audit_event(
                        session, request, who, action, resource_type, resource,
                        status_code=code, refused=str(detail),
                    )  # fmt: skip
                    session.commit()
            raise

    return Depends(record_refusal)
