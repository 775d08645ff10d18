"""The control plane's pure ASGI middlewares, driven by raw ASGI messages: a streamed body
reaches the client chunk by chunk (nothing buffers it), a chunked upload over the limit is a 413
that still carries a request id, and request latency is recorded with the route and status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from prometheus_client import CollectorRegistry, Histogram
from starlette.types import Message

from services.api.limits import limit_request_size
from services.api.observability import RequestTiming
from services.api.request_id import add_request_ids


def _app(release: asyncio.Event, registry: CollectorRegistry) -> FastAPI:
    app = FastAPI()

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first"
            await release.wait()  # only set once the client has seen the first chunk
            yield b"second"

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    latency = Histogram("t_seconds", "t", ["method", "route", "status"], registry=registry)
    app.add_middleware(RequestTiming, latency=latency)
    limit_request_size(app, 10)
    add_request_ids(app)
    return app


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, object]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1234),
        "root_path": "",
    }


async def _call(app: FastAPI, scope: dict[str, object], body: list[bytes]) -> list[Message]:
    sent: list[Message] = []
    incoming = [
        {"type": "http.request", "body": b, "more_body": i < len(body) - 1}
        for i, b in enumerate(body or [b""])
    ]

    async def receive() -> Message:
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    return sent


def test_a_stream_is_not_buffered_and_carries_a_request_id() -> None:
    async def run() -> None:
        release = asyncio.Event()
        registry = CollectorRegistry()
        app = _app(release, registry)
        seen: list[Message] = []

        async def send(message: Message) -> None:
            seen.append(message)
            if message.get("body") == b"first":
                release.set()  # a buffering middleware would never pass this chunk on alone

        async def receive() -> Message:
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        scope = _scope("GET", "/stream", [(b"x-request-id", b"abc-1")])
        await asyncio.wait_for(app(scope, receive, send), timeout=5)
        start = seen[0]
        assert start["status"] == 200 and (b"x-request-id", b"abc-1") in start["headers"]
        assert [m.get("body") for m in seen[1:] if m.get("body")] == [b"first", b"second"]
        assert registry.get_sample_value(
            "t_seconds_count", {"method": "GET", "route": "/stream", "status": "200"}
        )

    asyncio.run(run())


def test_a_chunked_body_over_the_limit_is_413_and_under_it_reaches_the_route() -> None:
    async def run() -> None:
        app = _app(asyncio.Event(), CollectorRegistry())
        over = await _call(app, _scope("POST", "/echo", []), [b"123456", b"789012"])
        assert over[0]["status"] == 413
        assert any(k == b"x-request-id" for k, _ in over[0]["headers"])
        assert b"request body over 10 bytes" in over[1]["body"]
        under = await _call(app, _scope("POST", "/echo", []), [b"1234", b"5678"])
        assert under[0]["status"] == 200 and under[1]["body"] == b'{"bytes":8}'
        declared = _scope("POST", "/echo", [(b"content-length", b"11")])
        too_big = await _call(app, declared, [b"x" * 11])
        assert too_big[0]["status"] == 413 and b"artifact store" in too_big[1]["body"]

    asyncio.run(run())
