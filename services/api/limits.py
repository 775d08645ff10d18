"""Request size limit: a body over ``max_request_bytes`` is a 413 before any route reads it.

A pure ASGI middleware: a declared ``Content-Length`` is checked from the headers alone, and the
body then streams to the route unbuffered; only a chunked body (no length) is read here first,
up to the limit, and replayed."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import error_response

_BODY_METHODS = ("POST", "PUT", "PATCH")


class RequestSizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                await self._refuse(scope, receive, send, hint=True)
                return
            await self.app(scope, receive, send)
            return
        if scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        messages = await self._read_chunked(receive)
        if messages is None:
            await self._refuse(scope, receive, send, hint=False)
            return
        await self.app(scope, _replay(messages, receive), send)

    async def _read_chunked(self, receive: Receive) -> list[Message] | None:
        """The body's messages, or None once they pass the limit (counting what arrives)."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages  # a disconnect: the route sees it too
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return None
            if not message.get("more_body", False):
                return messages

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, *, hint: bool) -> None:
        detail = f"request body over {self.max_bytes} bytes"
        if hint:
            detail += (
                "; send metrics in smaller batches, or put large inputs in the artifact store "
                "and pass their URI"
            )
        await error_response(413, detail)(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()  # after the body: a disconnect, when the client leaves

    return replayed


def limit_request_size(app: FastAPI, max_bytes: int) -> None:
    app.add_middleware(RequestSizeLimit, max_bytes=max_bytes)
