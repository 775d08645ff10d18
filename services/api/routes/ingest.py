"""Metric points sent by running jobs, authenticated by the job's own token (not an API key).

A job token is created at submission, passed to the Ray job in its environment, stored hashed,
valid for that one job only, and dropped when the job ends.
"""

from __future__ import annotations

import hmac
import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from services.api.deps import SessionsDep
from services.api.schemas import MetricsIngest
from services.scheduler import hash_token
from services.store import crud

router = APIRouter(prefix="/jobs", tags=["metrics"])
job_token = HTTPBearer(
    scheme_name="JobToken",
    auto_error=False,
    description="Authorization: Bearer <the job's token, from LLMFORGE_JOB_TOKEN>",
)


@router.post("/{job_id}/metrics", status_code=status.HTTP_202_ACCEPTED)
async def ingest_metrics(
    job_id: str,
    request: Request,
    body: MetricsIngest,
    sessions: SessionsDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(job_token)],
) -> dict[str, int | str]:
    # ``async``, with the store work in one worker thread: a plain ``def`` route and its
    # session dependency cost three thread-pool hops a batch.
    token = bearer.credentials.strip() if bearer else ""
    # NaN or infinite values (a diverged loss) cannot be stored on every store nor sent back as
    # JSON; they are counted and named in the answer (the job's metrics.jsonl keeps them all).
    finite = [r.model_dump() for r in body.records if math.isfinite(r.value + r.time)]
    n = await run_in_threadpool(_store, sessions, job_id, token, finite)
    request.app.state.ingested_points.inc(n)
    skipped = len(body.records) - n
    answer: dict[str, int | str] = {"accepted": n, "skipped": skipped}
    if skipped:
        answer["skipped_reason"] = "value or time is NaN or infinite"
    return answer


def _store(
    sessions: sessionmaker[Session], job_id: str, token: str, records: list[dict[str, Any]]
) -> int:
    with sessions() as session:
        job = crud.get_job(session, job_id=job_id)
        if job is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
        if (
            not token
            or not job.token_hash
            or not hmac.compare_digest(hash_token(token), job.token_hash)
        ):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "a valid job token for this job is required (Authorization: Bearer)",
            )
        n = crud.add_metrics(session, job_id=job_id, records=records)
        session.commit()
    return n
