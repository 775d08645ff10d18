"""The FastAPI control plane: store, Ray (embedded local head or RAY_ADDRESS), scheduler."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlparse

from anyio import to_thread
from fastapi import APIRouter, Depends, FastAPI

from services import roots
from services.api.errors import install_error_handlers
from services.api.limits import limit_request_size
from services.api.observability import instrument
from services.api.ratelimit import AuditThrottle, RateLimiter
from services.api.request_id import add_request_ids
from services.api.routes import (
    audit,
    campaigns,
    completions,
    config,
    deployments,
    experiments,
    health,
    ingest,
    jobs,
    keys,
    pipelines,
    plan,
    prompts,
    ratings,
    registry,
    teams,
)
from services.auth import authorize, bootstrap_admin_key, provide_admin_key
from services.campaigns import CampaignRunner
from services.console import mount_console
from services.deployments import Deployments
from services.kuberay import KubeRayJobs
from services.leader import Leadership
from services.ray_auth import RayToken, RayTokenError, check_access, ensure_token, find_token
from services.ray_client import RayJobs
from services.ray_head import EMBEDDED_HEAD_ENV, LocalRayHead, free_port, worker_niceness_env
from services.redact import install_log_redaction, mask_url
from services.scheduler import Scheduler
from services.serving import Serving
from services.settings import Settings, get_settings
from services.store.db import make_engine, make_sessionmaker
from services.store.migrate import serialize_startup

log = logging.getLogger("llmforge.api")


def _dashboard_url(settings: Settings) -> str:
    address = settings.ray_address or ""
    if address.startswith("http"):
        return address
    host = address.removeprefix("ray://").split(":")[0]
    return f"http://{host}:{settings.ray_dashboard_port}"


def _connect_ray(settings: Settings) -> tuple[str, RayToken | None, LocalRayHead | None]:
    """(dashboard URL, token, the head we started or None): RAY_ADDRESS's cluster, checked to
    accept our token, or a local head that shares a token with every job it runs."""
    try:
        if settings.ray_address:
            dashboard, token = _dashboard_url(settings), find_token()
            check_access(dashboard, token, address_env="RAY_ADDRESS")
            return dashboard, token, None
        token = ensure_token(settings.home)
    except RayTokenError as e:
        log.error("cannot use Ray: %s", e)
        raise
    head = LocalRayHead(
        gcs_port=settings.ray_gcs_port,
        dashboard_port=settings.ray_dashboard_port,
        num_cpus=settings.ray_num_cpus,
        object_store_mb=settings.ray_object_store_mb,
        log_path=settings.home / "logs" / "ray-head.log",
        token=token,
        env={
            **{k: v for k, v in EMBEDDED_HEAD_ENV.items() if k not in os.environ},
            **worker_niceness_env(settings.ray_worker_niceness),
        },
    )
    log.info("starting a local Ray head (dashboard %s)", head.dashboard_url)
    head.start()
    return head.dashboard_url, token, head


def _serve_proxy(settings: Settings, dashboard: str, embedded: bool) -> tuple[str, int]:
    """(the URL this process reaches Serve's HTTP proxy at, the port the proxy binds)."""
    port = settings.serve_port or (free_port() if embedded else 8000)
    if settings.serve_url:
        return settings.serve_url, port
    host = "127.0.0.1" if embedded else (urlparse(dashboard).hostname or "127.0.0.1")
    return f"http://{host}:{port}", port


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    install_log_redaction(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.home.mkdir(parents=True, exist_ok=True)
        log.info("store: %s", mask_url(settings.resolved_database_url))
        engine = make_engine(settings.resolved_database_url)
        dashboard, token, head = _connect_ray(settings)
        app.state.settings = settings
        app.state.ray_head = head  # the embedded head, or None on a configured cluster
        app.state.sessions = make_sessionmaker(engine)
        try:
            with app.state.sessions() as session:
                roots.check_start(settings, session, token)
        except RuntimeError:
            if head is not None:
                head.stop()
            engine.dispose()
            raise
        if settings.auth:
            with app.state.sessions() as session:
                # Replicas starting at once on an empty store would each make a key.
                serialize_startup(session.connection())
                if settings.bootstrap_admin_key:
                    provide_admin_key(session, settings.bootstrap_admin_key)
                else:
                    bootstrap_admin_key(session, settings.home)
                session.commit()
        gang = KubeRayJobs(settings, token) if settings.submit == "rayjob" else None
        app.state.ray = RayJobs(dashboard, token, gang, settings.ray_dashboard_public_url)
        app.state.leadership = Leadership(engine, retry_s=settings.leader_retry_s)
        app.state.scheduler = Scheduler(
            settings, app.state.sessions, app.state.ray, app.state.leadership
        )
        app.state.scheduler.start()
        app.state.serving = Serving(settings)
        serve_url, serve_port = _serve_proxy(settings, dashboard, head is not None)
        app.state.deployments = Deployments(
            settings, app.state.ray, serve_url=serve_url, http_port=serve_port
        )
        app.state.deployments.restore_in_background(app.state.sessions)
        app.state.campaigns = CampaignRunner(
            app.state.sessions,
            app.state.serving,
            app.state.leadership,
            poll_s=settings.poll_interval_s,
        )
        app.state.campaigns.start()  # the leader resumes campaigns a stop left generating
        # Everything loaded so far (modules, schemas, the ORM's mappers: some 220,000 objects)
        # lives as long as the app: frozen out of the collector's reach, a full collection no
        # longer walks them. It took ~100 ms here, stopping the event loop, and was the p99 of
        # every route under load (bench/api_load.py); unfrozen at shutdown, so an app's cycles
        # can be collected once it is gone (tests start many apps in one process). No collection
        # first: in a process that also holds torch it took ~250 ms per start.
        gc.freeze()
        # Blocking work (store queries, sync routes) runs on this many threads, not anyio's 40:
        # dozens of runnable threads took turns at the GIL, so every request behind them waited
        # (bench/api_load.py: 50 clients' p99 halved, throughput up a third at 8).
        to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        try:
            yield
        finally:
            gc.unfreeze()
            app.state.campaigns.stop()  # before the engines it generates with close
            await app.state.deployments.aclose()
            app.state.serving.close()
            app.state.scheduler.stop()
            if head is not None:
                head.stop()
            engine.dispose()

    app = FastAPI(
        title="llmforge",
        version="0.1.0",
        lifespan=lifespan,
        description="Control plane: submit and watch curate, tokenize, train and "
        "evaluate jobs on Ray; prompt registered models (OpenAI-compatible /v1).",
    )
    api = APIRouter(prefix="/api/v1")
    secured = [Depends(authorize)]
    for router in (
        jobs.router,
        pipelines.router,
        experiments.router,
        plan.router,
        registry.datasets,
        registry.models,
        campaigns.router,  # before ratings: /ratings/{rating_id} would take /ratings/campaigns
        ratings.router,
        prompts.router,
        teams.router,
        completions.router,
        deployments.router,
    ):
        api.include_router(router, dependencies=secured)
    for module in (health, ingest, keys, config, audit):  # no key, a job token, admin per route
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(completions.openai, dependencies=secured)  # OpenAI clients' paths
    mount_console(app)  # the web console: pages under /console over this same API
    install_error_handlers(app)
    instrument(app)
    limit_request_size(app, settings.max_request_bytes)
    add_request_ids(app)  # the outermost: every answer, a 413 included, carries one
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_min)
    app.state.audit_throttle = AuditThrottle()
    return app
