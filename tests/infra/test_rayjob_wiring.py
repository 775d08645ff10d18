"""Gang scheduling as each overlay deploys it: the control plane's rendered configuration makes
it submit RayJobs (LLMFORGE_SUBMIT=rayjob) with the overlay's own images, its ServiceAccount may
create, read and delete RayJobs and nothing more, and the RayJob that the code builds from that
very configuration validates strictly against KubeRay's CRD and names a LocalQueue, a
ServiceAccount, PriorityClasses and a NetworkPolicy label that the overlay really has.
"""

from __future__ import annotations

from typing import Any

import pytest

from services.ray_client import RayJobs
from services.rayjob_manifest import POD_LABEL, QUEUE_LABEL, rayjob_manifest
from services.settings import Settings
from tests.infra.test_kustomize import OVERLAYS, _one, rendered
from tests.infra.test_manifests import pod_specs, schema_errors


def _settings(overlay: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings the control plane's pods get from the overlay's ConfigMap."""
    data = _one(rendered(overlay), "ConfigMap", "llmforge-controlplane")["data"]
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    return Settings()


def _built(settings: Settings, kind: str, use_gpu: bool) -> dict[str, Any]:
    return rayjob_manifest(
        settings,
        name="llmforge-0123456789abcdef-1",
        kind=kind,
        spec={"workers": 2, "use_gpu": use_gpu},
        entrypoint="python -m ray_jobs.train --spec s3://bucket/jobs/x/spec.json",
        env={"LLMFORGE_JOB_ID": "x"},
        metadata={"llmforge_job_id": "x"},
        driver_cpus=settings.job_driver_num_cpus,
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_control_plane_submits_rayjobs_with_the_overlays_images(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered(overlay)
    settings = _settings(overlay, monkeypatch)
    assert settings.submit == "rayjob"
    assert set(settings.rayjob_kinds) == {"train", "finetune", "evaluate", "tune"}
    deployment = _one(docs, "Deployment", "llmforge-controlplane")
    pod = deployment["spec"]["template"]["spec"]
    assert settings.rayjob_image == pod["containers"][0]["image"]
    groups = {g["groupName"]: g for g in _one(docs, "RayCluster")["spec"]["workerGroupSpecs"]}
    gpu_group = groups.get("gpu", groups["cpu"])
    assert settings.rayjob_gpu_image == gpu_group["template"]["spec"]["containers"][0]["image"]
    # The pod that talks to the Kubernetes API has its token; the SA's default stays off.
    assert pod["automountServiceAccountToken"] is True
    account = _one(docs, "ServiceAccount", "llmforge-controlplane")
    assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_control_plane_may_manage_rayjobs_and_nothing_else(overlay: str) -> None:
    docs = rendered(overlay)
    role = _one(docs, "Role", "llmforge-controlplane-rayjobs")
    assert role["rules"] == [
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "delete"]}
    ]
    binding = _one(docs, "RoleBinding", "llmforge-controlplane-rayjobs")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "llmforge-controlplane-rayjobs",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "llmforge-controlplane", "namespace": "llmforge"}
    ]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize(("kind", "use_gpu"), [("train", True), ("evaluate", False)])
def test_the_rayjob_built_from_the_overlay_is_valid_and_points_at_real_objects(
    overlay: str, kind: str, use_gpu: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered(overlay)
    job = _built(_settings(overlay, monkeypatch), kind, use_gpu)
    assert schema_errors(job) == []
    queues = {d["metadata"]["name"] for d in docs if d["kind"] == "LocalQueue"}
    assert job["metadata"]["labels"][QUEUE_LABEL] in queues
    classes = {d["metadata"]["name"] for d in docs if d["kind"] == "PriorityClass"}
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for where, pod in pod_specs(job):
        assert pod["priorityClassName"] in classes, where
        assert pod["serviceAccountName"] in accounts, where
        for container in pod["containers"]:
            refs = {e["configMapRef"]["name"] for e in container.get("envFrom") or []}
            assert refs <= configmaps, where
    templates = [job["spec"]["submitterPodTemplate"]]
    cluster = job["spec"]["rayClusterSpec"]
    templates += [cluster["headGroupSpec"]["template"]]
    templates += [g["template"] for g in cluster["workerGroupSpecs"]]
    policy = _one(docs, "NetworkPolicy", "llmforge-rayjobs")
    selected = policy["spec"]["podSelector"]["matchLabels"]
    for template in templates:
        assert selected.items() <= template["metadata"]["labels"].items()
    assert selected == {POD_LABEL: "true"}


def test_every_priority_class_the_setting_names_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    classes = {d["metadata"]["name"] for d in rendered("prod") if d["kind"] == "PriorityClass"}
    assert set(_settings("prod", monkeypatch).rayjob_kinds.values()) <= classes


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjob_pods_are_scraped_like_the_shared_clusters(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered(overlay)
    monitor = _one(docs, "PodMonitor", "llmforge-rayjobs")
    worker = _built(_settings(overlay, monkeypatch), "train", False)["spec"]["rayClusterSpec"]
    template = worker["workerGroupSpecs"][0]["template"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    )
    ports = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports
    recorded = set(monitor["spec"]["podTargetLabels"]) - {"ray.io/cluster"}  # KubeRay's own
    assert recorded <= set(template["metadata"]["labels"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_job_links_the_api_gives_open_in_a_browser(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(overlay, monkeypatch)
    ray = RayJobs(str(settings.ray_address), None, None, settings.ray_dashboard_public_url)
    link = ray.job_url("llmforge-abc")
    assert link == "http://127.0.0.1:8265/#/jobs/llmforge-abc", link
    assert "svc.cluster.local" in ray.dashboard_url  # the API itself talks to the Service
    assert ray.job_url("rayjob:llmforge-abc") is None  # its cluster is the job's own
