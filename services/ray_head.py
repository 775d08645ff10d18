"""The embedded local Ray head that the control plane starts when no RAY_ADDRESS is configured.

It runs ``ray start --head --block`` as a child process, bound to loopback, and ends it by its PID
(``ray stop`` would kill every Ray process on the machine, including ones we did not start).
``LocalRayWorker`` joins more nodes to it, each with its own temp dir and environment (the
multi-node tests run a whole cluster on one machine this way).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from services.ray_auth import RayToken

# Ray resolves 127.0.0.1 to the machine's first routable address unless this is off; with it
# off every Ray process (head, workers, jobs) stays on loopback.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_DISABLE_USAGE_STATS": "1"}
# Ray's token authentication stays on; the head, and every job it runs, reads the token that
# services.ray_auth settled before the start (`ray start` never creates one).
AUTH_ENV = {"RAY_AUTH_MODE": "token"}
# On SIGTERM a Ray 2.60 node drains for up to 30 s until no lease is left; the job supervisors
# and idle workers of a head that ran jobs hold leases to the end, so every stop of the embedded
# head (the control plane's shutdown, the demo's end) took the whole 30 s. The control plane
# stops it when its jobs are over or abandoned anyway. A caller's own setting wins.
QUICK_STOP_ENV = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "3"}
# The control plane's own head is one machine, which no cloud preempts: Ray Train's preemption
# watcher (an actor per run that polls the GCS for node drains) only costs a process there,
# about 2 CPU-seconds per run to import ray.train. A caller's own setting wins.
EMBEDDED_HEAD_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
# Each node's log monitor (what streams workers' output to their drivers) globs its logs folder
# for new files on every 0.1 s pass until it tracks 1,000 of them; profiled on the test suite's
# shared head, the globbing was 61% of the monitor's CPU. With these it looks for new files once
# a second and still reads the files it tracks every pass: a new worker's first lines reach its
# driver up to a second later, and nothing is lost. A caller's own setting wins.
LOG_MONITOR_ENV = {"RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0", "LOG_NAME_UPDATE_INTERVAL_S": "1"}


def worker_niceness_env(niceness: int | None) -> dict[str, str]:
    """The environment that makes a node's raylet start its workers at ``niceness`` (Ray's
    ``worker_niceness`` setting; None: Ray's default, 15)."""
    return {} if niceness is None else {"RAY_worker_niceness": str(niceness)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


class LocalRayHead:
    def __init__(
        self,
        *,
        gcs_port: int | None,
        dashboard_port: int,
        num_cpus: int | None,
        object_store_mb: int,
        log_path: Path,
        token: RayToken,
        resources: dict[str, float] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.gcs_port = gcs_port or free_port()
        self.dashboard_port = dashboard_port
        self.num_cpus, self.object_store_mb = num_cpus, object_store_mb
        self.log_path = log_path
        self.token = token
        self.resources = resources
        self.env = env or {}
        # Its own temp dir: Ray's job supervisor finds "the" cluster through the
        # ray_current_cluster file there, which any other Ray started on this machine with the
        # shared default (/tmp/ray) overwrites; our jobs would then join that cluster instead.
        self.temp_dir = tempfile.mkdtemp(prefix="llmforge-ray-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _node_args(self) -> list[str]:
        """What every node of ours is started with, head or not."""
        args = [
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
            # Ray's fixed defaults for these collide when two nodes share a machine (a demo
            # beside a test run, a multi-node test); free ports keep every node independent.
            *(
                f"--{flag}={free_port()}"
                for flag in (
                    "dashboard-agent-listen-port",
                    "dashboard-agent-grpc-port",
                    "runtime-env-agent-port",
                    "metrics-export-port",
                )
            ),
        ]
        if self.num_cpus is not None:
            args.append(f"--num-cpus={self.num_cpus}")
        if self.resources:
            args.append(f"--resources={json.dumps(self.resources)}")
        return args

    def environment(self) -> dict[str, str]:
        """The environment of this node's processes (raylet, workers, job drivers)."""
        env = {**QUICK_STOP_ENV, **LOG_MONITOR_ENV, **AUTH_ENV, **os.environ}
        env |= {**self.token.env(), **self.env}
        env |= LOOPBACK_ENV
        env.pop("RAY_ADDRESS", None)
        # Where Ray's state API is, for the actors of this cluster that call it: without it they
        # look for "the" cluster in /tmp/ray/ray_current_cluster and among the machine's GCS
        # processes, which on a machine with another Ray (or a stale file) is the wrong one.
        # Ray Train's placement-group cleaner then blocked in that lookup until the controller
        # gave up on stopping it: every Train run's end waited its full 12 s stop timeout.
        env["RAY_API_SERVER_ADDRESS"] = self.dashboard_url
        return env

    def _spawn(self, cmd: list[str], *, own_session: bool = False) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            start_new_session=own_session,
        )

    def wait_node_id(self, timeout_s: float = 60) -> str:
        """This node's Ray id, once the cluster lists it alive (found by its own temp dir)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"ray node exited with {self.process.returncode}; see {self.log_path}"
                )
            r = httpx.get(
                f"{self.dashboard_url}/nodes?view=summary", headers=self.token.header, timeout=10
            )
            r.raise_for_status()
            for node in r.json()["data"]["summary"]:
                raylet = node["raylet"]
                if raylet.get("tempDir") == self.temp_dir and raylet["state"] == "ALIVE":
                    return str(raylet["nodeId"])
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ray node not alive after {timeout_s:.0f}s; see {self.log_path}")

    def start(self, timeout_s: float = 90) -> None:
        cmd = [
            _ray_executable(),
            "start",
            "--head",
            f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            "--include-dashboard=true",
            f"--ray-client-server-port={free_port()}",
            *self._node_args(),
        ]
        self._spawn(cmd)
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"ray head exited with {self.process.returncode}; see {self.log_path}"
                )
            try:
                # 401 is an answer too: the dashboard is up and asks for the token.
                r = httpx.get(f"{self.dashboard_url}/api/version", timeout=2)
                if r.status_code in (200, 401):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ray head not ready after {timeout_s:.0f}s; see {self.log_path}")

    def stop(self, timeout_s: float = 60) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # --block turns SIGTERM into an orderly shutdown of its children
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


# `ray start --address` on a node that is not the head: Ray refuses it while
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (which is what keeps a lone head on loopback), and with it on
# Ray swaps an explicit --node-ip-address=127.0.0.1 for the machine's routable address. Every
# node of a test cluster must stay on loopback, so the CLI runs with the guard lifted in this
# process only and the given loopback address kept; the raylet and its workers still get
# LOOPBACK_ENV, and so resolve loopback themselves.
_JOIN_ON_LOOPBACK = """
import sys
import ray._private.ray_constants as constants
import ray._private.services as services
from ray.scripts.scripts import main
constants.ENABLE_RAY_CLUSTER = True
services.resolve_ip_for_localhost = lambda host: host
sys.argv = ["ray", "start", *sys.argv[1:]]
main()
"""


class LocalRayWorker(LocalRayHead):
    """One more node of a local head's cluster: ``ray start --address=HEAD --block``, with its
    own temp dir, resources and environment (its scratch folder, say), ended by its PID."""

    def __init__(self, head: LocalRayHead, **options: Any) -> None:
        super().__init__(
            gcs_port=head.gcs_port,
            dashboard_port=head.dashboard_port,
            token=head.token,
            **options,
        )

    def start(self, timeout_s: float = 90) -> None:
        join = [sys.executable, "-c", _JOIN_ON_LOOPBACK, f"--address={self.address}"]
        # Its own session: a test can end the node and everything it started at once.
        self._spawn([*join, *self._node_args()], own_session=True)
        self.node_id = self.wait_node_id(timeout_s)
