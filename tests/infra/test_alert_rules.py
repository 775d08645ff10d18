"""The alert rules (the PrometheusRule in infra/k8s/base/monitoring.yaml, as each overlay renders
it) checked by Prometheus' own tool: ``promtool check rules`` parses every expression and the
group structure as Prometheus would load them, and ``promtool test rules`` evaluates each alert
on synthetic series, so an alert that could never fire (or fires on a healthy system) fails.
That every metric the rules name is one the code exports is checked in test_dashboard.py.

promtool comes from the Debian package ``prometheus`` (scripts/dev.sh installs it); without it
the test is skipped, except in CI.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.test_kustomize import OVERLAYS, _one, rendered


@functools.cache
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("promtool is missing: scripts/dev.sh installs it (prometheus)")
        pytest.skip("promtool is missing (Debian package prometheus; scripts/dev.sh installs it)")
    return found


def _groups(overlay: str) -> list[dict[str, Any]]:
    """A copy: the rendered documents are cached for every test."""
    return copy.deepcopy(_one(rendered(overlay), "PrometheusRule")["spec"]["groups"])


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)


def _write_rules(path: Path, groups: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_promtool_accepts_the_rules(overlay: str, tmp_path: Path) -> None:
    rules = _write_rules(tmp_path / "rules.yaml", _groups(overlay))
    done = _run("check", "rules", str(rules))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_promtool_refuses_a_broken_expression_and_an_unknown_field(tmp_path: Path) -> None:
    broken = _groups("prod")
    broken[0]["rules"][0]["expr"] = "sum(rate(llmforge_jobs[5m])"  # unbalanced
    done = _run("check", "rules", str(_write_rules(tmp_path / "expr.yaml", broken)))
    assert done.returncode != 0 and "parse error" in done.stdout + done.stderr
    unknown = _groups("prod")
    unknown[0]["rules"][0]["severity"] = "warning"  # belongs under labels
    done = _run("check", "rules", str(_write_rules(tmp_path / "field.yaml", unknown)))
    assert done.returncode != 0, done.stdout


def _alert(groups: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(r for g in groups for r in g["rules"] if r.get("alert") == name)


def _expect(rule: dict[str, Any], **labels: str) -> list[dict[str, Any]]:
    return [{"exp_labels": rule["labels"] | labels, "exp_annotations": rule["annotations"]}]


def test_each_alert_fires_when_it_should_and_not_otherwise(tmp_path: Path) -> None:
    """Synthetic series, one scenario per alert: each alert fires on its failure, after its
    ``for:``, and stays quiet on a healthy system."""
    groups = _groups("prod")
    rules = _write_rules(tmp_path / "rules.yaml", groups)
    fail = _alert(groups, "LlmforgeJobFailureRateHigh")
    stall = _alert(groups, "LlmforgeTrainingStalled")
    api = _alert(groups, "LlmforgeApiErrors")
    head = _alert(groups, "LlmforgeRayHeadDown")
    plane = _alert(groups, "LlmforgeControlPlaneDown")
    ok = 'up{service="llmforge-controlplane"}'
    tests = [
        {  # 10 jobs failed and 10 succeeded over the hour: 50% > 25%
            "interval": "1m",
            "input_series": [
                {"series": 'llmforge_jobs{state="FAILED"}', "values": "0+1x10 10x110"},
                {"series": 'llmforge_jobs{state="SUCCEEDED"}', "values": "0+1x10 10x110"},
                {"series": ok, "values": "1x120"},
            ],
            "alert_rule_test": [
                {"eval_time": "40m", "alertname": fail["alert"], "exp_alerts": _expect(fail)},
                {"eval_time": "40m", "alertname": plane["alert"], "exp_alerts": []},
            ],
        },
        {  # a RUNNING train job whose tokens/s gauge froze, and one that keeps reporting
            "interval": "1m",
            "input_series": [
                {"series": 'llmforge_jobs{kind="train",state="RUNNING"}', "values": "1x120"},
                {"series": "ray_llmforge_tokens_per_s", "values": "100+1x10 110x110"},
            ],
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": stall["alert"], "exp_alerts": []},
                {"eval_time": "60m", "alertname": stall["alert"], "exp_alerts": _expect(stall)},
            ],
        },
        {  # 10% of requests answer 500, for longer than the rule's 10 minutes
            "interval": "1m",
            "input_series": [
                {
                    "series": 'llmforge_http_request_seconds_count{status="500"}',
                    "values": "0+1x60",
                },
                {
                    "series": 'llmforge_http_request_seconds_count{status="200"}',
                    "values": "0+9x60",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": api["alert"], "exp_alerts": _expect(api)}
            ],
        },
        {  # the head stops answering Prometheus at minute 10
            "interval": "1m",
            "input_series": [
                {"series": 'up{service="llmforge-head-svc"}', "values": "1x10 0x30"},
                {"series": ok, "values": "1x40"},
            ],
            "alert_rule_test": [
                {"eval_time": "8m", "alertname": head["alert"], "exp_alerts": []},
                {"eval_time": "30m", "alertname": head["alert"], "exp_alerts": _expect(head)},
                {"eval_time": "30m", "alertname": plane["alert"], "exp_alerts": []},
            ],
        },
    ]
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        yaml.safe_dump(
            {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests},
            sort_keys=False,
        )
    )
    done = _run("test", "rules", str(suite))
    assert done.returncode == 0, done.stdout + done.stderr
