"""Gang scheduling (services/kuberay.py): with LLMFORGE_SUBMIT=rayjob, training-like jobs become
KubeRay RayJobs labelled for Kueue, their state is read back from the RayJob's status, and
cancelling deletes them; the other kinds still go to the Ray Jobs API.

No Kubernetes API server can run on this machine (no container engine; kind, k3s, kwok and
envtest are unavailable), so the control plane talks to a small real HTTP server started here
that implements the calls it makes (create, get and delete a namespaced RayJob) the way the API
server answers them (201/409 on create, 404 for a missing object, a Status on delete), and
records each request so the test can check paths, bodies and the bearer token. The RayJob the
code builds is validated strictly against KubeRay's CRD (unknown fields are errors), as the API
server would.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.kuberay import KubeRayJobs, rayjob_state
from services.ray_client import AlreadySubmitted, LostJob, RayJobs
from services.ray_head import free_port
from services.rayjob_manifest import QUEUE_LABEL, rayjob_manifest
from services.settings import Settings
from services.store.models import JobState
from tests.infra.test_manifests import pod_problems, pod_specs, schema_errors

NAMESPACE = "llmforge"
TOKEN = "kube-sa-token-for-tests"
PREFIX = f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayjobs"


@dataclass
class FakeKube:
    """What the API server holds (RayJobs by name) and every request it answered."""

    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set_status(self, name: str, **status: str) -> None:
        """What KubeRay's operator would write."""
        with self.lock:
            self.objects[name]["status"] = status


def _handler(kube: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str, message: str) -> None:
            self._answer(
                code,
                {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                 "message": message, "code": code},
            )  # fmt: skip

        def _begin(self) -> tuple[str, dict[str, Any] | None] | None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            kube.requests.append((self.command, self.path, body))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._status(401, "Unauthorized", "Unauthorized")
                return None
            path = self.path.split("?")[0]
            if not path.startswith(PREFIX):
                self._status(404, "NotFound", f"no route {path}")
                return None
            return path.removeprefix(PREFIX).strip("/"), body

        def do_POST(self) -> None:
            begun = self._begin()
            if begun is None:
                return
            _, body = begun
            assert body is not None
            name = body["metadata"]["name"]
            with kube.lock:
                if name in kube.objects:
                    self._status(409, "AlreadyExists", f'rayjobs.ray.io "{name}" already exists')
                    return
                kube.objects[name] = {**body, "status": {}}
            self._answer(201, body)

        def do_GET(self) -> None:
            begun = self._begin()
            if begun is None:
                return
            with kube.lock:
                found = kube.objects.get(begun[0])
            if found is None:
                self._status(404, "NotFound", f'rayjobs.ray.io "{begun[0]}" not found')
                return
            self._answer(200, copy.deepcopy(found))

        def do_DELETE(self) -> None:
            begun = self._begin()
            if begun is None:
                return
            with kube.lock:
                found = kube.objects.pop(begun[0], None)
            if found is None:
                self._status(404, "NotFound", f'rayjobs.ray.io "{begun[0]}" not found')
                return
            self._answer(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

    return Handler


@pytest.fixture()
def kube() -> Iterator[tuple[FakeKube, str]]:
    state = FakeKube()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _settings(tmp_path: Path, api_url: str = "http://127.0.0.1:1", **extra: Any) -> Settings:
    token = tmp_path / "sa-token"
    token.write_text(TOKEN + "\n")
    return Settings(
        home=tmp_path / "home",
        ray_address=f"http://127.0.0.1:{free_port()}",  # no Ray here: the Jobs API path fails
        poll_interval_s=0.1,
        auth=False,
        shared_write_roots=str(tmp_path / "data"),
        submit="rayjob",
        rayjob_image="registry.example.com/llmforge:0.1.0-cpu",
        rayjob_gpu_image="registry.example.com/llmforge:0.1.0-gpu",
        kube_api_url=api_url,
        kube_token_path=token,
        rayjob_status_ttl_s=0,
        **extra,
    )


def _manifest(settings: Settings, kind: str = "train", **spec: Any) -> dict[str, Any]:
    return rayjob_manifest(
        settings,
        name="llmforge-abc-1",
        kind=kind,
        spec={"workers": 2, **spec},
        entrypoint="python -m ray_jobs.train --spec s3://b/jobs/abc/spec.json",
        env={"LLMFORGE_JOB_ID": "abc", "LLMFORGE_JOB_TOKEN": "lfj_x"},
        metadata={"llmforge_job_id": "abc", "llmforge_team": "default"},
        driver_cpus=1,
    )


@pytest.mark.parametrize("use_gpu", [False, True])
def test_the_rayjob_validates_strictly_against_kuberays_crd(tmp_path: Path, use_gpu: bool) -> None:
    doc = _manifest(_settings(tmp_path), use_gpu=use_gpu)
    assert schema_errors(doc) == []
    for where, pod in pod_specs(doc):
        assert pod_problems(pod, where) == [], where
    labels = doc["metadata"]["labels"]
    assert labels[QUEUE_LABEL] == "llmforge-team"
    spec = doc["spec"]
    assert spec["suspend"] is True and spec["shutdownAfterJobFinishes"] is True
    assert spec["rayClusterSpec"]["authOptions"] == {
        "mode": "token",
        "secretName": "llmforge-ray-token",
    }
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) is use_gpu
    image = group["template"]["spec"]["containers"][0]["image"]
    assert image.endswith("-gpu" if use_gpu else "-cpu")
    for where, pod in pod_specs(doc):
        assert pod["priorityClassName"] == "llmforge-normal", where
        assert pod["serviceAccountName"] == "llmforge-ray", where
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["LLMFORGE_JOB_ID"] == "abc"


