"""The Grafana dashboard (infra/k8s/base/dashboards/llmforge.json) and the alert rules
(PrometheusRule in infra/k8s/base/monitoring.yaml) query only metrics llmforge exports:

- the control plane's own, read from a real ``GET /metrics`` of the app (sample names, so
  ``_bucket``, ``_count`` and ``_total`` count as what they are);
- the jobs' gauges as Ray's metrics agent exports them: ``ray_`` + ``ray_metric_name(name)``,
  for names that the job code reports (each found as a literal in the file that reports it).

The dashboard itself passes a schema check (the fields Grafana's provisioning needs, every panel
with a position and Prometheus targets) and is provisioned by the manifests: the base renders it
into the ConfigMap the Grafana sidecar picks up.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ray_jobs.reporting import ray_metric_name
from services.api.app import create_app
from services.ray_head import free_port
from services.settings import Settings
from tests.infra.test_kustomize import K8S, render

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = K8S / "base" / "dashboards" / "llmforge.json"
# Job metrics (as the jobs name them) and the file that reports each.
JOB_METRICS = {
    "loss": "llm/train/trainer.py",
    "lr": "llm/train/trainer.py",
    "grad_norm": "llm/train/trainer.py",
    "tokens_per_s": "llm/train/trainer.py",
    "val_loss": "ray_jobs/evaluate.py",
    "docs_in": "ray_jobs/curate/job.py",
    "docs_kept": "ray_jobs/curate/job.py",
    "encode_mb_per_s": "ray_jobs/tokenize_corpus.py",
}
# Series Prometheus makes itself.
PROMETHEUS_OWN = {"up"}
METRIC = re.compile(r"\b((?:ray_)?llmforge_[a-zA-Z0-9_]+)\b")

DASHBOARD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer", "minimum": 30},
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type", "title", "gridPos", "targets", "datasource"],
                "properties": {
                    "id": {"type": "integer"},
                    "type": {"enum": ["timeseries", "stat", "gauge", "table", "bargauge"]},
                    "gridPos": {
                        "type": "object",
                        "required": ["x", "y", "w", "h"],
                        "properties": {
                            "x": {"type": "integer", "minimum": 0, "maximum": 23},
                            "w": {"type": "integer", "minimum": 1, "maximum": 24},
                        },
                    },
                    "datasource": {
                        "type": "object",
                        "required": ["type", "uid"],
                        "properties": {"type": {"const": "prometheus"}},
                    },
                    "targets": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["refId", "expr"],
                            "properties": {"expr": {"type": "string", "minLength": 1}},
                        },
                    },
                },
            },
        },
    },
}


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _queries() -> Iterator[tuple[str, str]]:
    for panel in _dashboard()["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def _alert_rules() -> list[dict[str, Any]]:
    docs = yaml.safe_load_all((K8S / "base" / "monitoring.yaml").read_text())
    rule = next(d for d in docs if d and d["kind"] == "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


@pytest.fixture(scope="module")
def control_plane_metrics(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Sample names of a real control plane's /metrics, with a job in the store."""
    home = tmp_path_factory.mktemp("metrics-home")
    settings = Settings(
        home=home, ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=60, auth=False
    )
    with TestClient(create_app(settings)) as client:
        spec = {"input": "x", "output": "y"}
        client.post("/api/v1/jobs", json={"kind": "curate", "spec": spec})
        client.post("/api/v1/jobs/x/metrics", json={"records": []})
        body = client.get("/metrics").text
    return {s.name for family in text_string_to_metric_families(body) for s in family.samples}


def ray_exported() -> set[str]:
    for name, path in JOB_METRICS.items():
        assert f'"{name}"' in (REPO / path).read_text(), f"{path} no longer reports {name}"
    return {f"ray_{ray_metric_name(name)}" for name in JOB_METRICS}


def test_the_dashboard_passes_the_schema_check() -> None:
    dashboard = _dashboard()
    jsonschema.validate(dashboard, DASHBOARD_SCHEMA)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    broken = json.loads(DASHBOARD.read_text())
    del broken["panels"][0]["targets"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, DASHBOARD_SCHEMA)


def test_the_dashboard_covers_what_the_issue_asks() -> None:
    titles = " ".join(p["title"].lower() for p in _dashboard()["panels"])
    for topic in ("jobs by state", "loss", "tokens/s", "ingest", "latency", "curation"):
        assert topic in titles, topic


def test_every_query_names_a_metric_llmforge_exports(control_plane_metrics: set[str]) -> None:
    exported = control_plane_metrics | ray_exported()
    assert {"llmforge_jobs", "llmforge_http_request_seconds_bucket"} <= control_plane_metrics
    assert "llmforge_metric_points_ingested_total" in control_plane_metrics
    named = []
    for title, expr in _queries():
        found = METRIC.findall(expr)
        assert found, f"{title}: {expr} names no llmforge metric"
        named += [(title, name) for name in found]
    unknown = [(t, n) for t, n in named if n not in exported]
    assert unknown == [], f"not exported: {unknown}; exported: {sorted(exported)}"


def test_every_alert_names_exported_metrics(control_plane_metrics: set[str]) -> None:
    exported = control_plane_metrics | ray_exported()
    rules = _alert_rules()
    alerts = {r["alert"] for r in rules}
    assert {
        "LlmforgeJobFailureRateHigh",
        "LlmforgeTrainingStalled",
        "LlmforgeApiErrors",
        "LlmforgeRayHeadDown",
    } <= alerts
    for rule in rules:
        names = set(METRIC.findall(rule["expr"]))
        others = set(re.findall(r"\b([a-z_]+)\{", rule["expr"])) - names
        assert names <= exported, (rule["alert"], names - exported)
        assert others <= PROMETHEUS_OWN, (rule["alert"], others)


def test_the_manifests_provision_the_dashboard() -> None:
    docs = render(K8S / "base")
    (config,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]
    ]
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config["data"]["llmforge.json"]) == _dashboard()
