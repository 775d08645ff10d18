"""Load on the control plane: 10,000 jobs and 1,000,000 metric points in PostgreSQL, 50 clients.

Seeds a schema of its own in the PostgreSQL at ``LLMFORGE_BENCH_POSTGRES_URL`` (default the local
one), runs the control plane under uvicorn in a separate process on loopback, then drives it with
50 concurrent clients for ``--seconds`` per scenario: list jobs, get a job, query a job's metrics,
and ingest metrics with job tokens. Prints p50/p99 latencies and the ingest rate; the last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

import httpx
import psycopg

from services.ray_head import free_port
from services.scheduler import hash_token
from services.store.db import make_engine

PG = os.environ.get("LLMFORGE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
JOBS, POINTS, INGEST_JOBS = 10_000, 1_000_000, 50


def seed(schema: str) -> tuple[list[str], dict[str, str]]:
    """Create the schema at head (Alembic), then COPY jobs and metric points in."""
    url = PG.replace("postgresql://", "postgresql+psycopg://")
    make_engine(f"{url}?options=-csearch_path%3D{schema}").dispose()
    ids = [f"{i:012x}" for i in range(JOBS)]
    tokens = {ids[i]: secrets.token_urlsafe(16) for i in range(INGEST_JOBS)}
    now = datetime.now().isoformat()
    with psycopg.connect(PG, options=f"-csearch_path={schema}") as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY jobs (id, kind, state, spec, depends_on, attempts, max_retries, "
            "token_hash, created_at) FROM STDIN"
        ) as copy:
            for i, job_id in enumerate(ids):
                running = job_id in tokens
                copy.write_row(
                    (
                        job_id,
                        "train",
                        "RUNNING" if running else "SUCCEEDED",
                        json.dumps({"data": "d", "output": f"/out/{i}"}),
                        "[]",
                        0,
                        0,
                        hash_token(tokens[job_id]) if running else None,
                        now,
                    )
                )
        buf = io.StringIO()
        per_job = POINTS // 1000  # the first 1,000 jobs carry the points
        for j in range(1000):
            for step in range(per_job // 2):
                buf.write(f"{ids[j]}\t{step}\tloss\t{random.random()}\t0\n")
                buf.write(f"{ids[j]}\t{step}\tlr\t{random.random()}\t0\n")
        buf.seek(0)
        with cur.copy("COPY metrics (job_id, step, name, value, time) FROM STDIN") as copy:
            while chunk := buf.read(1 << 20):
                copy.write(chunk)
        cur.execute("ANALYZE")
    return ids, tokens


def start_server(schema: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LLMFORGE_AUTH": "false",
        "LLMFORGE_HOME": f"/tmp/{schema}",
        "LLMFORGE_DATABASE_URL": PG.replace("postgresql://", "postgresql+psycopg://")
        + f"?options=-csearch_path%3D{schema}",
        "RAY_ADDRESS": f"http://127.0.0.1:{free_port()}",
        "LLMFORGE_POLL_INTERVAL_S": "3600",
    }
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "services.api.app:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env=env)
    for _ in range(120):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health/live").status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("control plane did not start")


async def drive(
    call: Callable[[httpx.AsyncClient], Awaitable[int]], url: str, seconds: float, clients: int
) -> tuple[list[float], int]:
    latencies: list[float] = []
    units = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal units
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                done = await call(client)  # not `units += await …`: that loses updates
                units += done
                latencies.append(time.perf_counter() - t)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies, units


def scenarios(ids: list[str], tokens: dict[str, str]) -> dict[str, Callable[..., Awaitable[int]]]:
    token_items = list(tokens.items())

    async def list_jobs(c: httpx.AsyncClient) -> int:
        (await c.get("/api/v1/jobs", params={"limit": 50, "state": "SUCCEEDED"})).raise_for_status()
        return 1

    async def get_job(c: httpx.AsyncClient) -> int:
        (await c.get(f"/api/v1/jobs/{random.choice(ids)}")).raise_for_status()
        return 1

    async def metrics_query(c: httpx.AsyncClient) -> int:
        job = ids[random.randrange(1000)]
        step = random.randrange(400)
        r = await c.get(
            f"/api/v1/jobs/{job}/metrics",
            params={"name": "loss", "min_step": step, "max_step": step + 100},
        )
        r.raise_for_status()
        return 1

    async def ingest(c: httpx.AsyncClient) -> int:
        job, token = random.choice(token_items)
        records = [{"step": s, "name": "loss", "value": 1.0, "time": 0.0} for s in range(500)]
        r = await c.post(
            f"/api/v1/jobs/{job}/metrics",
            json={"records": records},
            headers={"Authorization": f"Bearer {token}"},
        )
        r.raise_for_status()
        return len(records)

    return {
        "list_jobs": list_jobs,
        "get_job": get_job,
        "metrics_query": metrics_query,
        "ingest": ingest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    schema = f"llmforge_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    port = free_port()
    server = None
    try:
        t = time.perf_counter()
        ids, tokens = seed(schema)
        print(f"seeded {JOBS:,} jobs and {POINTS:,} points in {time.perf_counter() - t:.1f}s")
        server = start_server(schema, port)
        results = {}
        for name, call in scenarios(ids, tokens).items():
            lat, units = asyncio.run(
                drive(call, f"http://127.0.0.1:{port}", args.seconds, args.clients)
            )
            q = statistics.quantiles(lat, n=100)
            results[name] = {
                "p50_ms": q[49] * 1e3,
                "p99_ms": q[98] * 1e3,
                "requests": len(lat),
                "per_s": units / args.seconds,
            }
            print(
                f"{name:>14}: p50 {q[49] * 1e3:7.1f} ms  p99 {q[98] * 1e3:7.1f} ms  "
                f"{len(lat) / args.seconds:8.1f} req/s  {units / args.seconds:10.0f} units/s"
            )
    finally:
        if server:
            server.terminate()
            server.wait(30)
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    print(
        json.dumps(
            {
                "p99_ms_list_jobs": round(results["list_jobs"]["p99_ms"], 1),
                "p99_ms_get_job": round(results["get_job"]["p99_ms"], 1),
                "p99_ms_metrics_query": round(results["metrics_query"]["p99_ms"], 1),
                "ingest_points_per_s": round(results["ingest"]["per_s"]),
            }
        )
    )


if __name__ == "__main__":
    main()