def test_the_crd_check_refuses_what_kuberay_would(tmp_path: Path) -> None:
    """The same validation rejects an unknown field and a mistyped one."""
    doc = _manifest(_settings(tmp_path))
    unknown = copy.deepcopy(doc)
    unknown["spec"]["entrypointNumCPUs"] = 1
    assert any("entrypointNumCPUs" in e for e in schema_errors(unknown))
    mistyped = copy.deepcopy(doc)
    mistyped["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert schema_errors(mistyped)


def test_tune_asks_for_every_concurrent_trials_workers_at_low_priority(tmp_path: Path) -> None:
    doc = _manifest(_settings(tmp_path), kind="tune", max_concurrent_trials=3)
    (group,) = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == 6
    assert group["template"]["spec"]["priorityClassName"] == "llmforge-low"
    assert schema_errors(doc) == []


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ({}, JobState.pending),
        ({"jobDeploymentStatus": "Suspended"}, JobState.pending),
        ({"jobDeploymentStatus": "Initializing"}, JobState.pending),
        ({"jobDeploymentStatus": "Running", "jobStatus": "PENDING"}, JobState.pending),
        ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, JobState.running),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, JobState.succeeded),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"}, JobState.failed),
        ({"jobDeploymentStatus": "Failed", "jobStatus": "RUNNING"}, JobState.failed),
        ({"jobDeploymentStatus": "ValidationFailed"}, JobState.failed),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}, JobState.stopped),
    ],
)
def test_rayjob_status_to_job_state(status: dict[str, str], state: JobState) -> None:
    assert rayjob_state(status) == state


def _wait(what: Callable[[], Any], timeout_s: float = 15) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s}s")


def _state(client: TestClient, job_id: str) -> str:
    return str(client.get(f"/api/v1/jobs/{job_id}").json()["state"])


