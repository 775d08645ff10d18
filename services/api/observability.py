"""Prometheus ``/metrics`` of the control plane itself: jobs by kind and state, requests, ingest.

Request latency is timed by a pure ASGI middleware (no response buffering): from the request's
arrival to the end of its answer, a stream's whole length included."""

from __future__ import annotations

import time
from collections.abc import Iterator

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.store.models import Job


class _JobsCollector(Collector):
    """Counts jobs at scrape time, so the figure is the store's truth, not a process's memory."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("llmforge_jobs", "Jobs in the store", labels=["kind", "state"])
        sessions: sessionmaker[Session] | None = getattr(self.app.state, "sessions", None)
        if sessions is not None:
            with sessions() as session:
                query = select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
                for kind, state, n in session.execute(query):
                    gauge.add_metric([kind, state], n)
        yield gauge


class RequestTiming:
    def __init__(self, app: ASGIApp, latency: Histogram) -> None:
        self.app = app
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before any answer is a server error

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")  # the router sets it
            self.latency.labels(scope["method"], route, str(status)).observe(
                time.perf_counter() - started
            )


def instrument(app: FastAPI) -> None:
    registry = CollectorRegistry()
    registry.register(_JobsCollector(app))
    latency = Histogram(
        "llmforge_http_request_seconds",
        "Request latency",
        ["method", "route", "status"],
        registry=registry,
    )
    app.state.ingested_points = Counter(
        "llmforge_metric_points_ingested", "Metric points ingested from jobs", registry=registry
    )

    app.add_middleware(RequestTiming, latency=latency)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
