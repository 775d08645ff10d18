"""One settings object for the control plane: chosen by environment, never by code edits.

On one machine the defaults are embedded: a local Ray head, a SQLite file and a local artifact
folder under ``LLMFORGE_HOME``. ``RAY_ADDRESS``, ``LLMFORGE_DATABASE_URL`` and
``LLMFORGE_ARTIFACT_ROOT`` point the same code at a team cluster. An ``s3://`` artifact root's
endpoint and credentials are the AWS SDK's standard variables (``AWS_ENDPOINT_URL``, …; see
``llm.storage``), read by the control plane and by every job from their own environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llm import storage
from llm.eval.data import default_data_root
from services.redact import mask_url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMFORGE_", extra="ignore")

    home: Path = Path(".llmforge")
    database_url: str | None = None
    artifact_root: str | None = None
    ray_address: str | None = Field(
        default=None, validation_alias=AliasChoices("RAY_ADDRESS", "LLMFORGE_RAY_ADDRESS")
    )
    ray_num_cpus: int | None = None
    # Niceness of the worker processes (tasks, actors, Ray Train workers) of the embedded Ray
    # head: None keeps Ray's 15, at which Ray's own daemons and this control plane preempt them;
    # 0 gives them a plain process's priority (what torchrun's workers get), which training on a
    # machine shared with other work needs to get its share of the cores (bench/train_cpu.py).
    ray_worker_niceness: int | None = Field(default=None, ge=0, le=19)
    ray_object_store_mb: int = 256
    ray_dashboard_port: int = 8265
    # The Ray dashboard as a user's browser reaches it, for the job links the API gives
    # (dashboard_url); default: the address this control plane uses, which on a cluster is an
    # in-cluster name no browser resolves.
    ray_dashboard_public_url: str | None = None
    # None: a free port (6379, Ray's default, is Redis's too, and often taken).
    ray_gcs_port: int | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Control-plane processes behind the one port (`llmforge serve`), one per core: each serves
    # the API and only the leader among them runs the scheduler (services/leader.py). More than
    # one needs PostgreSQL (one leader per store) and RAY_ADDRESS (a local head per process
    # would be several clusters). API keys' rate limits count in each process.
    api_workers: int = Field(default=1, ge=1)
    # Threads per control-plane process for blocking work (store queries, sync routes). Few
    # keep latency low (many runnable threads take turns at the GIL); enough that a few slow
    # calls (Ray's API, object storage) do not hold up the rest.
    api_threads: int = Field(default=8, ge=1)
    # The URL that Ray jobs use to reach this control plane (metrics ingestion).
    public_url: str | None = None
    # The interpreter that runs job entrypoints; on the embedded head it is this one, so jobs see
    # the same installed packages. On a cluster the image's `python` is used.
    job_python: str | None = None
    poll_interval_s: float = 0.5
    # How often a standby control plane on the same PostgreSQL tries to take over the scheduler
    # (services/leader.py): the longest a dead leader's work waits, after its connection closed.
    leader_retry_s: float = Field(default=1.0, gt=0)
    # Resources each job's driver reserves on the node Ray runs it on (the head, on KubeRay): set
    # on a cluster, so that drivers cannot crowd the head; None reserves nothing (Ray's default).
    job_driver_num_cpus: float | None = Field(default=None, ge=0)
    job_driver_memory_mb: int | None = Field(default=None, ge=0)
    # An admin key that a deployment provides (from a Secret), so none is ever lost: made an
    # admin key of the store at every start if the store does not hold it yet, and never written
    # to a file. Without it the first start writes a new key to <home>/admin.key.
    bootstrap_admin_key: str | None = Field(default=None, repr=False)
    max_request_bytes: int = 8 * 1024 * 1024
    # API keys on every route but health; off only for single-user tests.
    auth: bool = True
    # Jobs a team may have submitted to Ray at once (PENDING or RUNNING); more wait QUEUED.
    # An admin can set a team's own limit (PUT /api/v1/teams/{team}/limit).
    team_max_running: int = Field(default=4, ge=0)
    # Requests a minute per API key (token bucket, in this process); 0: no limit. A key created
    # with its own rate_limit_per_min uses that instead.
    rate_limit_per_min: int = Field(default=600, ge=0)
    # Storage roots (services.roots): every team reads and writes its own area,
    # <artifact_root>/teams/<team>; these comma-separated local folders or s3:// prefixes are
    # readable by every team (common corpora), and admins grant a team more
    # (PUT /api/v1/teams/{team}/roots). None may hold this control plane's home.
    shared_roots: str = ""
    # Readable and writable by every team: for a single-user machine or tests only.
    shared_write_roots: str = ""
    # Where the built-in evaluation tasks find their data (a local folder or an s3:// prefix),
    # readable by every team and given to every job as $LLMFORGE_DATA_ROOT; default: the
    # ``shared/data`` folder beside the checkout, where there is one.
    data_root: str | None = None
    # Completions (services/serving.py): models served in this process at once (LRU), the
    # sequences one model runs per step (continuous batching), the requests that may wait for
    # a slot before a 429, the KV cache's budget per model (it bounds the batch of a large
    # model), and the device ("cpu", "cuda", "cuda:1").
    serve_models: int = Field(default=2, ge=1)
    serve_max_batch: int = Field(default=32, ge=1)
    serve_max_queue: int = Field(default=64, ge=0)
    serve_cache_mb: int = Field(default=1024, ge=1)
    serve_device: str = "cpu"
    # Deployed models (services/deployments.py): Ray Serve's HTTP proxy, which the first deploy
    # starts on the cluster, binds serve_host:serve_port (default: a free port with the embedded
    # head, Serve's 8000 on a RAY_ADDRESS cluster; 0.0.0.0 where a Kubernetes Service exposes
    # it), and this control plane reaches it at serve_url (default: that port on loopback, or on
    # RAY_ADDRESS's host).
    serve_host: str = "127.0.0.1"
    serve_port: int | None = Field(default=None, ge=1, le=65535)
    serve_url: str | None = None
    # How jobs reach Ray (services/kuberay.py). "ray": every job through the Ray Jobs API of the
    # one cluster (the embedded head, or RAY_ADDRESS). "rayjob": on Kubernetes, the kinds named
    # in rayjob_kinds (multi-worker, GPU-bound: train, tune, finetune, evaluate) become KubeRay
    # RayJob resources, each with its own fixed-size Ray cluster, labelled for the Kueue queue
    # rayjob_queue, so Kueue admits every worker at once against the team's quota (gang
    # scheduling) and preempts by priority; the other kinds (curate, tokenize, compare: elastic
    # Ray Data work or tiny drivers) stay on the shared cluster through the Jobs API.
    submit: Literal["ray", "rayjob"] = "ray"
    rayjob_namespace: str = "llmforge"
    rayjob_queue: str = "llmforge-team"
    # The image of the RayJobs' pods (head, submitter, CPU workers) and of their GPU workers
    # (default: the same); required with submit=rayjob. Exact tags or digests, never :latest.
    rayjob_image: str | None = None
    rayjob_gpu_image: str | None = None
    rayjob_service_account: str = "llmforge-ray"
    # Which kinds run as RayJobs, each with the PriorityClass of its pods (Kueue preempts a lower
    # class for a higher one); as JSON in LLMFORGE_RAYJOB_KINDS.
    rayjob_kinds: dict[str, str] = {
        "train": "llmforge-normal",
        "finetune": "llmforge-normal",
        "evaluate": "llmforge-normal",
        "tune": "llmforge-low",
    }
    # Each Ray worker pod's size; a job gets as many as its spec's workers (times concurrent
    # trials for tune), plus one GPU each when the spec says use_gpu.
    rayjob_worker_cpus: float = Field(default=4, gt=0)
    rayjob_worker_memory_gb: float = Field(default=16, gt=0)
    # Seconds a finished RayJob's cluster lives on (its logs readable) before KubeRay deletes it.
    rayjob_ttl_s: int = Field(default=3600, ge=0)
    # The scheduler reads a RayJob's status from the Kubernetes API at most this often.
    rayjob_status_ttl_s: float = Field(default=5, ge=0)
    # Names of what the RayJobs' pods load: the Ray token Secret (authOptions), the S3
    # credentials Secret and the object-storage ConfigMap (infra/k8s/base/storage.yaml).
    rayjob_ray_token_secret: str = "llmforge-ray-token"
    rayjob_s3_secret: str = "llmforge-s3"
    rayjob_storage_configmap: str = "llmforge-storage"
    # The Kubernetes API: in a pod, from KUBERNETES_SERVICE_HOST/PORT and the ServiceAccount's
    # mounted token and CA (read again for every request: bound tokens rotate).
    kube_api_url: str | None = None
    kube_token_path: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    kube_ca_path: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")

    @model_validator(mode="after")
    def _one_endpoint_convention(self) -> Settings:
        if os.environ.get("LLMFORGE_S3_ENDPOINT_URL"):
            raise ValueError(
                "LLMFORGE_S3_ENDPOINT_URL is no longer read: set AWS_ENDPOINT_URL (the AWS SDK's "
                "variable, which the control plane, every job and Ray Data read) instead"
            )
        if self.api_workers > 1 and not (
            self.resolved_database_url.startswith("postgresql") and self.ray_address
        ):
            raise ValueError(
                "LLMFORGE_API_WORKERS > 1 needs PostgreSQL (LLMFORGE_DATABASE_URL) and an "
                "existing Ray cluster (RAY_ADDRESS): processes on one SQLite file would each run "
                "the scheduler, and each would start a Ray head of its own"
            )
        if self.submit == "rayjob" and not self.rayjob_image:
            raise ValueError("LLMFORGE_SUBMIT=rayjob needs LLMFORGE_RAYJOB_IMAGE (the pods' image)")
        return self

    @property
    def resolved_kube_api_url(self) -> str:
        if self.kube_api_url:
            return self.kube_api_url.rstrip("/")
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        if not host:
            raise RuntimeError(
                "LLMFORGE_SUBMIT=rayjob outside a pod needs LLMFORGE_KUBE_API_URL "
                "(no KUBERNETES_SERVICE_HOST)"
            )
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Settings end up in logs and tracebacks; a database URL carries its password.
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name == "database_url" and value else value

    def public(self) -> dict[str, Any]:
        """The effective settings, safe to show: passwords in URLs are masked."""
        shown = self.model_dump(mode="json", exclude={"bootstrap_admin_key"})
        for name in ("database_url", "ray_address", "public_url"):
            if shown.get(name):
                shown[name] = mask_url(shown[name])
        endpoint = storage.endpoint()
        shown["s3_endpoint"] = mask_url(endpoint) if endpoint else None
        shown["resolved_database_url"] = mask_url(self.resolved_database_url)
        shown["resolved_artifact_root"] = self.resolved_artifact_root
        return shown

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'llmforge.db').resolve()}"

    @property
    def resolved_artifact_root(self) -> str:
        if self.artifact_root:
            return self.artifact_root
        return str((self.home / "artifacts").resolve())

    @property
    def shared_root_list(self) -> list[str]:
        return _split(self.shared_roots)

    @property
    def shared_write_root_list(self) -> list[str]:
        return _split(self.shared_write_roots)

    @property
    def resolved_data_root(self) -> str | None:
        if self.data_root:
            return self.data_root
        beside = default_data_root()
        return str(beside.resolve()) if beside is not None else None

    def team_area(self, team: str) -> str:
        """Where a team's jobs write by default, and what only that team reads and writes."""
        return storage.join(self.resolved_artifact_root, "teams", team)

    @property
    def resolved_public_url(self) -> str:
        return self.public_url or f"http://{self.api_host}:{self.api_port}"

    @property
    def job_driver_memory_bytes(self) -> int | None:
        if self.job_driver_memory_mb is None:
            return None
        return self.job_driver_memory_mb * 1024 * 1024

    @property
    def resolved_job_python(self) -> str:
        if self.job_python:
            return self.job_python
        return "python" if self.ray_address else sys.executable


def _split(roots: str) -> list[str]:
    return [root.strip() for root in roots.split(",") if root.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
