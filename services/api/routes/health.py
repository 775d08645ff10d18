"""/api/v1/health: liveness (the process answers) and readiness (store and Ray answer)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import text

from services.api.deps import RayDep, SessionDep
from services.redact import redact

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    responses={503: {"description": "the store or Ray does not answer; `checks` says which"}},
)
def ready(session: SessionDep, ray: RayDep, response: Response) -> dict[str, object]:
    checks: dict[str, object] = {}
    try:
        session.execute(text("SELECT 1"))
        checks["store"] = "ok"
    except Exception as e:  # the driver's message can quote the URL: never show its password
        checks["store"] = redact(f"error: {type(e).__name__}: {e}")
    checks["ray"] = "ok" if ray.healthy() else redact(f"unreachable at {ray.dashboard_url}")
    ok = all(v == "ok" for v in checks.values())
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"status": "ok" if ok else "unavailable", "checks": checks}
