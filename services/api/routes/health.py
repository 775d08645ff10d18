"""/api/v1/health: liveness (the process answers) and readiness (the store answers).

Readiness gates on the store alone: every read, and every submission (which queues until Ray
takes it), needs only the database. Ray's health is reported beside it (``checks.ray``), never
gating, so that when Ray is down the API goes on answering reads rather than every replica
leaving the Service at once. ``scheduler`` says whether this replica runs the scheduler
(``leader``) or stands by (``standby``; services/leader.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import text

from services.api.deps import RayDep, SessionDep
from services.redact import redact

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    responses={
        503: {
            "description": "the store does not answer; `checks` says why",
            "content": {"application/json": {"schema": {"type": "object"}}},  # as 200's
        }
    },
)
def ready(
    session: SessionDep, ray: RayDep, request: Request, response: Response
) -> dict[str, object]:
    checks: dict[str, object] = {}
    try:
        session.execute(text("SELECT 1"))
        checks["store"] = "ok"
    except Exception as e:  # the driver's message can quote the URL: never show its password
        checks["store"] = redact(f"error: {type(e).__name__}: {e}")
    checks["ray"] = "ok" if ray.healthy() else redact(f"unreachable at {ray.dashboard_url}")
    leadership = getattr(request.app.state, "leadership", None)
    checks["scheduler"] = "leader" if leadership is None or leadership.is_leader else "standby"
    ok = checks["store"] == "ok"
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"status": "ok" if ok else "unavailable", "checks": checks}
