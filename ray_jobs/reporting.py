"""Metrics from running jobs: to the control plane, to Ray's metrics, and to metrics.jsonl.

The file beside the job's output is written first and always, so that when the control plane is
unreachable the job keeps running and nothing is lost; records that could not be posted are
retried with the next batch. On a local path the file is appended to. Object storage cannot
append: there the reporter keeps the file's records (those of earlier attempts, read when it
starts, and its own) and rewrites the whole object, at most every ``REWRITE_EVERY_S`` and on
``flush()`` (at every checkpoint and when training ends or fails).

A tune job's trials all report to the tune job: each trial's records reach the control plane
named ``trials/<trial id>/<name>`` (``trial_metric_name``), so the job's metrics hold every
trial's curve; its own ``metrics.jsonl``, in the trial's folder, keeps the bare names, as a
train job's output does.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx

from contracts.reporting import ENV_API_URL, ENV_JOB_ID, ENV_JOB_TOKEN, METRICS_ROUTE
from llm import storage

METRICS_FILE = "metrics.jsonl"
REWRITE_EVERY_S = 30.0
TRIAL_PREFIX = "trials/"


_NOT_IN_METRIC_NAMES = re.compile(r"[^A-Za-z0-9_]")


def ray_metric_name(name: str, *, trial: bool = False) -> str:
    """The name under which Ray (and so Prometheus) publishes the job metric ``name``.

    Prometheus names hold letters, digits and ``_`` only (Ray also accepts ``:``, deprecated, and
    silently discards any other name, with a warning): every other character becomes ``_``, so
    evaluate's ``hellaswag/acc_norm`` is published as ``llmforge_hellaswag_acc_norm``. The prefix
    keeps a name from starting with a digit."""
    return f"llmforge_{'trial_' if trial else ''}{_NOT_IN_METRIC_NAMES.sub('_', name)}"


def trial_metric_name(trial: str | None, name: str) -> str:
    """The control plane's name of a metric: a tune trial's is tagged with its trial id."""
    return f"{TRIAL_PREFIX}{trial}/{name}" if trial else name


def split_trial_metric(name: str) -> tuple[str | None, str]:
    """(trial id or None, bare name) of a control-plane metric name."""
    if name.startswith(TRIAL_PREFIX) and name.count("/") >= 2:
        trial, bare = name.removeprefix(TRIAL_PREFIX).split("/", 1)
        return trial, bare
    return None, name


class MetricsReporter:
    def __init__(
        self, output: str | Path, *, publish_to_ray: bool = True, trial: str | None = None
    ) -> None:
        self.uri = storage.join(str(output), METRICS_FILE)
        self.remote = storage.is_remote(self.uri)
        self._lines: list[str] = []
        self._written = 0.0  # when the object was last rewritten
        if self.remote:
            if storage.is_file(self.uri):
                self._lines = storage.read_text(self.uri).splitlines()
        else:
            self.path = Path(self.uri.removeprefix("file://"))
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.api_url = os.environ.get(ENV_API_URL)
        self.job_id = os.environ.get(ENV_JOB_ID)
        self.token = os.environ.get(ENV_JOB_TOKEN)
        self._pending: list[dict[str, Any]] = []
        self._gauges: dict[str, Any] = {}
        self._publish_to_ray = publish_to_ray
        self.trial = trial

    def log(self, step: int, values: dict[str, float]) -> None:
        now = time.time()
        records = [
            {"step": step, "name": k, "value": float(v), "time": now} for k, v in values.items()
        ]
        lines = [json.dumps(r) for r in records]
        if self.remote:
            self._lines += lines
            if now - self._written >= REWRITE_EVERY_S:
                self.flush()
        else:
            with self.path.open("a") as f:
                f.writelines(line + "\n" for line in lines)
        # the control plane's copy names the trial; the trial's own file does not need to
        self._pending.extend(
            {**r, "name": trial_metric_name(self.trial, k)}
            for r, k in zip(records, values, strict=True)
        )
        self._post()
        if self._publish_to_ray:
            self._publish(values)

    def flush(self) -> None:
        """Make every record logged so far durable in the output's metrics.jsonl."""
        if self.remote:
            storage.write_text(self.uri, "".join(line + "\n" for line in self._lines))
            self._written = time.time()

    def _post(self) -> None:
        if not (self.api_url and self.job_id and self.token and self._pending):
            return
        url = self.api_url + METRICS_ROUTE.format(job_id=self.job_id)
        try:
            r = httpx.post(
                url,
                json={"records": self._pending},
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=5,
            )
            r.raise_for_status()
        except httpx.HTTPError as e:
            print(f"llmforge: metrics not delivered yet ({e}); kept in {self.uri}", flush=True)
            return
        self._pending = []

    def _publish(self, values: dict[str, float]) -> None:
        try:
            from ray.util.metrics import Gauge
        except ImportError:
            return
        # a trial's gauges carry its id as a tag, under names of their own: one name cannot
        # have two sets of tag keys
        kind, keys = ("trial_", ("job_id", "trial")) if self.trial else ("", ("job_id",))
        tags = {"job_id": self.job_id or "local"} | ({"trial": self.trial} if self.trial else {})
        for name, value in values.items():
            gauge = self._gauges.get(name)
            if gauge is None:
                gauge = Gauge(
                    ray_metric_name(name, trial=bool(kind)),
                    description=f"llmforge job metric {name}",
                    tag_keys=keys,
                )
                self._gauges[name] = gauge
            gauge.set(float(value), tags=tags)


def report(output: str, step: int, values: dict[str, float]) -> None:
    """Log ``values`` once, with ``metrics.jsonl`` in the job's output folder or URI."""
    reporter = MetricsReporter(output)
    reporter.log(step, values)
    reporter.flush()