def test_train_jobs_go_through_the_kubernetes_api(
    tmp_path: Path, kube: tuple[FakeKube, str]
) -> None:
    fake, url = kube
    settings = _settings(tmp_path, url)
    data = tmp_path / "data"
    spec = {"data": str(data / "shards"), "output": str(data / "out"), "workers": 2}
    with TestClient(create_app(settings)) as client:
        r = client.post("/api/v1/jobs", json={"kind": "train", "spec": spec})
        assert r.status_code in (200, 201), r.text
        job_id = r.json()["id"]
        (name,) = _wait(lambda: list(fake.objects))
        created = [(m, p, b) for m, p, b in fake.requests if m == "POST"]
        assert [p for _, p, _ in created] == [PREFIX]
        body = created[0][2]
        assert body is not None and schema_errors(body) == []
        assert body["metadata"]["labels"][QUEUE_LABEL] == "llmforge-team"
        assert body["spec"]["jobId"] == name and job_id in name
        assert body["spec"]["metadata"]["llmforge_job_id"] == job_id
        assert body["spec"]["entrypoint"].endswith(f"/jobs/{job_id}/spec.json")
        assert _wait(lambda: _state(client, job_id) == JobState.pending.value)
        assert client.get(f"/api/v1/jobs/{job_id}").json()["dashboard_url"] is None
        logs = client.get(f"/api/v1/jobs/{job_id}/logs").json()["logs"]
        assert "waiting for Kueue" in logs

        fake.set_status(name, jobDeploymentStatus="Running", jobStatus="RUNNING")
        assert _wait(lambda: _state(client, job_id) == JobState.running.value)
        fake.set_status(name, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
        assert _wait(lambda: _state(client, job_id) == JobState.succeeded.value)

        again = spec | {"output": str(data / "o2")}
        r = client.post("/api/v1/jobs", json={"kind": "train", "spec": again})
        second = r.json()["id"]
        (name2,) = _wait(lambda: [n for n in fake.objects if second in n])
        r = client.post(f"/api/v1/jobs/{second}/cancel")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == JobState.stopped.value
        assert ("DELETE", f"{PREFIX}/{name2}") in [(m, p) for m, p, _ in fake.requests]
        assert name2 not in fake.objects

    # Every request carried the ServiceAccount's token, and only RayJob paths were used.
    assert all(p.startswith(PREFIX) for _, p, _ in fake.requests)


def test_a_rayjob_that_failed_fails_the_job_with_kuberays_message(
    tmp_path: Path, kube: tuple[FakeKube, str]
) -> None:
    fake, url = kube
    data = tmp_path / "data"
    spec = {"checkpoint": str(data / "ck"), "data": str(data / "sft"), "output": str(data / "o")}
    with TestClient(create_app(_settings(tmp_path, url))) as client:
        r = client.post("/api/v1/jobs", json={"kind": "finetune", "spec": spec})
        job_id = r.json()["id"]
        (name,) = _wait(lambda: list(fake.objects))
        fake.set_status(name, jobDeploymentStatus="Failed", message="submitter pod failed")
        assert _wait(lambda: _state(client, job_id) == JobState.failed.value)
        assert "submitter pod failed" in client.get(f"/api/v1/jobs/{job_id}").json()["message"]


def test_other_kinds_still_use_the_ray_jobs_api(tmp_path: Path, kube: tuple[FakeKube, str]) -> None:
    """A curate job is no RayJob: it goes to RAY_ADDRESS's Jobs API (nothing listens here, so
    it fails visibly) and the Kubernetes API is never asked."""
    fake, url = kube
    spec = {"input": str(tmp_path / "data" / "raw"), "output": str(tmp_path / "data" / "cur")}
    with TestClient(create_app(_settings(tmp_path, url))) as client:
        job_id = client.post("/api/v1/jobs", json={"kind": "curate", "spec": spec}).json()["id"]
        assert _wait(lambda: _state(client, job_id) == JobState.failed.value)
    assert fake.requests == []


def test_a_wrong_token_is_refused_and_the_job_fails_visibly(
    tmp_path: Path, kube: tuple[FakeKube, str]
) -> None:
    _, url = kube
    settings = _settings(tmp_path, url)
    settings.kube_token_path.write_text("someone-else")
    spec = {"data": str(tmp_path / "data" / "shards"), "output": str(tmp_path / "data" / "out")}
    with TestClient(create_app(settings)) as client:
        job_id = client.post("/api/v1/jobs", json={"kind": "train", "spec": spec}).json()["id"]
        assert _wait(lambda: _state(client, job_id) == JobState.failed.value)
        assert "401" in client.get(f"/api/v1/jobs/{job_id}").json()["message"]


def test_rayjob_mode_needs_an_image(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LLMFORGE_RAYJOB_IMAGE"):
        Settings(home=tmp_path, submit="rayjob")


def test_a_rayjob_created_before_is_adopted_and_a_deleted_one_is_lost(
    tmp_path: Path, kube: tuple[FakeKube, str]
) -> None:
    """A leader that died between the API server's answer and its commit: the next one's
    create meets 409 and adopts the RayJob with the token it was given, never a second run."""
    fake, url = kube
    settings = _settings(tmp_path, url)
    ray = RayJobs(str(settings.ray_address), None, KubeRayJobs(settings, None))
    submit = {
        "submission_id": "llmforge-abc-1",
        "entrypoint": "python -m ray_jobs.train --spec s",
        "env": {"LLMFORGE_JOB_TOKEN": "lfj_1"},
        "kind": "train",
        "spec": {"workers": 1},
    }
    first = ray.submit(**submit)  # type: ignore[arg-type]
    with pytest.raises(AlreadySubmitted) as adopted:
        ray.submit(**submit)  # type: ignore[arg-type]
    assert adopted.value.submission_id == first == "rayjob:llmforge-abc-1"
    assert len(fake.objects) == 1
    assert ray.env_of(first)["LLMFORGE_JOB_TOKEN"] == "lfj_1"
    assert ray.state(first) == JobState.pending
    fake.objects.clear()
    with pytest.raises(LostJob, match="no longer exists"):
        ray.state(first)


def test_a_rayjobs_status_is_read_at_most_once_per_ttl(
    tmp_path: Path, kube: tuple[FakeKube, str]
) -> None:
    """The scheduler asks every tick; the API server is asked once per rayjob_status_ttl_s."""
    fake, url = kube
    settings = _settings(tmp_path, url).model_copy(update={"rayjob_status_ttl_s": 60})
    ray = RayJobs(str(settings.ray_address), None, KubeRayJobs(settings, None))
    job = ray.submit(
        submission_id="llmforge-ttl", entrypoint="e", env={}, kind="train", spec={"workers": 1}
    )
    for _ in range(5):
        assert ray.state(job) == JobState.pending
    assert [m for m, _, _ in fake.requests].count("GET") == 1
    ray.stop(job)
    with pytest.raises(LostJob):
        ray.state(job)  # a stop forgets what was seen: the next read asks again


def test_the_kinds_and_their_priorities_are_set_by_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMFORGE_SUBMIT", "rayjob")
    monkeypatch.setenv("LLMFORGE_RAYJOB_IMAGE", "registry.example.com/llmforge:0.1.0-cpu")
    monkeypatch.setenv("LLMFORGE_RAYJOB_KINDS", '{"train": "llmforge-high"}')
    settings = Settings(home=tmp_path, kube_api_url="http://127.0.0.1:1")
    gang = KubeRayJobs(settings, None)
    assert gang.handles("train") and not gang.handles("evaluate") and not gang.handles(None)
    doc = _manifest(settings)
    assert {p["priorityClassName"] for _, p in pod_specs(doc)} == {"llmforge-high"}
