"""Request size limit: a body over ``max_request_bytes`` is a 413 before any route reads it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from services.api.errors import error_response


def limit_request_size(app: FastAPI, max_bytes: int) -> None:
    @app.middleware("http")
    async def _limit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
            return error_response(
                413,
                f"request body over {max_bytes} bytes; send metrics in smaller batches, or put "
                "large inputs in the artifact store and pass their URI",
            )
        if declared is None and request.method in ("POST", "PUT", "PATCH"):
            body = await request.body()  # chunked: count what actually arrives
            if len(body) > max_bytes:
                return error_response(413, f"request body over {max_bytes} bytes")
        return await call_next(request)
