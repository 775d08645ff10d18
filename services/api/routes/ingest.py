"""Metric points sent by running jobs, authenticated by the job's own token (not an API key).

A job token is created at submission, passed to the Ray job in its environment, stored hashed,
valid for that one job only, and dropped when the job ends.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request, status

from services.api.deps import SessionDep
from services.api.schemas import MetricsIngest
from services.scheduler import hash_token
from services.store import crud

router = APIRouter(prefix="/jobs", tags=["metrics"])


@router.post("/{job_id}/metrics", status_code=status.HTTP_202_ACCEPTED)
def ingest_metrics(
    job_id: str,
    request: Request,
    body: MetricsIngest,
    session: SessionDep,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, int]:
    job = crud.get_job(session, job_id=job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    token = (authorization or "").removeprefix("Bearer ").strip()
    if (
        not token
        or not job.token_hash
        or not hmac.compare_digest(hash_token(token), job.token_hash)
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid job token for this job is required (Authorization: Bearer)",
        )
    n = crud.add_metrics(session, job_id=job_id, records=[r.model_dump() for r in body.records])
    session.commit()
    request.app.state.ingested_points.inc(n)
    return {"accepted": n}
