"""Registered models deployed as Ray Serve applications on the cluster, and the requests the
completions routes send them.

The control plane stays a client of Ray's REST APIs, never a Ray driver: a deploy or an undeploy
is a small Ray job (``ray_jobs/serve_model.py``) submitted through the Jobs API, which calls
``serve.run`` or ``serve.delete`` (a Serve application outlives the job that deployed it); a
deployment's state is read from the dashboard's Serve API (``GET /api/serve/applications/``) and
from that job. Each deployment is a row of the store (``deployments``), so a control plane that
restarts knows what it deployed, and deploys again what its Ray cluster no longer runs (an
embedded head is a new cluster at each start).

Requests reach a deployment through Serve's HTTP proxy (``serve_url``), which this process
calls with the request prepared as ``llm.serve.wire`` JSON; keys, team scoping and OpenAI's
shapes stay in the routes. The proxy has no authentication of its own: each request carries the
application's key (an HMAC of Ray's cluster token and the application's name), which its
replicas check against the SHA-256 they were given.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from contracts.serving import APP_ENV, KEY_HEADER, DeploySpec, ServeApp, app_name
from llm.serve import wire
from llm.serve.errors import EngineError
from llm.serve.outputs import Delta, Usage
from llm.serve.requests import Request
from services.ray_client import LostJob, RayJobs
from services.redact import redact
from services.serving import chat_template, tokenizer_uri
from services.settings import Settings
from services.store import registry as store
from services.store.models import (
    Artifact,
    ArtifactCategory,
    Deployment,
    DeploymentState,
    JobState,
    utcnow,
)

log = logging.getLogger("llmforge.deployments")
# Serve's application states -> a deployment's
_SERVE_STATES = {
    "RUNNING": DeploymentState.running,
    "DEPLOYING": DeploymentState.deploying,
    "NOT_STARTED": DeploymentState.deploying,
    "DEPLOY_FAILED": DeploymentState.failed,
    "UNHEALTHY": DeploymentState.unhealthy,
    "DELETING": DeploymentState.undeploying,
}
RETRY_AFTER_S = 2
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Unavailable(EngineError):
    """The deployment cannot take the request now (starting, gone, or Serve's queue full)."""

    def __init__(self, message: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _End:
    pass


class RemoteHandle:
    """A request running on a deployment, read like an engine's RequestHandle: ``batches()``
    (or ``async for``) gives its Deltas, ``usage`` is set once they end, and ``cancel`` closes
    the stream, which makes Serve cancel the request in its replica."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self.usage: Usage | None = None
        self.cancelled = False
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for text in self._response.aiter_lines():
                if not text:
                    continue
                item = json.loads(text)
                if "d" in item:
                    self._queue.put_nowait([wire.parse_delta(d) for d in item["d"]])
                elif "usage" in item:
                    found = item["usage"]
                    self.usage = Usage(int(found[0]), int(found[1])) if found else None
                elif "error" in item:
                    self._queue.put_nowait(wire.parse_error(item))
        except (httpx.HTTPError, ValueError) as e:
            self._queue.put_nowait(EngineError(f"the deployment's stream broke off: {e}"))
        finally:
            self._queue.put_nowait(_End())
            await self._response.aclose()

    def cancel(self) -> None:
        if not self._task.done():
            self.cancelled = True
            self._task.cancel()

    async def batches(self) -> AsyncIterator[list[Delta]]:
        """The deltas as they arrive, all those already waiting at once."""
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            deltas: list[Delta] = []
            for item in items:
                if isinstance(item, _End):
                    if deltas:
                        yield deltas
                    return
                if isinstance(item, Exception):
                    raise item
                assert isinstance(item, list)
                deltas.extend(item)
            if deltas:
                yield deltas

    async def __aiter__(self) -> AsyncIterator[Delta]:
        async for deltas in self.batches():
            for delta in deltas:
                yield delta


def _replicas(app: dict[str, Any]) -> int:
    return sum(
        1
        for deployment in app.get("deployments", {}).values()
        for replica in deployment.get("replicas", [])
        if replica.get("state") == "RUNNING"
    )


def _short(message: str) -> str:
    """A Serve message's first line and, where a traceback follows, its last (the error)."""
    lines = [line.strip() for line in _ANSI.sub("", message).splitlines() if line.strip()]
    return " ... ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else "".join(lines)


def _message(app: dict[str, Any]) -> str | None:
    """Serve's word on an application: its own message and those of its deployments that are
    not healthy (where a replica's constructor error is)."""
    parts = [_short(str(app.get("message") or ""))]
    for name, deployment in app.get("deployments", {}).items():
        if deployment.get("status") not in (None, "HEALTHY") and deployment.get("message"):
            parts.append(f"{name}: {_short(str(deployment['message']))}")
    found = "; ".join(p for p in parts if p)
    return redact(found[:2000]) if found else None


class Deployments:
    """The deployments of this control plane's models (see the module docstring)."""

    def __init__(self, settings: Settings, ray: RayJobs, *, serve_url: str, http_port: int):
        self.settings, self.ray = settings, ray
        self.serve_url = serve_url.rstrip("/")
        self.http_port = http_port
        self._client: httpx.AsyncClient | None = None

    # --- deploying ---------------------------------------------------------------------------

    def key(self, app: str) -> str | None:
        """The application's request key: an HMAC of Ray's token (None without a token)."""
        token = self.ray.token
        if token is None:
            return None
        return hmac.new(token.value.encode(), app.encode(), hashlib.sha256).hexdigest()

    def serve_app(self, session: Session, artifact: Artifact, spec: DeploySpec) -> ServeApp:
        name = app_name(artifact.id)
        key = self.key(name)
        return ServeApp(
            name=name,
            model_id=artifact.id,
            model_uri=artifact.uri,
            tokenizer_uri=tokenizer_uri(session, artifact),
            chat_template=chat_template(session, artifact),
            spec=spec,
            key_sha256=hashlib.sha256(key.encode()).hexdigest() if key else None,
            http_host=self.settings.serve_host,
            http_port=self.http_port,
        )

    def _submit(self, model_id: str, args: str, env: dict[str, str]) -> str:
        python = self.settings.resolved_job_python
        return self.ray.submit(
            submission_id=f"llmforge-serve-{model_id}-{secrets.token_hex(4)}",
            entrypoint=f"{python} -m ray_jobs.serve_model {args}",
            env=env,
        )

    def deploy(
        self, session: Session, artifact: Artifact, spec: DeploySpec, owner: str | None
    ) -> tuple[Deployment, bool]:
        """(the deployment, whether a deploy job was submitted): a model deployed with this
        very spec is left as it is; another spec redeploys it (Serve updates it in place)."""
        found = session.get(Deployment, artifact.id)
        wanted = spec.model_dump(mode="json")
        if found is not None and DeploymentState(found.state).active and found.spec == wanted:
            return found, False
        app = self.serve_app(session, artifact, spec)
        submission = self._submit(artifact.id, "deploy", {APP_ENV: app.model_dump_json()})
        deployment = found or Deployment(model_id=artifact.id, created_at=utcnow(), replicas=0)
        deployment.app = app.name
        deployment.state = DeploymentState.deploying.value
        deployment.spec = wanted
        deployment.message = None
        deployment.ray_submission_id = submission
        deployment.owner = owner
        deployment.team = artifact.team
        deployment.updated_at = utcnow()
        if found is None:
            session.add(deployment)
        return deployment, True

    def undeploy(self, session: Session, deployment: Deployment) -> None:
        deployment.ray_submission_id = self._submit(
            deployment.model_id, f"delete {deployment.app}", {}
        )
        deployment.state = DeploymentState.undeploying.value
        deployment.message = None
        deployment.updated_at = utcnow()

    # --- watching ----------------------------------------------------------------------------

    def applications(self) -> dict[str, Any] | None:
        """Serve's applications on the cluster, or None when the dashboard does not answer."""
        try:
            return self.ray.serve_applications()
        except (httpx.HTTPError, ValueError) as e:
            log.warning("cannot read Serve's applications: %s", e)
            return None

    def _job_failure(self, deployment: Deployment) -> str | None:
        """Why the deployment's last job failed, or None while it has not."""
        submission = deployment.ray_submission_id
        if submission is None:
            return None
        try:
            state = self.ray.state(submission)
        except LostJob as e:
            return str(e)
        if state in (JobState.failed, JobState.stopped):
            return redact(self.ray.failure_message(submission))
        return None

    def refresh(
        self, session: Session, deployment: Deployment, apps: dict[str, Any] | None = None
    ) -> Deployment:
        """The deployment's state as Serve (and its last job) tell it now, stored."""
        state = DeploymentState(deployment.state)
        if state == DeploymentState.undeployed:
            return deployment
        apps = self.applications() if apps is None else apps
        if apps is None:
            return deployment
        found = apps.get(deployment.app)
        message = deployment.message
        if found is not None:
            seen = _SERVE_STATES.get(str(found.get("status")), DeploymentState.deploying)
            deployment.replicas = _replicas(found)
            if state == DeploymentState.undeploying:
                failure = self._job_failure(deployment)
                if failure is not None:  # the delete failed: Serve still runs it
                    state, message = seen, f"undeploy failed: {failure}"
            else:
                state, message = seen, _message(found)
        else:
            deployment.replicas = 0
            if state == DeploymentState.undeploying:
                state, message = DeploymentState.undeployed, None
            elif state == DeploymentState.deploying:
                failure = self._job_failure(deployment)
                if failure is not None:
                    state, message = DeploymentState.failed, failure
            elif state.active:
                state = DeploymentState.failed
                message = (
                    "the Ray cluster no longer runs this deployment (was it restarted?): "
                    "deploy the model again"
                )
        if (state.value, message) != (deployment.state, deployment.message):
            deployment.state, deployment.message = state.value, message
            deployment.updated_at = utcnow()
        session.commit()
        return deployment

    def restore(self, sessions: sessionmaker[Session]) -> None:
        """Deploy again the models this store has deployed that the cluster no longer runs (a
        new embedded head, or a restarted cluster)."""
        with sessions() as session:
            active = [
                d for d in session.scalars(select(Deployment)) if DeploymentState(d.state).active
            ]
            artifacts = {}
            for deployment in active:
                artifact = store.get_artifact(
                    session, artifact_id=deployment.model_id, category=ArtifactCategory.model
                )
                if artifact is None:
                    deployment.state = DeploymentState.failed.value
                    deployment.message = (
                        f"not deployed again after a restart: model {deployment.model_id} is "
                        "no longer registered"
                    )
                else:
                    artifacts[deployment.model_id] = artifact
            session.commit()
            if not artifacts:
                return
            apps = self.applications()
            if apps is None:
                return
            for deployment in active:
                artifact = artifacts.get(deployment.model_id)
                if artifact is None or deployment.app in apps:
                    continue
                try:
                    spec = DeploySpec.model_validate(deployment.spec)
                    deployment.state = DeploymentState.undeployed.value  # deploy() submits anew
                    self.deploy(session, artifact, spec, deployment.owner)
                    log.info("deploying %s again (the cluster no longer ran it)", deployment.app)
                except Exception as e:
                    log.exception("cannot deploy %s again", deployment.app)
                    deployment.state = DeploymentState.failed.value
                    deployment.message = redact(f"not deployed again after a restart: {e}")
                session.commit()

    def restore_in_background(self, sessions: sessionmaker[Session]) -> threading.Thread:
        thread = threading.Thread(
            target=self.restore, args=(sessions,), name="llmforge-deployments", daemon=True
        )
        thread.start()
        return thread

    # --- requests ----------------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(connect=10, read=None, write=30, pool=30),
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
            )
        return self._client

    async def open(
        self, deployment: Deployment, request: Request, adapter: wire.AdapterRef | None = None
    ) -> RemoteHandle:
        """Send the request to the deployment (for ``adapter``, a LoRA adapter of the deployed
        model, where given); its refusals raise as an engine's would (ParamError, QueueFull,
        EngineError), and one that cannot be reached Unavailable."""
        url = f"{self.serve_url}/{deployment.app}"
        key = self.key(deployment.app)
        sent = self.client.build_request(
            "POST",
            url,
            json=wire.request_json(request, adapter),
            headers={KEY_HEADER: key} if key else {},
        )
        try:
            response = await self.client.send(sent, stream=True)
        except httpx.HTTPError as e:
            raise Unavailable(
                f"the deployment of model {deployment.model_id} cannot be reached: {e}"
            ) from e
        if response.status_code == 200:
            return RemoteHandle(response)
        body = await response.aread()
        await response.aclose()
        try:
            item = json.loads(body)
        except ValueError:
            item = None
        if isinstance(item, dict) and isinstance(item.get("error"), dict):
            error = wire.parse_error(item)
            if response.status_code in (422, 429):
                raise error
            raise Unavailable(str(error))
        raise Unavailable(
            f"the deployment of model {deployment.model_id} answered {response.status_code}: "
            f"{body[:200].decode(errors='replace')}"
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
