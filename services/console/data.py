"""JSON the console needs beyond the REST API: who the signed-in key is, and a sample of the
documents a curate job rejected per reason (Parquet, which the browser cannot read). Both are
behind the API's own key check, as ``/api/v1`` is."""

from __future__ import annotations

from typing import Annotated, Any

import pyarrow.parquet as pq
from fastapi import APIRouter, HTTPException, Query, Request, status

from llm import storage
from services.api.deps import SessionDep
from services.api.routes.jobs import job_or_404
from services.auth import PrincipalDep
from services.redact import redact

router = APIRouter(prefix="/console/api", tags=["console"], include_in_schema=False)
SAMPLE_CHARS = 400  # enough of a document to see why it went


@router.get("/whoami")
def whoami(request: Request, who: PrincipalDep) -> dict[str, Any]:
    """The key's role and team, for the console to show only the controls the key may use, and
    where users' browsers reach the Ray dashboard (``LLMFORGE_RAY_DASHBOARD_PUBLIC_URL``), if
    not where the control plane does (the API's job links point there already)."""
    return {
        "key_id": who.key_id,
        "role": who.role.value,
        "team": who.team,
        "auth": bool(request.app.state.settings.auth),
        "ray_dashboard": {
            "url": request.app.state.ray.dashboard_url,
            "external": request.app.state.settings.ray_dashboard_public_url,
        },
    }


def _rejected_files(output: str) -> list[str]:
    if not output:
        return []
    found = storage.list_files(storage.join(output, "rejected"))
    return [e.uri for e in found if e.uri.endswith(".parquet")]


@router.get("/jobs/{job_id}/rejected")
def rejected_samples(
    job_id: str,
    session: SessionDep,
    who: PrincipalDep,
    per_reason: Annotated[int, Query(ge=1, le=20)] = 3,
) -> dict[str, Any]:
    """Up to ``per_reason`` rejected documents for each reason of a curate job's output."""
    job = job_or_404(session, job_id, who)
    if job.kind != "curate":
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"job {job_id} is a {job.kind} job: only curate jobs reject"
        )
    samples: dict[str, list[dict[str, str]]] = {}
    try:
        for uri in _rejected_files(str(job.spec.get("output", ""))):
            with storage.open_input_file(uri) as f:
                table = pq.read_table(f, columns=["id", "text", "source", "reason"])
            for row in table.to_pylist():
                bucket = samples.setdefault(str(row["reason"]), [])
                if len(bucket) < per_reason:
                    text = str(row["text"] or "")
                    bucket.append(
                        {"id": str(row["id"]), "source": str(row["source"]),
                         "text": text[:SAMPLE_CHARS] + ("…" if len(text) > SAMPLE_CHARS else "")}
                    )  # fmt: skip
    except OSError as e:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, redact(f"cannot read: {e}")) from e
    return {"job_id": job_id, "per_reason": per_reason, "reasons": samples}
