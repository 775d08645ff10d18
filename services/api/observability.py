"""Prometheus ``/metrics`` of the control plane itself: jobs by kind and state, requests, ingest."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

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

    @app.middleware("http")
    async def _time(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        latency.labels(request.method, route, str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
