"""Load on the control plane: 10,000 jobs and 1,000,000 metric points in PostgreSQL, side by side
with the MLflow tracking server on the same PostgreSQL.

Seeds a schema of its own in the PostgreSQL at ``LLMFORGE_BENCH_POSTGRES_URL`` (default the local
one) and runs the control plane under uvicorn in a separate process on loopback. Then:

- closed loop, ``--clients`` clients for ``--seconds`` per scenario: list jobs, get a job, query a
  job's metrics (100 steps of one metric), ingest batches of 500 points with job tokens;
- open loop: a mixed load (30% list, 30% get, 30% metrics query, 10% ingest of 100 points) sent on
  a clock at 300 requests/s, latency from each request's scheduled send time; then the same mix
  at rising rates until the reads' p99 passes 100 ms;
- the peer, MLflow's tracking server (one worker, ``bench/mlflow_peer.py``), seeded with as many
  points: ``get-history`` of 100 points at ``--clients`` clients against the metrics query, and
  ``log-batch`` of 500 points against ingest, both at ``INGEST_CLIENTS`` clients (MLflow's
  log-batch times out at 50).

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime

import aiohttp
import httpx
import psutil
import psycopg

from bench import mlflow_peer
from bench.load_drivers import Call, Outcome, closed_loop, open_loop
from services.ray_head import free_port
from services.scheduler import hash_token
from services.store.db import make_engine

PG = os.environ.get("LLMFORGE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
JOBS, POINTS, INGEST_JOBS = 10_000, 1_000_000, 50
INGEST_CLIENTS = 8
READS = ("list_jobs", "get_job", "metrics_query")
# Rates the open loop steps through (requests/s) until the reads' p99 passes 100 ms.
RATES = (50, 100, 150, 200, 300, 400, 500, 600, 800, 1000, 1200, 1600, 2000)


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


def start_server(schema: str, port: int, workers: int, cpus: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LLMFORGE_AUTH": "false",
        "LLMFORGE_HOME": f"/tmp/{schema}",
        "LLMFORGE_DATABASE_URL": PG.replace("postgresql://", "postgresql+psycopg://")
        + f"?options=-csearch_path%3D{schema}",
        "RAY_ADDRESS": f"http://127.0.0.1:{free_port()}",
        "LLMFORGE_POLL_INTERVAL_S": "3600",
        "LLMFORGE_API_WORKERS": str(workers),
    }
    cmd = ["taskset", "-c", cpus] if cpus else []
    cmd += [
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
        "--workers",
        str(workers),
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


def scenarios(ids: list[str], tokens: dict[str, str], batch: int = 500) -> dict[str, Call]:
    token_items = list(tokens.items())

    async def list_jobs(c: aiohttp.ClientSession) -> int:
        async with c.get("/api/v1/jobs", params={"limit": 50, "state": "SUCCEEDED"}) as r:
            r.raise_for_status()
            await r.read()
        return 1

    async def get_job(c: aiohttp.ClientSession) -> int:
        async with c.get(f"/api/v1/jobs/{random.choice(ids)}") as r:
            r.raise_for_status()
            await r.read()
        return 1

    async def metrics_query(c: aiohttp.ClientSession) -> int:
        job = ids[random.randrange(1000)]
        step = random.randrange(400)
        params: dict[str, str | int] = {"name": "loss", "min_step": step, "max_step": step + 99}
        async with c.get(f"/api/v1/jobs/{job}/metrics", params=params) as r:
            r.raise_for_status()
            await r.read()
        return 1

    async def ingest(c: aiohttp.ClientSession) -> int:
        job, token = random.choice(token_items)
        records = [{"step": s, "name": "loss", "value": 1.0, "time": 0.0} for s in range(batch)]
        async with c.post(
            f"/api/v1/jobs/{job}/metrics",
            json={"records": records},
            headers={"Authorization": f"Bearer {token}"},
        ) as r:
            r.raise_for_status()
            await r.read()
        return batch

    return {
        "list_jobs": list_jobs,
        "get_job": get_job,
        "metrics_query": metrics_query,
        "ingest": ingest,
    }


def mlflow_calls(runs: list[str]) -> dict[str, Call]:
    async def get_history(c: aiohttp.ClientSession) -> int:
        params = {"run_id": random.choice(runs), "metric_key": "loss"}
        async with c.get("/api/2.0/mlflow/metrics/get-history", params=params) as r:
            r.raise_for_status()
            await r.read()
        return 1

    async def log_batch(c: aiohttp.ClientSession) -> int:
        now = int(time.time() * 1000)
        metrics = [
            {"key": "loss", "value": 1.0, "timestamp": now, "step": s}
            for s in range(mlflow_peer.BATCH)
        ]
        body = {"run_id": random.choice(runs), "metrics": metrics}
        async with c.post("/api/2.0/mlflow/runs/log-batch", json=body) as r:
            r.raise_for_status()
            await r.read()
        return mlflow_peer.BATCH

    return {"get_history": get_history, "log_batch": log_batch}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process and its children (uvicorn's workers); 0 for None."""
    if pid is None:
        return 0.0
    root = psutil.Process(pid)
    total = 0.0
    for proc in (root, *root.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def closed(
    url: str, call: Call, label: str, clients: int, seconds: float, server: int | None = None
) -> Outcome:
    before = cpu_seconds(server)
    out = asyncio.run(closed_loop(url, call, clients=clients, seconds=seconds))
    out.server_cpu_s = cpu_seconds(server) - before
    n = len(out.latencies.get("call", []))
    print(
        f"{label:>22} x{clients:<3}: p50 {out.p(['call'], 50):7.1f} ms  "
        f"p99 {out.p(['call'], 99):7.1f} ms  {n / out.seconds:7.1f} req/s  "
        f"{out.units.get('call', 0) / out.seconds:9.0f} units/s  "
        f"errors {out.error_count(['call'])}  client CPU {out.client_cpu_share:.2f}  "
        f"server CPU {out.server_cpu_ms_per_call(['call']):.2f} ms/call",
        flush=True,
    )
    return out


def settle(url: str, job_id: str) -> None:
    """Wait until a read is answered: requests an earlier step left queued in the server (the
    client gave up on them, the server did not) would otherwise count against the next step."""
    deadline = time.perf_counter() + 900
    while True:
        try:
            httpx.get(f"{url}/api/v1/jobs/{job_id}", timeout=60).raise_for_status()
            return
        except httpx.HTTPError:
            if time.perf_counter() > deadline:
                raise


def mixed(url: str, ids: list[str], tokens: dict[str, str], rate: float, seconds: float) -> Outcome:
    settle(url, ids[0])
    reads, ingest = scenarios(ids, tokens), scenarios(ids, tokens, batch=100)["ingest"]
    mix = [(name, 0.3, reads[name]) for name in READS] + [("ingest", 0.1, ingest)]
    out = asyncio.run(open_loop(url, mix, rate=rate, seconds=seconds))
    print(
        f"open loop {rate:6.0f}/s: reads p50 {out.p(READS, 50):7.1f} p99 {out.p(READS, 99):7.1f} ms"
        f"  (list {out.p(['list_jobs'], 99):.1f}, get {out.p(['get_job'], 99):.1f}, "
        f"metrics {out.p(['metrics_query'], 99):.1f}, ingest {out.p(['ingest'], 99):.1f})  "
        f"errors {out.error_count([*READS, 'ingest'])}  client CPU {out.client_cpu_share:.2f}  "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return out


def passes(out: Outcome, limit_ms: float) -> bool:
    p99 = out.p(READS, 99)
    return not math.isnan(p99) and p99 < limit_ms and out.error_count(READS) == 0


def step_rates(url: str, ids: list[str], tokens: dict[str, str], seconds: float) -> int:
    """The highest rate in RATES whose reads' p99 stays under 100 ms (0: none)."""
    best = 0
    for rate in RATES:
        if not passes(mixed(url, ids, tokens, rate, seconds), 100):
            break
        best = rate
    return best


def run_mlflow(clients: int, seconds: float) -> dict[str, Outcome]:
    with mlflow_peer.mlflow_server(PG) as (url, database, server):
        t = time.perf_counter()
        runs = mlflow_peer.seed(url, database)
        print(f"mlflow: seeded {len(runs):,} runs in {time.perf_counter() - t:.1f}s", flush=True)
        calls = mlflow_calls(runs)
        history = closed(url, calls["get_history"], "mlflow get-history", clients, seconds, server)
        batch = closed(url, calls["log_batch"], "mlflow log-batch", INGEST_CLIENTS, seconds, server)
        return {"get_history": history, "log_batch": batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30, help="per closed-loop scenario")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--open-seconds", type=float, default=30, help="the 300/s open loop")
    parser.add_argument("--step-seconds", type=float, default=10, help="each rate step")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="control-plane processes (default: one per core, as LLMFORGE_API_WORKERS advises)",
    )
    parser.add_argument("--server-cpus", default="", help="taskset CPU list for the server")
    parser.add_argument("--no-mlflow", action="store_true", help="skip the peer (profiling)")
    args = parser.parse_args()
    schema = f"llmforge_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = None
    load: list[float] = [os.getloadavg()[0]]
    try:
        t = time.perf_counter()
        ids, tokens = seed(schema)
        print(f"seeded {JOBS:,} jobs and {POINTS:,} points in {time.perf_counter() - t:.1f}s")
        server = start_server(schema, port, args.workers, args.server_cpus)
        calls = scenarios(ids, tokens)
        results = {
            name: closed(url, call, name, args.clients, args.seconds, server.pid)
            for name, call in calls.items()
        }
        load.append(os.getloadavg()[0])
        ingest_few = closed(
            url, calls["ingest"], "ingest", INGEST_CLIENTS, args.seconds, server.pid
        )
        # Rising rates first, then 300/s: past its limit a server keeps a backlog to drain.
        max_rate = step_rates(url, ids, tokens, args.step_seconds)
        load.append(os.getloadavg()[0])
        at_300 = mixed(url, ids, tokens, 300, args.open_seconds)
        load.append(os.getloadavg()[0])
    finally:
        if server:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:  # still working through a backlog
                server.kill()
                server.wait()
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    peer = {} if args.no_mlflow else run_mlflow(args.clients, args.seconds)
    load.append(os.getloadavg()[0])
    print(json.dumps(summary(results, ingest_few, at_300, max_rate, peer, load)))


def summary(
    results: dict[str, Outcome],
    ingest_few: Outcome,
    at_300: Outcome,
    max_rate: int,
    peer: dict[str, Outcome],
    load: Sequence[float],
) -> dict[str, object]:
    def p99(out: Outcome) -> float:
        return round(out.p(["call"], 99), 1)

    def per_s(out: Outcome) -> float:
        return out.units.get("call", 0) / out.seconds

    query_p99, ingest_rate = p99(results["metrics_query"]), per_s(ingest_few)
    mlflow_p99 = p99(peer["get_history"]) if peer else None
    mlflow_ingest = per_s(peer["log_batch"]) if peer else None
    return {
        "p99_ms_list_jobs": p99(results["list_jobs"]),
        "p99_ms_get_job": p99(results["get_job"]),
        "p99_ms_metrics_query": query_p99,
        "ingest_points_per_s": round(per_s(results["ingest"])),
        "p99_ms_at_300rps": round(at_300.p(READS, 99), 1),
        "errors_at_300rps": at_300.error_count([*READS, "ingest"]),
        "max_rps_p99_100ms": max_rate,
        f"ingest_points_per_s_{INGEST_CLIENTS}_clients": round(ingest_rate),
        "mlflow_get_history_p99_ms": mlflow_p99,
        "mlflow_log_batch_points_per_s": round(mlflow_ingest) if mlflow_ingest else None,
        "metrics_query_p99_vs_mlflow": round(query_p99 / mlflow_p99, 3) if mlflow_p99 else None,
        "ingest_vs_mlflow": round(ingest_rate / mlflow_ingest, 2) if mlflow_ingest else None,
        "client_cpu_share_at_300rps": round(at_300.client_cpu_share, 2),
        # CPU per answered request of the server's processes (ingest: per 500-point batch).
        "server_cpu_ms_per_request": {
            name: round(out.server_cpu_ms_per_call(["call"]), 2) for name, out in results.items()
        },
        "mlflow_server_cpu_ms_per_request": {
            name: round(out.server_cpu_ms_per_call(["call"]), 2) for name, out in peer.items()
        },
        "load_avg_1m": [round(x, 1) for x in load],
    }


if __name__ == "__main__":
    main()
