"""A running job's log as NDJSON (``GET /api/v1/jobs/{id}/logs?follow=true``): one JSON object a
line, so a client reads whole lines with their place in the log and learns how the job ended,
rather than guessing from where a ``text/plain`` stream stopped.

Each line of the driver's output is ``{"line": …, "offset": n}`` (``offset``: its 0-based line
number in the log), redacted whole (a secret split between two of Ray's chunks is still found);
the last object is ``{"status": STATE}`` once Ray's tail ends, or ``{"error": …}`` when Ray
stopped answering mid-stream (the HTTP status was sent with the first line).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.ray_client import RayJobs
from services.redact import redact
from services.store.models import JobState

MEDIA_TYPE = "application/x-ndjson"


class LogLine(BaseModel):
    """One line of the job's driver output."""

    model_config = ConfigDict(extra="forbid")  # so that a line matches one of the two only

    line: str = Field(description="the line, without its newline, secrets redacted")
    offset: int = Field(ge=0, description="its 0-based line number in the job's log")


class LogEnd(BaseModel):
    """The stream's last object: how the job ended, or why the stream did."""

    model_config = ConfigDict(extra="forbid")

    status: JobState | None = Field(
        default=None, description="the job's state when its log ended (null with error)"
    )
    error: str | None = Field(default=None, description="why the stream ended early, if it did")


def responses() -> dict[int | str, dict[str, Any]]:
    """The 200's NDJSON body in the OpenAPI document, beside the route's own JSON ``JobLogs``:
    the schema of each line (OpenAPI 3.1 has no per-item schema for a stream yet). LogLine and
    LogEnd are components of their own (``services.api.errors`` adds them)."""
    each = {"oneOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in (LogLine, LogEnd)]}
    return {
        200: {
            "description": "the driver's log as JSON (JobLogs); with follow=true, NDJSON: one "
            "LogLine object a line as the job writes them, then one LogEnd",
            "content": {MEDIA_TYPE: {"schema": each}},
        }
    }


async def follow(ray: RayJobs, submission_id: str) -> AsyncIterator[str]:
    """The NDJSON lines of ``submission_id``'s log until Ray's tail of it ends."""
    offset, pending = 0, ""
    try:
        async for chunk in ray.follow_logs(submission_id):
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                yield _line(line, offset)
                offset += 1
        if pending:
            yield _line(pending, offset)
        state = await asyncio.to_thread(ray.state, submission_id)
        end = LogEnd(status=state)
    except Exception as e:  # Ray went away mid-stream: the status line was sent, say it here
        if pending:
            yield _line(pending, offset)
        end = LogEnd(error=redact(f"the log stream ended early: {type(e).__name__}: {e}"))
    yield end.model_dump_json() + "\n"


def _line(text: str, offset: int) -> str:
    return LogLine(line=redact(text.removesuffix("\r")), offset=offset).model_dump_json() + "\n"
