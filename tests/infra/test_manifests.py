"""Offline checks of the deployment manifests under infra/k8s (subfolders such as dev/ included)
and the image under infra/docker.

Custom resources (KubeRay, Kueue, Prometheus Operator) are validated against the openAPIV3Schema
of their CustomResourceDefinition from ``../shared/k8s-crds`` beside the checkout
(``LLMFORGE_K8S_CRDS`` overrides the folder); those tests skip when it is absent (fail under CI).
Like ``kubectl apply`` (strict field validation), fields a CRD schema does not declare are errors
too. Built-in kinds get structural checks by hand. The cross-file tests check that the pieces
point at each other (RAY_ADDRESS at the KubeRay head Service, LocalQueue at the ClusterQueue,
monitors at the right labels/ports). The storage tests check the one storage convention of a
cluster whose pods share no disk: every pod that touches artifacts loads the same ConfigMap
(region, endpoint) and Secret (credentials), node scratch is an emptyDir, and no pod mounts a
volume that could be shared.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.shared import K8S_CRDS

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "infra" / "k8s"
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"
CRD_DIR = Path(os.environ.get("LLMFORGE_K8S_CRDS", K8S_CRDS))

NAMESPACE = "llmforge"
RAY_VERSION = "2.60.0"
LIVE_PATH = "/api/v1/health/live"
READY_PATH = "/api/v1/health/ready"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SECRET_MARKERS = ("KEY", "SECRET", "PASSWORD", "TOKEN", "DATABASE_URL")

# Object storage (llm/storage.py): where it is comes from the ConfigMap, who we are from the Secret.
STORAGE_CONFIGMAP = "llmforge-storage"
S3_SECRET = "llmforge-s3"
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
REGION_KEYS = {"AWS_REGION", "AWS_DEFAULT_REGION"}
ENDPOINT_KEYS = {"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"}
STORAGE_KEYS = REGION_KEYS | ENDPOINT_KEYS
SCRATCH_ENV = "LLMFORGE_SCRATCH"
# Pod volumes that live and die with the pod on its node: nothing else may be mounted, since pods
# share no disk (object storage is the data plane). PVCs, hostPath, NFS, CSI, ... are refused.
LOCAL_VOLUME_SOURCES = {"emptyDir", "configMap", "secret", "projected", "downwardAPI"}

# Built-in kinds the manifests may use, with the top-level fields each may carry.
BUILTIN_KINDS: dict[tuple[str, str], set[str]] = {
    ("v1", "Namespace"): {"spec"},
    ("v1", "ConfigMap"): {"data", "binaryData", "immutable"},
    ("v1", "Secret"): {"data", "stringData", "type", "immutable"},
    ("v1", "Service"): {"spec"},
    ("v1", "ServiceAccount"): {"automountServiceAccountToken", "imagePullSecrets", "secrets"},
    ("apps/v1", "Deployment"): {"spec"},
    ("batch/v1", "Job"): {"spec"},
    ("policy/v1", "PodDisruptionBudget"): {"spec"},
    ("networking.k8s.io/v1", "NetworkPolicy"): {"spec"},
    ("networking.k8s.io/v1", "Ingress"): {"spec"},
    ("rbac.authorization.k8s.io/v1", "Role"): {"rules"},
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): {"roleRef", "subjects"},
    ("scheduling.k8s.io/v1", "PriorityClass"): {
        "value",
        "globalDefault",
        "description",
        "preemptionPolicy",
    },
}
CLUSTER_SCOPED = {"Namespace", "ClusterQueue", "ResourceFlavor", "PriorityClass"}
# Custom resources whose CRD is not among ../shared/k8s-crds: checked by hand (tests/infra/
# test_kustomize.py), until the CRD is added there.
NO_CRD = {("monitoring.coreos.com/v1", "PrometheusRule")}

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# --------------------------------------------------------------------------------------------------
# Loading


def _manifest_files() -> list[Path]:
    """Every manifest under infra/k8s (base/, overlays/*/, examples/), without what kustomize
    reads as instructions (kustomization.yaml, overlays' patches/); the rendered overlays are
    checked in tests/infra/test_kustomize.py."""
    found = [*K8S_DIR.rglob("*.yaml"), *K8S_DIR.rglob("*.yml")]
    return sorted(p for p in found if p.name != "kustomization.yaml" and "patches" not in p.parts)


def _load_manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in _manifest_files():
        name = path.relative_to(K8S_DIR).as_posix()
        with path.open() as f:
            for i, doc in enumerate(yaml.load_all(f, Loader=_Loader)):
                if doc is None:
                    continue
                assert isinstance(doc, dict), f"{name} document {i} is not a mapping"
                out.append((f"{name}#{i}", doc))
    return out


MANIFESTS = _load_manifests()


def _ident(item: tuple[str, dict[str, Any]]) -> str:
    where, doc = item
    return f"{where}:{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in MANIFESTS if doc.get("kind") == kind]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in _of_kind(kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


@functools.cache
def _crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(group, kind) -> CRD document, from every CRD file in CRD_DIR."""
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        with path.open() as f:
            for doc in yaml.load_all(f, Loader=_Loader):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    spec = doc["spec"]
                    index[(spec["group"], spec["names"]["kind"])] = doc
    return index


def _needs_crds() -> dict[tuple[str, str], dict[str, Any]]:
    if not CRD_DIR.is_dir():
        pytest.skip(f"CRD schemas not available at {CRD_DIR}")
    crds = _crds()
    if not crds:
        pytest.skip(f"no CustomResourceDefinitions under {CRD_DIR}")
    return crds


def _crd_version(doc: dict[str, Any]) -> dict[str, Any]:
    """The CRD version entry matching the document's apiVersion (fails if there is none)."""
    crds = _needs_crds()
    group, version = _split_api_version(doc["apiVersion"])
    crd = crds.get((group, doc["kind"]))
    assert crd is not None, f"no CRD for {doc['kind']}.{group} under {CRD_DIR}"
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    assert version in versions, f"{doc['kind']}.{group} has no version {version}: {list(versions)}"
    return versions[version]


# --------------------------------------------------------------------------------------------------
# Schema validation


def _unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Fields the structural schema does not declare (what `kubectl apply` rejects as unknown)."""
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            here = f"{path}.{key}"
            if props is not None and key in props:
                yield from _unknown_fields(sub, props[key], here)
            elif isinstance(extra, dict):
                yield from _unknown_fields(sub, extra, here)
            elif props is not None and extra is not True:
                yield here
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _unknown_fields(item, schema["items"], f"{path}[{i}]")


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """Everything wrong with a custom resource per its CRD schema (empty list: valid)."""
    schema = _crd_version(doc)["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft202012Validator(schema)
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]
    errors += [f"{p}: field not declared in schema" for p in _unknown_fields(doc, schema)]
    return errors


# --------------------------------------------------------------------------------------------------
# Structural checks shared by built-in kinds and the pods inside custom resources


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) for every pod template a manifest carries."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        yield "spec.template.spec", spec["template"]["spec"]
    elif kind == "RayCluster":
        yield from _ray_cluster_pods(spec, "spec")
    elif kind == "RayJob":
        if spec.get("rayClusterSpec"):
            yield from _ray_cluster_pods(spec["rayClusterSpec"], "spec.rayClusterSpec")
        if spec.get("submitterPodTemplate"):
            yield "spec.submitterPodTemplate.spec", spec["submitterPodTemplate"]["spec"]


def _ray_cluster_pods(spec: dict[str, Any], at: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield f"{at}.headGroupSpec", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs") or []:
        yield f"{at}.workerGroupSpecs[{group.get('groupName')}]", group["template"]["spec"]


def _is_secret_name(name: str) -> bool:
    return any(marker in name.upper() for marker in SECRET_MARKERS)


def env_problems(env: list[dict[str, Any]], where: str) -> list[str]:
    problems = []
    for var in env or []:
        name = var.get("name", "")
        if not name:
            problems.append(f"{where}: env entry without a name")
        elif _is_secret_name(name) and ("value" in var or "valueFrom" not in var):
            problems.append(f"{where}: {name} must come from valueFrom (a Secret), not a literal")
        elif _is_secret_name(name) and "secretKeyRef" not in var["valueFrom"]:
            problems.append(f"{where}: {name} must use valueFrom.secretKeyRef")
    return problems


def container_problems(container: dict[str, Any], where: str) -> list[str]:
    where = f"{where}.containers[{container.get('name')}]"
    problems = []
    if not container.get("name"):
        problems.append(f"{where}: no name")
    image = container.get("image") or ""
    if not image:
        problems.append(f"{where}: no image")
    elif image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
        problems.append(f"{where}: image {image!r} must carry an explicit version tag")
    limits = (container.get("resources") or {}).get("limits") or {}
    if not {"cpu", "memory"} <= set(limits):
        problems.append(f"{where}: resources.limits must set cpu and memory, got {sorted(limits)}")
    if (container.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: securityContext.allowPrivilegeEscalation must be false")
    problems += env_problems(container.get("env") or [], where)
    return problems


def pod_problems(pod: dict[str, Any], where: str) -> list[str]:
    problems = []
    if not pod.get("containers"):
        problems.append(f"{where}: no containers")
    for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        problems += container_problems(c, where)
    ctx = pod.get("securityContext") or {}
    if ctx.get("runAsNonRoot") is not True or ctx.get("runAsUser", 1) == 0:
        problems.append(f"{where}: securityContext must set runAsNonRoot: true (and not uid 0)")
    volumes = {v.get("name") for v in pod.get("volumes") or []}
    for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        for mount in c.get("volumeMounts") or []:
            if mount.get("name") not in volumes:
                name = mount.get("name")
                problems.append(f"{where}.containers[{c.get('name')}]: no volume {name!r}")
    return problems


def builtin_problems(doc: dict[str, Any]) -> list[str]:
    """Structural problems of a built-in kind (empty list: fine)."""
    problems = []
    meta = doc.get("metadata") or {}
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in BUILTIN_KINDS:
        return [f"unexpected apiVersion/kind {key}"]
    if not meta.get("name"):
        problems.append("metadata.name missing")
    extra = set(doc) - {"apiVersion", "kind", "metadata"} - BUILTIN_KINDS[key]
    if extra:
        problems.append(f"unknown top-level fields {sorted(extra)}")
    kind = doc["kind"]
    if kind == "Secret" and (doc.get("data") or doc.get("stringData")):
        problems.append("Secrets are created out of band; never commit secret values")
    if kind == "ConfigMap":
        problems += [
            f"ConfigMap value of {k} must be a string (quote it)"
            for k, v in (doc.get("data") or {}).items()
            if not isinstance(v, str)
        ]
        problems += [
            f"ConfigMap key {k} looks secret; put it in a Secret"
            for k in doc.get("data") or {}
            if _is_secret_name(k)
        ]
    if kind == "Service":
        ports = (doc.get("spec") or {}).get("ports") or []
        if not ports or not all(p.get("port") for p in ports):
            problems.append("Service needs ports with a port number")
        if not (doc.get("spec") or {}).get("selector"):
            problems.append("Service needs a selector")
    if kind == "Job":
        pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
        if pod.get("restartPolicy") not in {"Never", "OnFailure"}:
            problems.append("a Job's pod needs restartPolicy Never or OnFailure")
    if kind == "Deployment":
        spec = doc.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            problems.append("Deployment selector.matchLabels must match the pod template labels")
    return problems


def _probe_path(container: dict[str, Any], probe: str) -> str | None:
    return ((container.get(probe) or {}).get("httpGet") or {}).get("path")


def volume_problems(doc: dict[str, Any], where: str) -> list[str]:
    """Volumes that could be shared between pods or outlive them, anywhere in a document (every
    ``volumes`` list, whatever kind carries it; ``volumeClaimTemplates`` too)."""
    problems = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "volumeClaimTemplates":
                    problems.append(f"{path}.{key}: persistent volumes are not used")
                elif key == "volumes" and isinstance(value, list):
                    for volume in value:
                        sources = set(volume) - {"name"}
                        if len(sources) != 1 or not sources <= LOCAL_VOLUME_SOURCES:
                            problems.append(
                                f"{path}.volumes[{volume.get('name')}]: {sorted(sources)} is not "
                                f"one of {sorted(LOCAL_VOLUME_SOURCES)}; pods share no disk, data "
                                "goes through object storage"
                            )
                else:
                    walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(doc, where)
    return problems


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e.get("name", ""): e for e in container.get("env") or []}


def _secret_ref(var: dict[str, Any] | None) -> tuple[str | None, str | None]:
    ref = ((var or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
    return ref.get("name"), ref.get("key")


def storage_env_problems(container: dict[str, Any], where: str) -> list[str]:
    """How a container that reads or writes artifacts must learn where S3 is and who it is: the
    storage ConfigMap whole (envFrom: the endpoint reaches it whenever the ConfigMap has one), no
    storage variable of its own, and the credentials from the S3 Secret."""
    problems = []
    refs = [
        e.get("configMapRef") or {} for e in container.get("envFrom") or [] if not e.get("prefix")
    ]
    if not any(r.get("name") == STORAGE_CONFIGMAP and not r.get("optional") for r in refs):
        problems.append(
            f"{where}: must load ConfigMap {STORAGE_CONFIGMAP} with envFrom (no prefix)"
        )
    env = _env(container)
    for name in sorted(STORAGE_KEYS & env.keys()):
        problems.append(f"{where}: {name} is set here; it belongs in ConfigMap {STORAGE_CONFIGMAP}")
    for name in CREDENTIAL_KEYS:
        if _secret_ref(env.get(name)) != (S3_SECRET, name):
            problems.append(f"{where}: {name} must come from Secret {S3_SECRET}, key {name}")
    return problems


def scratch_problems(pod: dict[str, Any], where: str) -> list[str]:
    """Every container's ``LLMFORGE_SCRATCH`` must be the mount point of a disk emptyDir with a
    sizeLimit: node-local, never shared, gone with the pod."""
    problems = []
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    for c in pod.get("containers") or []:
        here = f"{where}.containers[{c.get('name')}]"
        path = (_env(c).get(SCRATCH_ENV) or {}).get("value")
        if not path:
            problems.append(f"{here}: {SCRATCH_ENV} is not set to a path")
            continue
        mounts = [m for m in c.get("volumeMounts") or [] if m.get("mountPath") == path]
        if len(mounts) != 1 or mounts[0].get("readOnly"):
            problems.append(f"{here}: {SCRATCH_ENV}={path} is not one writable volume mount")
            continue
        empty_dir = (volumes.get(mounts[0].get("name")) or {}).get("emptyDir")
        if empty_dir is None:
            problems.append(f"{here}: {SCRATCH_ENV}={path} must be an emptyDir")
        elif empty_dir.get("medium") == "Memory":
            problems.append(f"{here}: scratch must be on disk, not in the pod's memory")
        elif not empty_dir.get("sizeLimit"):
            problems.append(f"{here}: the scratch emptyDir needs a sizeLimit")
    return problems


def _ray_pods() -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every Ray node: heads and workers of the RayCluster and of the
    clusters RayJobs bring (not the submitter, which only calls the Jobs API)."""
    return [
        (f"{doc['metadata']['name']}:{where}", pod)
        for kind in ("RayCluster", "RayJob")
        for doc in _of_kind(kind)
        for where, pod in pod_specs(doc)
        if "submitterPodTemplate" not in where
    ]


def _storage_users() -> list[tuple[str, dict[str, Any]]]:
    """(where, container) of everything that reads or writes artifacts: the Ray containers and
    the control plane (which checks a job's buckets before submitting it)."""
    users = [
        (f"{where}.containers[{c['name']}]", c)
        for where, pod in _ray_pods()
        for c in pod["containers"]
    ]
    controlplane = _one("Deployment", "llmforge-controlplane")["spec"]["template"]["spec"]
    users += [(f"controlplane.containers[{c['name']}]", c) for c in controlplane["containers"]]
    return users


# --------------------------------------------------------------------------------------------------
# Every document


def test_manifests_found():
    files = {where.split("#")[0] for where, _ in MANIFESTS}
    expected = {
        "base/raycluster.yaml",
        "base/controlplane.yaml",
        "base/storage.yaml",
        "base/kueue.yaml",
        "base/security.yaml",
        "base/monitoring.yaml",
        "examples/rayjob-train.yaml",
        "overlays/dev/minio.yaml",
        "overlays/dev/postgres.yaml",
        "overlays/prod/ingress.yaml",
    }
    assert expected <= files, f"missing manifests: {sorted(expected - files)}"


@pytest.mark.parametrize("item", MANIFESTS, ids=_ident)
def test_document_basics(item):
    where, doc = item
    assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], f"{where}: apiVersion"
    assert isinstance(doc.get("kind"), str) and doc["kind"], f"{where}: kind"
    meta = doc.get("metadata") or {}
    assert meta.get("name"), f"{where}: metadata.name"
    unknown_meta = set(meta) - {"name", "namespace", "labels", "annotations"}
    assert not unknown_meta, f"{where}: unexpected metadata fields {sorted(unknown_meta)}"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta["name"]), meta["name"]
    if doc["kind"] in CLUSTER_SCOPED:
        assert "namespace" not in meta, f"{where}: {doc['kind']} is cluster-scoped"
    else:
        assert meta.get("namespace") == NAMESPACE, f"{where}: namespace must be {NAMESPACE}"
    for where_pod, pod in pod_specs(doc):
        assert pod_problems(pod, f"{where}:{where_pod}") == []


@pytest.mark.parametrize(
    "item",
    [m for m in MANIFESTS if (m[1].get("apiVersion"), m[1].get("kind")) in BUILTIN_KINDS],
    ids=_ident,
)
def test_builtin_structure(item):
    _, doc = item
    assert builtin_problems(doc) == []


@pytest.mark.parametrize(
    "item",
    [
        m
        for m in MANIFESTS
        if (m[1].get("apiVersion"), m[1].get("kind")) not in {*BUILTIN_KINDS, *NO_CRD}
    ],
    ids=_ident,
)
def test_custom_resource_matches_crd(item):
    where, doc = item
    version = _crd_version(doc)
    assert version.get("served", False), f"{where}: {doc['apiVersion']} is not served"
    assert not version.get("deprecated"), f"{where}: {version.get('deprecationWarning')}"
    assert schema_errors(doc) == []


@pytest.mark.parametrize("item", MANIFESTS, ids=_ident)
def test_no_literal_secrets_anywhere(item):
    """Walk the whole document: any env list, in any container/sidecar/autoscaler."""
    where, doc = item

    def walk(node: Any, path: str) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "env" and isinstance(v, list):
                    yield from env_problems(v, f"{path}.env")
                else:
                    yield from walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, f"{path}[{i}]")

    assert list(walk(doc, where)) == []
    runtime_env = (doc.get("spec") or {}).get("runtimeEnvYAML")
    if runtime_env:
        env_vars = (yaml.safe_load(runtime_env) or {}).get("env_vars") or {}
        assert not [k for k in env_vars if _is_secret_name(k)], "secrets in runtimeEnvYAML"


# --------------------------------------------------------------------------------------------------
# The validation actually rejects broken manifests


def test_schema_rejects_broken_raycluster():
    good = _one("RayCluster")
    assert schema_errors(good) == []

    missing = copy.deepcopy(good)
    del missing["spec"]["headGroupSpec"]
    assert any("headGroupSpec" in e for e in schema_errors(missing))

    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["workerGroupSpecs"][0]["minReplicas"] = "one"
    assert any("minReplicas" in e for e in schema_errors(wrong_type))

    int_param = copy.deepcopy(good)  # rayStartParams values must be strings
    int_param["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert any("num-cpus" in e for e in schema_errors(int_param))

    no_group_name = copy.deepcopy(good)
    del no_group_name["spec"]["workerGroupSpecs"][1]["groupName"]
    assert any("groupName" in e for e in schema_errors(no_group_name))

    typo = copy.deepcopy(good)
    typo["spec"]["enableInTreeAutoscalling"] = typo["spec"].pop("enableInTreeAutoscaling")
    assert any("enableInTreeAutoscalling" in e for e in schema_errors(typo))


def test_schema_rejects_broken_kueue_and_monitor():
    queue = copy.deepcopy(_one("ClusterQueue"))
    queue["spec"]["resourceGroups"][0]["flavors"][1]["resources"][2]["nominalQuota"] = "lots"
    assert any("nominalQuota" in e for e in schema_errors(queue))

    monitor = copy.deepcopy(_of_kind("ServiceMonitor")[0])
    monitor["spec"]["endpoints"] = "http"
    assert any("endpoints" in e for e in schema_errors(monitor))


def test_structural_checks_reject_broken_builtins():
    deployment = copy.deepcopy(_one("Deployment", "llmforge-controlplane"))
    assert builtin_problems(deployment) == []
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "hunter2"})
    container["env"].append({"name": "LLMFORGE_DATABASE_URL", "value": "postgresql://u:p@db/x"})
    del container["resources"]["limits"]
    container["image"] = "registry.example.com/llmforge:latest"
    pod["securityContext"]["runAsNonRoot"] = False
    problems = "\n".join(pod_problems(pod, "pod"))
    for expected in ("AWS_SECRET_ACCESS_KEY", "LLMFORGE_DATABASE_URL", "limits", "tag", "runAs"):
        assert expected in problems

    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "x"},
        "stringData": {"database-url": "postgresql://u:p@db/x"},
    }
    assert builtin_problems(secret)
    config = copy.deepcopy(_one("ConfigMap", "llmforge-controlplane"))
    config["data"]["LLMFORGE_JOB_TOKEN"] = "abc"
    config["data"]["LLMFORGE_API_PORT"] = 8000
    problems = "\n".join(builtin_problems(config))
    assert "LLMFORGE_JOB_TOKEN" in problems and "LLMFORGE_API_PORT" in problems


# --------------------------------------------------------------------------------------------------
# RayCluster


def test_raycluster_shape():
    cluster = _one("RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["enableInTreeAutoscaling"] is True

    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "no work may land on the head"
    head_container = head["template"]["spec"]["containers"][0]
    ports = {p["containerPort"]: p.get("name") for p in head_container["ports"]}
    assert ports.get(8265) == "dashboard"
    assert ports.get(8080) == "metrics"
    assert head["rayStartParams"].get("metrics-export-port", "8080") == "8080"

    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    assert groups["cpu"]["maxReplicas"] > groups["cpu"]["minReplicas"], "cpu group must autoscale"

    gpu = groups["gpu"]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] > 0
    gpu_pod = gpu["template"]["spec"]
    assert str(gpu_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert any(t.get("key") == "nvidia.com/gpu" for t in gpu_pod.get("tolerations", []))
    cpu_limits = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in cpu_limits


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_ray_pods_get_s3_credentials_from_secret(kind):
    for doc in _of_kind(kind):
        for where, pod in pod_specs(doc):
            if "submitterPodTemplate" in where:
                continue
            env = {e["name"]: e for e in pod["containers"][0].get("env", [])}
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert name in env, f"{doc['metadata']['name']} {where}: {name} missing"
                assert "secretKeyRef" in env[name]["valueFrom"], f"{where}: {name}"


# --------------------------------------------------------------------------------------------------
# Control plane


def test_controlplane_reaches_ray_head():
    cluster = _one("RayCluster")
    config = _one("ConfigMap", "llmforge-controlplane")["data"]
    head_svc = f"{cluster['metadata']['name']}-head-svc"  # KubeRay's head Service name
    assert re.fullmatch(
        rf"http://{head_svc}(\.{cluster['metadata']['namespace']}(\.svc(\.cluster\.local)?)?)?:8265",
        config["RAY_ADDRESS"],
    ), config["RAY_ADDRESS"]
    assert config["LLMFORGE_ARTIFACT_ROOT"].startswith("s3://")
    assert config["LLMFORGE_API_HOST"] == "0.0.0.0"
    service = _one("Service", "llmforge-controlplane")
    assert config["LLMFORGE_PUBLIC_URL"].startswith(f"http://{service['metadata']['name']}.")
    assert config["LLMFORGE_PUBLIC_URL"].endswith(f":{config['LLMFORGE_API_PORT']}")


def test_controlplane_deployment():
    deployment = _one("Deployment", "llmforge-controlplane")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["llmforge", "serve"]
    assert _probe_path(container, "livenessProbe") == LIVE_PATH
    assert _probe_path(container, "readinessProbe") == READY_PATH

    config = _one("ConfigMap", "llmforge-controlplane")
    assert {"configMapRef": {"name": config["metadata"]["name"]}} in container["envFrom"]
    env = {e["name"]: e for e in container["env"]}
    assert env["LLMFORGE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"]
    api_port = int(config["data"]["LLMFORGE_API_PORT"])
    named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert api_port in named_ports.values()
    for probe in ("livenessProbe", "readinessProbe"):
        port = container[probe]["httpGet"]["port"]
        assert named_ports.get(port, port) == api_port

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]

    service = _one("Service", "llmforge-controlplane")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    for port in service["spec"]["ports"]:
        assert named_ports.get(port["targetPort"], port["targetPort"]) == api_port


def test_monitors_point_at_metrics():
    cluster_name = _one("RayCluster")["metadata"]["name"]
    monitors = {m["metadata"]["name"]: m for m in _of_kind("ServiceMonitor")}

    head = [
        m
        for m in monitors.values()
        if m["spec"]["selector"].get("matchLabels", {}).get("ray.io/node-type") == "head"
    ]
    assert len(head) == 1, "one ServiceMonitor for the Ray head Service"
    assert head[0]["spec"]["selector"]["matchLabels"].get("ray.io/cluster") == cluster_name
    assert [e["port"] for e in head[0]["spec"]["endpoints"]] == ["metrics"]

    service = _one("Service", "llmforge-controlplane")
    cp = [
        m
        for m in monitors.values()
        if all(
            service["metadata"]["labels"].get(k) == v
            for k, v in m["spec"]["selector"].get("matchLabels", {}).items()
        )
        and m["spec"]["selector"].get("matchLabels")
    ]
    assert len(cp) == 1, "one ServiceMonitor for the control plane Service"
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in cp[0]["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint.get("path") == "/metrics"


# --------------------------------------------------------------------------------------------------
# Object storage is the data plane: one storage convention, node-local scratch, no shared volumes


def test_storage_configmap_is_the_one_place():
    config = _one("ConfigMap", STORAGE_CONFIGMAP)["data"]
    assert REGION_KEYS & config.keys(), f"{STORAGE_CONFIGMAP} must set the region"
    assert set(config) <= STORAGE_KEYS, f"unexpected keys {sorted(set(config) - STORAGE_KEYS)}"
    for name in ENDPOINT_KEYS & config.keys():
        assert re.fullmatch(r"https?://[^/\s]+/?", config[name]), f"{name}: {config[name]!r}"
    # No other ConfigMap may carry storage settings: they would shadow or contradict these.
    for doc in _of_kind("ConfigMap"):
        if doc["metadata"]["name"] != STORAGE_CONFIGMAP:
            stray = sorted(k for k in doc.get("data") or {} if k.startswith("AWS_"))
            assert not stray, f"ConfigMap {doc['metadata']['name']}: {stray}"


def test_every_storage_user_gets_the_same_storage_settings():
    """The endpoint and region reach every Ray container (jobs run there) and the control plane
    from the one ConfigMap; the credentials from the one Secret."""
    users = _storage_users()
    where = [w for w, _ in users]
    assert any("headGroupSpec" in w for w in where)
    assert any("workerGroupSpecs[cpu]" in w for w in where)
    assert any("workerGroupSpecs[gpu]" in w for w in where)
    assert any(w.startswith("llmforge-train-example:") for w in where), "the RayJob's own cluster"
    assert any(w.startswith("controlplane.") for w in where)
    problems = [p for w, c in users for p in storage_env_problems(c, w)]
    assert problems == []


def test_no_storage_setting_outside_the_configmap():
    """Nothing sets a storage variable on its own: not in any env list, nor a Ray runtime env; and
    the retired LLMFORGE_S3_ENDPOINT_URL (the control plane refuses to start with it) is gone."""
    for path in _manifest_files():
        assert "LLMFORGE_S3_ENDPOINT_URL" not in path.read_text(), path

    def env_names(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "env" and isinstance(v, list):
                    yield from (e.get("name", "") for e in v)
                else:
                    yield from env_names(v)
        elif isinstance(node, list):
            for v in node:
                yield from env_names(v)

    for where, doc in MANIFESTS:
        assert not STORAGE_KEYS & set(env_names(doc)), where
        runtime_env = (doc.get("spec") or {}).get("runtimeEnvYAML")
        if runtime_env:
            env_vars = (yaml.safe_load(runtime_env) or {}).get("env_vars") or {}
            assert not STORAGE_KEYS & set(env_vars), f"{where}: storage settings in runtimeEnvYAML"


def test_storage_checks_reject_drift():
    ((where, container), *_) = [u for u in _storage_users() if "workerGroupSpecs[gpu]" in u[0]]
    assert storage_env_problems(container, where) == []

    literal = copy.deepcopy(container)
    literal["env"].append({"name": "AWS_ENDPOINT_URL", "value": "http://minio:9000"})
    assert any("AWS_ENDPOINT_URL" in p for p in storage_env_problems(literal, where))

    no_configmap = copy.deepcopy(container)
    no_configmap["envFrom"] = []
    assert any(STORAGE_CONFIGMAP in p for p in storage_env_problems(no_configmap, where))

    optional = copy.deepcopy(container)
    optional["envFrom"] = [{"configMapRef": {"name": STORAGE_CONFIGMAP, "optional": True}}]
    assert any(STORAGE_CONFIGMAP in p for p in storage_env_problems(optional, where))

    other_secret = copy.deepcopy(container)
    for var in other_secret["env"]:
        if var["name"] == "AWS_SECRET_ACCESS_KEY":
            var["valueFrom"]["secretKeyRef"]["name"] = "someone-elses-s3"
    assert any("AWS_SECRET_ACCESS_KEY" in p for p in storage_env_problems(other_secret, where))


def test_ray_nodes_have_emptydir_scratch():
    pods = _ray_pods()
    assert len(pods) >= 5, "head, cpu and gpu groups of the RayCluster, head and gpu of the RayJob"
    assert [p for where, pod in pods for p in scratch_problems(pod, where)] == []
    for where, pod in pods:
        if "workerGroupSpecs" in where:
            (container,) = pod["containers"]
            assert _env(container)[SCRATCH_ENV]["value"] == "/scratch", where


def test_scratch_check_rejects_shared_or_memory_scratch():
    where, pod = next(p for p in _ray_pods() if "workerGroupSpecs[gpu]" in p[0])

    def with_scratch(volume: dict[str, Any]) -> dict[str, Any]:
        changed = copy.deepcopy(pod)
        changed["volumes"] = [v for v in changed["volumes"] if v["name"] != "scratch"]
        changed["volumes"].append({"name": "scratch", **volume})
        return changed

    in_memory = with_scratch({"emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}})
    assert any("memory" in p for p in scratch_problems(in_memory, where))
    unbounded = with_scratch({"emptyDir": {}})
    assert any("sizeLimit" in p for p in scratch_problems(unbounded, where))
    on_a_claim = with_scratch({"persistentVolumeClaim": {"claimName": "shared"}})
    assert any("emptyDir" in p for p in scratch_problems(on_a_claim, where))

    unmounted = copy.deepcopy(pod)
    unmounted["containers"][0]["volumeMounts"] = [
        m for m in unmounted["containers"][0]["volumeMounts"] if m["name"] != "scratch"
    ]
    assert any("mount" in p for p in scratch_problems(unmounted, where))


@pytest.mark.parametrize("item", MANIFESTS, ids=_ident)
def test_no_shared_volumes(item):
    """Pods share no disk: only volumes that live and die with the pod on its node."""
    where, doc = item
    assert volume_problems(doc, where) == []


def test_volume_check_rejects_shared_volumes():
    cluster = copy.deepcopy(_one("RayCluster"))
    assert volume_problems(cluster, "c") == []
    volumes = cluster["spec"]["workerGroupSpecs"][1]["template"]["spec"]["volumes"]
    volumes += [
        {"name": "a", "persistentVolumeClaim": {"claimName": "data"}},
        {"name": "b", "hostPath": {"path": "/mnt/data"}},
        {"name": "c", "nfs": {"server": "nfs.example.com", "path": "/export"}},
        {"name": "d", "csi": {"driver": "s3.csi.aws.com"}},
        {"name": "e", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
    ]
    problems = "\n".join(volume_problems(cluster, "c"))
    for kind in ("persistentVolumeClaim", "hostPath", "nfs", "csi", "ephemeral"):
        assert kind in problems
    statefulset = {"kind": "StatefulSet", "spec": {"volumeClaimTemplates": [{"spec": {}}]}}
    assert volume_problems(statefulset, "s")


# --------------------------------------------------------------------------------------------------
# Kueue and RayJobs


def test_kueue_wiring():
    flavors = {f["metadata"]["name"] for f in _of_kind("ResourceFlavor")}
    assert "gpu" in flavors
    queue = _one("ClusterQueue")
    for group in queue["spec"]["resourceGroups"]:
        covered = group["coveredResources"]
        assert {"cpu", "memory", "nvidia.com/gpu"} <= set(covered)
        for flavor in group["flavors"]:
            assert flavor["name"] in flavors, f"ClusterQueue uses undefined flavor {flavor['name']}"
            # Kueue requires each flavor to list the covered resources in the same order.
            assert [r["name"] for r in flavor["resources"]] == covered
    gpu_quota = {
        f["name"]: {r["name"]: r["nominalQuota"] for r in f["resources"]}
        for g in queue["spec"]["resourceGroups"]
        for f in g["flavors"]
    }["gpu"]["nvidia.com/gpu"]
    assert int(gpu_quota) > 0
    local = _one("LocalQueue")
    assert local["spec"]["clusterQueue"] == queue["metadata"]["name"]


def test_rayjobs():
    jobs = _of_kind("RayJob")
    assert jobs
    local_queues = {q["metadata"]["name"] for q in _of_kind("LocalQueue")}
    cluster = _one("RayCluster")
    queued = 0
    for job in jobs:
        spec = job["spec"]
        assert re.fullmatch(r"python -m ray_jobs\.train --spec s3://\S+\.json", spec["entrypoint"])
        queue = job["metadata"].get("labels", {}).get(QUEUE_LABEL)
        if spec.get("clusterSelector"):
            assert spec["clusterSelector"].get("ray.io/cluster") == cluster["metadata"]["name"]
            assert "rayClusterSpec" not in spec
        if queue:
            queued += 1
            assert queue in local_queues
            # Kueue's RayJob webhook rules: its own cluster, torn down after, no autoscaling.
            assert not spec.get("clusterSelector"), (
                "Kueue does not manage jobs on existing clusters"
            )
            assert spec.get("shutdownAfterJobFinishes") is True
            assert not spec["rayClusterSpec"].get("enableInTreeAutoscaling")
            for group in spec["rayClusterSpec"].get("workerGroupSpecs", []):
                assert group["minReplicas"] == group["maxReplicas"] == group.get("replicas")
            assert spec["rayClusterSpec"]["rayVersion"] == RAY_VERSION
    assert queued >= 1, "an example RayJob labelled for the Kueue LocalQueue"


# --------------------------------------------------------------------------------------------------
# MinIO for dev clusters (infra/k8s/dev/minio.yaml)


def _minio_endpoint() -> str:
    service = _one("Service", "minio")
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "s3")
    meta = service["metadata"]
    return f"http://{meta['name']}.{meta['namespace']}.svc.cluster.local:{port}"


def test_minio_server():
    deployment = _one("Deployment", "minio")
    assert deployment["spec"]["replicas"] == 1, "one server on one emptyDir"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert re.fullmatch(
        r"(docker\.io/|quay\.io/)?minio/minio:RELEASE\.[0-9TZ-]+", container["image"]
    )
    env = _env(container)
    # Root credentials are the keys everything else uses, so no second set of secrets exists.
    assert _secret_ref(env.get("MINIO_ROOT_USER")) == (S3_SECRET, "AWS_ACCESS_KEY_ID")
    assert _secret_ref(env.get("MINIO_ROOT_PASSWORD")) == (S3_SECRET, "AWS_SECRET_ACCESS_KEY")
    data_dir = container["command"][container["command"].index("server") + 1]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == data_dir]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume, "dev only: MinIO's data is an emptyDir"

    service = _one("Service", "minio")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    s3_port = next(p for p in service["spec"]["ports"] if p["name"] == "s3")
    assert named_ports.get(s3_port["targetPort"], s3_port["targetPort"]) == 9000
    assert _probe_path(container, "readinessProbe") == "/minio/health/ready"


def test_minio_bucket_job():
    job = _one("Job", "minio-create-bucket")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"(docker\.io/|quay\.io/)?minio/mc:RELEASE\.[0-9TZ-]+", container["image"])
    script = " ".join(container["command"])
    assert "mc alias set" in script and "mc mb --ignore-existing" in script
    env = _env(container)
    assert env["MINIO_URL"]["value"] == _minio_endpoint()
    for name in CREDENTIAL_KEYS:
        assert _secret_ref(env.get(name)) == (S3_SECRET, name)
    # The bucket it creates is the control plane's artifact bucket, read from its ConfigMap (the
    # overlay sets it there, once).
    ref = env["LLMFORGE_ARTIFACT_ROOT"]["valueFrom"]["configMapKeyRef"]
    assert ref == {"name": "llmforge-controlplane", "key": "LLMFORGE_ARTIFACT_ROOT"}
    assert 'mc mb --ignore-existing "dev/$bucket"' in script
    assert job["spec"].get("activeDeadlineSeconds"), "a Job waiting for MinIO must give up"


def test_minio_endpoint_is_documented():
    """The endpoint the dev overlay puts in the storage ConfigMap is the MinIO Service's, and the
    storage ConfigMap's own comment names it."""
    endpoint = _minio_endpoint()
    dev = (K8S_DIR / "overlays" / "dev" / "kustomization.yaml").read_text()
    assert f"AWS_ENDPOINT_URL={endpoint}" in dev
    assert f"AWS_ENDPOINT_URL: {endpoint}" in (K8S_DIR / "base" / "storage.yaml").read_text()


# --------------------------------------------------------------------------------------------------
# Image


def _dockerfile_instructions() -> list[str]:
    text = DOCKERFILE.read_text()
    joined = re.sub(r"\\\n", " ", text)  # line continuations
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
    ]


def test_dockerfile():
    assert DOCKERFILE.is_file()
    lines = _dockerfile_instructions()
    installs = [line for line in lines if re.search(r"\bpip install\b", line)]
    assert any(
        re.search(r"pip install\b[^&;]*\s-c\s+constraints\.txt[^&;]*\s\.(\s|$)", line)
        for line in installs
    ), "the project must be installed with `pip install -c constraints.txt .`"
    users = [line.split(None, 1)[1] for line in lines if line.upper().startswith("USER ")]
    assert users, "no USER instruction"
    final_user = users[-1].split(":")[0]
    assert final_user not in {"root", "0"}, f"image runs as {users[-1]!r}"

    base = re.search(r"^ARG BASE_IMAGE=(\S+)", "\n".join(lines), re.M)
    assert base and base.group(1) == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    assert re.search(r"^FROM \$\{?BASE_IMAGE\}?", "\n".join(lines), re.M)


def test_ray_version_is_pinned_consistently():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(rf'"ray(\[[^\]]*\])?=={re.escape(RAY_VERSION)}"', pyproject)
    constraints = REPO / "constraints.txt"
    if constraints.is_file():
        pins = re.findall(r"^ray(?:\[[^\]]*\])?==(\S+)", constraints.read_text(), re.M)
        assert set(pins) <= {RAY_VERSION}
    cluster_specs = [c["spec"] for c in _of_kind("RayCluster")]
    cluster_specs += [
        j["spec"]["rayClusterSpec"] for j in _of_kind("RayJob") if "rayClusterSpec" in j["spec"]
    ]
    assert cluster_specs
    assert {s["rayVersion"] for s in cluster_specs} == {RAY_VERSION}
