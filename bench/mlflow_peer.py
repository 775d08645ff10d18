"""The MLflow tracking server as the control plane's peer, on the same PostgreSQL.

MLflow pins its own SQLAlchemy, Alembic, Flask… ranges, so it lives in a venv of its own,
``bench/.mlflow-venv`` (made here on first use, pinned ``MLFLOW``), and only its server runs from
there: the bench talks to it over REST. Its backend store is a database of its own, created and
dropped by the bench, beside the control plane's schema on the same server.

Seeded like the control plane: 1,000 runs with 1,000 points each (10 metrics x 100 steps), the
points COPYd into MLflow's own ``metrics`` table (runs are created through its API), so
``get-history`` of one run's ``loss`` answers 100 points out of 1,000,000.
"""

from __future__ import annotations

import asyncio
import io
import random
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import httpx
import psycopg

from services.ray_head import free_port

MLFLOW = "mlflow==3.17.2"
DRIVER = "psycopg[binary]==3.3.9"  # SQLAlchemy 2.1 reads postgresql:// as psycopg 3
VENV = Path(__file__).resolve().parent / ".mlflow-venv"
RUNS, KEYS, STEPS = 1000, 10, 100
TEMPLATE = "mlflow_bench_template"
BATCH = 500  # points per log-batch, as the control plane's ingest scenario sends


def ensure_venv() -> Path:
    """MLflow's server executable, installing it into its own venv the first time."""
    server = VENV / "bin" / "mlflow"
    if not server.exists():
        subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "pip"), "install", "-q", MLFLOW, DRIVER]
        subprocess.run(pip, check=True)
    return server


def _template(pg_url: str) -> str:
    """An empty MLflow store at MLflow's head schema, made once (its migrations took five
    minutes on the loaded bench machine) and copied for each run."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (TEMPLATE,)).fetchone():
            return TEMPLATE
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}_new")
        conn.execute(f"CREATE DATABASE {TEMPLATE}_new")
    upgrade = [str(ensure_venv()), "db", "upgrade", pg_url.rsplit("/", 1)[0] + f"/{TEMPLATE}_new"]
    subprocess.run(upgrade, check=True, stdout=subprocess.DEVNULL)
    with psycopg.connect(pg_url, autocommit=True) as conn:  # whole, or not the template
        conn.execute(f"ALTER DATABASE {TEMPLATE}_new RENAME TO {TEMPLATE}")
    return TEMPLATE


@contextmanager
def mlflow_server(pg_url: str) -> Iterator[tuple[str, str, int]]:
    """A one-worker MLflow tracking server on a fresh database; yields (its base URL, the
    database's URL, the server's pid)."""
    database = f"mlflow_bench_{secrets.token_hex(4)}"
    template = _template(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database} TEMPLATE {template}")
    store = pg_url.rsplit("/", 1)[0] + f"/{database}"
    port = free_port()
    cmd = [
        str(ensure_venv()),
        "server",
        "--backend-store-uri",
        store,
        "--default-artifact-root",
        f"/tmp/{database}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_up(url, proc)
        yield url, store, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def _wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(240):
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("mlflow server did not start")


async def _create_runs(url: str) -> list[str]:
    async with aiohttp.ClientSession(base_url=url) as s:
        r = await s.post("/api/2.0/mlflow/experiments/create", json={"name": "bench"})
        r.raise_for_status()
        experiment = (await r.json())["experiment_id"]
        ids: list[str] = []

        async def creator(n: int) -> None:
            for _ in range(n):
                body = {"experiment_id": experiment, "start_time": int(time.time() * 1000)}
                r = await s.post("/api/2.0/mlflow/runs/create", json=body)
                r.raise_for_status()
                ids.append((await r.json())["run"]["info"]["run_id"])

        await asyncio.gather(*(creator(RUNS // 8) for _ in range(8)))
    return ids


def seed(url: str, database: str) -> list[str]:
    """RUNS runs through the API, then their points by COPY; answers the run ids."""
    runs = asyncio.run(_create_runs(url))
    buf = io.StringIO()
    now = int(time.time() * 1000)
    for run in runs:
        for k in range(KEYS):
            key = "loss" if k == 0 else f"m{k}"
            for step in range(STEPS):
                buf.write(f"{key}\t{random.random()}\t{now}\t{run}\t{step}\tf\n")
    buf.seek(0)
    with psycopg.connect(database) as conn, conn.cursor() as cur:
        columns = "key, value, timestamp, run_uuid, step, is_nan"
        with cur.copy(f"COPY metrics ({columns}) FROM STDIN") as c:
            while chunk := buf.read(1 << 20):
                c.write(chunk)
        cur.execute("ANALYZE")
    return runs
