"""A team cluster on one machine, for tests: Ray nodes that share no disk (with ``tests.s3``'s
S3 server over HTTP between them).

Each node is its own ``ray start`` with its own temp dir, its own scratch folder
(``LLMFORGE_SCRATCH``) and a custom resource naming it, all on loopback. The object store is the
only storage the nodes share, as on a KubeRay cluster whose pods mount no common volume.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.ray_auth import RayToken
from services.ray_head import AUTH_ENV, LocalRayHead, LocalRayWorker, free_port

# A dead node is noticed in seconds rather than Ray's default of about half a minute.
FAST_NODE_DEATH = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def join_as_driver(head: LocalRayHead, env: dict[str, str] | None = None) -> None:
    """Connect this process to ``head``'s cluster as a Ray driver (once: a driver already
    connected elsewhere, or with another environment, is shut down first). ``env`` becomes the
    environment of this driver's tasks and actors on the cluster (its job's runtime env)."""
    import ray
    from ray._raylet import AuthenticationTokenLoader, Config

    if ray.is_initialized():
        if not env and ray.get_runtime_context().gcs_address == head.address:
            return
        ray.shutdown()
    # The head's token, for the connection (set for the call, not left for later tests). Ray
    # read its config (the auth mode) and looked for a token when this process first used it,
    # perhaps before the head started: both are read again.
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**AUTH_ENV, **head.token.env()}.items():
            patch.setenv(name, value)
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
        ray.init(address=head.address, runtime_env={"env_vars": env} if env else None)


@dataclass
class Node:
    name: str
    ray: LocalRayHead
    scratch: Path
    node_id: str = ""

    def wipe_scratch(self) -> None:
        """Empty this node's scratch folder, as a pod restarted with a fresh emptyDir would be."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)


@dataclass
class Cluster:
    head: Node
    workers: list[Node] = field(default_factory=list)

    @property
    def nodes(self) -> list[Node]:
        return [self.head, *self.workers]

    def wipe_scratch(self) -> None:
        for node in self.nodes:
            node.wipe_scratch()

    def kill(self, node: Node) -> None:
        """The node dies at once (SIGKILL to every process it started), as a lost pod would."""
        process = node.ray.process
        assert process is not None
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


@contextmanager
def ray_cluster(
    root: Path, env: dict[str, str], *, workers: int = 1, head_cpus: int = 2, worker_cpus: int = 1
) -> Iterator[Cluster]:
    """A head and ``workers`` more nodes; every node's environment is ``env`` plus its own
    scratch folder.

    The CPUs the nodes declare add up to little more than the machine has: with 2 on each node
    of a 2-core machine, Ray started worker after worker for leases it could not serve, its
    start-up throttle kicked in, and a 40-document curate job took 72 s (20 s with 1 each). The
    head keeps 2, so that the ranks of a 2-worker job fit on it when the worker node dies."""
    token_file = root / "ray-token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    token = RayToken(token_file.read_text(), str(token_file), token_file)

    def node_env(scratch: Path) -> dict[str, str]:
        return {**env, **FAST_NODE_DEATH, "LLMFORGE_SCRATCH": str(scratch)}

    options = {"object_store_mb": 128}
    head_scratch = root / "scratch-head"
    head = LocalRayHead(
        gcs_port=None,
        dashboard_port=free_port(),
        log_path=root / "head.log",
        token=token,
        resources={"head_node": 1},
        env=node_env(head_scratch),
        num_cpus=head_cpus,
        **options,
    )
    head.start()
    cluster = Cluster(Node("head", head, head_scratch))
    try:
        for i in range(workers):
            scratch = root / f"scratch-worker{i}"
            worker = LocalRayWorker(
                head,
                log_path=root / f"worker{i}.log",
                resources={f"worker_node_{i}": 1},
                env=node_env(scratch),
                num_cpus=worker_cpus,
                **options,
            )
            worker.start()
            cluster.workers.append(Node(f"worker{i}", worker, scratch, worker.node_id))
        cluster.head.node_id = head.wait_node_id()
        cluster.wipe_scratch()
        yield cluster
    finally:
        for node in reversed(cluster.nodes):
            node.ray.stop()
