"""Every metric a job publishes to Ray has a name Ray keeps: Ray discards (with only a warning) a
name outside ``[a-zA-Z_:][a-zA-Z0-9_:]*``, and evaluate's per-task metrics are ``<task>/<metric>``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from ray.util.metrics import _VALID_METRIC_NAME_RE

from ray_jobs.evaluate import task_metrics
from ray_jobs.reporting import MetricsReporter, ray_metric_name

# What the jobs report (curate, tokenize, train, evaluate's per-task figures, a tune trial's).
REPORTED = [
    "docs_in",
    "loss",
    "tokens_per_s",
    "encode_mb_per_s",
    "hellaswag/acc_norm",
    "arc-easy/acc",
    "mmlu.stem/acc",
    "0shot/exact",
    "gsm_mini/exact_match,strict-match",
]


@pytest.mark.parametrize("name", REPORTED)
def test_ray_keeps_every_published_name(name: str) -> None:
    for trial in (False, True):
        published = ray_metric_name(name, trial=trial)
        assert _VALID_METRIC_NAME_RE.match(published) and ":" not in published, published
    assert ray_metric_name("hellaswag/acc_norm") == "llmforge_hellaswag_acc_norm"


def test_evaluates_task_metrics_reach_ray_under_valid_names(tmp_path: Path) -> None:
    """The reporter publishes evaluate's figures through real ``ray.util.metrics`` gauges, none of
    them discarded (a discarded name warns: here a warning is an error)."""
    tasks = {
        "results": {
            "hellaswag": {"metrics": {"acc_norm": {"value": 0.5}}},
            "arc_easy": {"metrics": {"acc": {"value": 0.25}}},
        },
        "groups": {"reasoning": {"metrics": {"acc": {"value": 0.4}}}},
    }
    figures = task_metrics(tasks)
    assert figures and all("/" in name for name in figures)
    reporter = MetricsReporter(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reporter.log(0, figures)
    gauges = reporter._gauges
    assert set(gauges) == set(figures)
    assert not any(g._discard_metric for g in gauges.values())
    assert {g._name for g in gauges.values()} == {ray_metric_name(n) for n in figures}
