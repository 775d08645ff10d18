"""/api/v1/settings: the control plane's effective configuration, for admins, secrets masked."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from services.auth import AdminDep

router = APIRouter(prefix="/settings", tags=["settings"])


@router.get("")
def show_settings(request: Request, _: AdminDep) -> dict[str, Any]:
    """Passwords in the database URL (and any other URL) are shown as ``***``."""
    public: dict[str, Any] = request.app.state.settings.public()
    return public
