"""The KubeRay ``RayJob`` of one llmforge job attempt (services/kuberay.py creates it).

A RayJob that brings its own fixed-size Ray cluster, labelled for Kueue's LocalQueue and created
suspended, so that Kueue admits the head, the submitter and every worker together (gang
scheduling) or not at all. Its pods are the shared cluster's kind (infra/k8s/base/raycluster.yaml):
the ``llmforge-ray`` ServiceAccount without an API token, non-root, a read-only root filesystem,
object storage settings from the ConfigMap and credentials from the Secret, node-local scratch.
"""

from __future__ import annotations

from typing import Any

import yaml

from services.settings import Settings

GROUP_VERSION = "ray.io/v1"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
POD_LABEL = "llmforge.io/rayjob"
JOB_LABEL = "llmforge.io/job-id"
RAY_VERSION = "2.60.0"
UID, GID = 1000, 100  # the image's non-root user (infra/docker/Dockerfile)
METRICS_PORT = 8080
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def workers_of(kind: str, spec: dict[str, Any]) -> tuple[int, bool]:
    """How many Ray worker pods a job's spec needs at once, and whether each needs a GPU."""
    workers = int(spec.get("workers") or 1)
    if kind == "tune":  # every concurrent trial is a group of DDP workers
        workers *= int(spec.get("max_concurrent_trials") or 1)
    return workers, bool(spec.get("use_gpu"))


def _template(pod: dict[str, Any], job_id: str) -> dict[str, Any]:
    # What the NetworkPolicy and the PodMonitor of RayJob pods select and record
    # (infra/k8s/base/rayjobs.yaml).
    return {"metadata": {"labels": {POD_LABEL: "true", JOB_LABEL: job_id}}, "spec": pod}


def _pod(settings: Settings, priority_class: str, container: dict[str, Any]) -> dict[str, Any]:
    """A Ray pod: its own ServiceAccount without an API token, non-root, a read-only root
    filesystem with Ray's writable places (/tmp, /dev/shm) and node-local scratch as emptyDirs."""
    container = {
        **container,
        "envFrom": [{"configMapRef": {"name": settings.rayjob_storage_configmap}}],
        "env": [
            *(
                {
                    "name": key,
                    "valueFrom": {"secretKeyRef": {"name": settings.rayjob_s3_secret, "key": key}},
                }
                for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            ),
            {"name": "LLMFORGE_SCRATCH", "value": "/scratch"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "scratch", "mountPath": "/scratch"},
        ],
    }
    return {
        "serviceAccountName": settings.rayjob_service_account,
        "automountServiceAccountToken": False,
        "priorityClassName": priority_class,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": GID,
            "fsGroup": GID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
            {"name": "scratch", "emptyDir": {"sizeLimit": "100Gi"}},
        ],
    }


def _resources(cpus: float, memory_gb: float, gpus: int = 0) -> dict[str, Any]:
    amount: dict[str, Any] = {"cpu": str(cpus), "memory": f"{int(memory_gb * 1024)}Mi"}
    if gpus:
        amount["nvidia.com/gpu"] = gpus
    return {"requests": amount, "limits": dict(amount)}


def _worker_group(
    settings: Settings, priority: str, replicas: int, gpu: bool, job_id: str
) -> dict[str, Any]:
    image = (gpu and settings.rayjob_gpu_image) or settings.rayjob_image
    container = {
        "name": "ray-worker",
        "image": image,
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
        "resources": _resources(
            settings.rayjob_worker_cpus, settings.rayjob_worker_memory_gb, 1 if gpu else 0
        ),
    }
    pod = _pod(settings, priority, container)
    if gpu:  # Kueue's GPU flavor adds it too; repeated so the pods also schedule without it
        pod["tolerations"] = [GPU_TOLERATION]
    return {
        "groupName": "gpu" if gpu else "cpu",
        # Fixed size: Kueue admits exactly what the cluster will use.
        "replicas": replicas,
        "minReplicas": replicas,
        "maxReplicas": replicas,
        "rayStartParams": {"metrics-export-port": str(METRICS_PORT)},
        "template": _template(pod, job_id),
    }


def rayjob_manifest(
    settings: Settings,
    *,
    name: str,
    kind: str,
    spec: dict[str, Any],
    entrypoint: str,
    env: dict[str, str],
    metadata: dict[str, str],
    driver_cpus: float | None,
) -> dict[str, Any]:
    """The RayJob of one job attempt (``name`` is also its Ray submission id)."""
    priority = settings.rayjob_kinds[kind]
    job_id = metadata.get("llmforge_job_id", name)
    workers, gpu = workers_of(kind, spec)
    driver = driver_cpus or 1
    head = _pod(
        settings,
        priority,
        {
            "name": "ray-head",
            "image": settings.rayjob_image,
            "ports": [
                {"name": "gcs-server", "containerPort": 6379},
                {"name": "dashboard", "containerPort": 8265},
                {"name": "client", "containerPort": 10001},
                {"name": "metrics", "containerPort": METRICS_PORT},
            ],
            "resources": _resources(max(driver, 1), 4),
        },
    )
    submitter = _pod(
        settings,
        priority,
        {
            "name": "ray-job-submitter",
            "image": settings.rayjob_image,
            "resources": _resources(0.5, 0.5),
        },
    )
    submitter["restartPolicy"] = "Never"
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "namespace": settings.rayjob_namespace,
            "labels": {
                "app.kubernetes.io/part-of": "llmforge",
                JOB_LABEL: job_id,
                "llmforge.io/kind": kind,
                QUEUE_LABEL: settings.rayjob_queue,
            },
        },
        "spec": {
            "entrypoint": entrypoint,
            "jobId": name,
            "metadata": metadata,
            "runtimeEnvYAML": yaml.safe_dump({"env_vars": env}, sort_keys=True),
            # The driver runs on the job's own head, which runs nothing else.
            "entrypointNumCpus": driver,
            "submissionMode": "K8sJobMode",
            # Created suspended: Kueue un-suspends it once the whole cluster is admitted.
            "suspend": True,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": settings.rayjob_ttl_s,
            # The control plane retries a failed job itself (max_retries), under a new name.
            "backoffLimit": 0,
            "submitterPodTemplate": _template(submitter, job_id),
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "authOptions": {"mode": "token", "secretName": settings.rayjob_ray_token_secret},
                "headGroupSpec": {
                    "rayStartParams": {
                        "num-cpus": str(int(max(driver, 1))),
                        "dashboard-host": "0.0.0.0",
                        "metrics-export-port": str(METRICS_PORT),
                    },
                    "template": _template(head, job_id),
                },
                "workerGroupSpecs": [_worker_group(settings, priority, workers, gpu, job_id)],
            },
        },
    }
