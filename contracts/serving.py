"""A model deployed as a Ray Serve application: what a user asks for (``DeploySpec``, the body
of ``POST /api/v1/models/{id}/deploy``) and what the deploy job and the replicas are given
(``ServeApp``). The control plane writes both; ``ray_jobs/serve_model.py`` reads them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

APP_PREFIX = "llmforge-"
APP_ENV = "LLMFORGE_SERVE_APP"  # the deploy job's ServeApp, as JSON
KEY_HEADER = "X-Llmforge-Deployment-Key"


def app_name(model_id: str) -> str:
    """A model's Serve application (and its route prefix, with a leading slash)."""
    return f"{APP_PREFIX}{model_id}"


class DeploySpec(BaseModel):
    """Replicas and autoscaling (Ray Serve's), and each replica's engine."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(default=1, ge=0, le=64, description="0: scale to zero when idle")
    max_replicas: int = Field(default=1, ge=1, le=64, description="at least min_replicas")
    target_ongoing_requests: float | None = Field(
        default=None,
        gt=0,
        le=4096,
        description="the requests per replica that autoscaling aims at (default: max_batch)",
    )
    device: Literal["cpu", "cuda"] = Field(default="cpu", description="cuda: one GPU a replica")
    num_cpus: float = Field(default=1.0, ge=0, le=64, description="CPUs a replica reserves")
    max_batch: int = Field(
        default=16, ge=1, le=1024, description="sequences a replica runs per step"
    )
    max_queue: int = Field(
        default=64, ge=0, le=65536, description="requests a replica queues before a 429"
    )
    cache_mb: int = Field(default=1024, ge=1, description="a replica's KV cache budget")

    @field_validator("max_replicas")
    @classmethod
    def _at_least_min(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_replicas")
        if low is not None and value < low:
            raise ValueError(f"must be at least min_replicas ({low})")
        return value

    @property
    def target(self) -> float:
        return self.target_ongoing_requests or float(self.max_batch)


class ServeApp(BaseModel):
    """One deployed model, as the deploy job and its replicas get it."""

    model_config = ConfigDict(extra="forbid")

    name: str  # the Serve application, also its route prefix
    model_id: str
    model_uri: str
    tokenizer_uri: str | None = None  # for a checkpoint without a tokenizer beside it
    chat_template: str | None = None  # a fine-tune's
    spec: DeploySpec
    # SHA-256 of the key each request must carry (KEY_HEADER): Serve's HTTP proxy has no
    # authentication of its own. None: the cluster has no token, and neither has the app.
    key_sha256: str | None = None
    # Serve's HTTP proxy, set when Serve starts on the cluster (the first deploy): later
    # deploys keep the proxy as it is.
    http_host: str = "127.0.0.1"
    http_port: int = 8000

    @property
    def route_prefix(self) -> str:
        return f"/{self.name}"
