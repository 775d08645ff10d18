"""Metrics from running jobs: to the control plane, to Ray's metrics, and to metrics.jsonl.

The file beside the job's output is written first and always, so that when the control plane is
unreachable the job keeps running and nothing is lost; records that could not be posted are
retried with the next batch.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from contracts.reporting import ENV_API_URL, ENV_JOB_ID, ENV_JOB_TOKEN, METRICS_ROUTE
from llm import storage


class MetricsReporter:
    def __init__(self, output_dir: str | Path, *, publish_to_ray: bool = True) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.api_url = os.environ.get(ENV_API_URL)
        self.job_id = os.environ.get(ENV_JOB_ID)
        self.token = os.environ.get(ENV_JOB_TOKEN)
        self._pending: list[dict[str, Any]] = []
        self._gauges: dict[str, Any] = {}
        self._publish_to_ray = publish_to_ray

    def log(self, step: int, values: dict[str, float]) -> None:
        now = time.time()
        records = [
            {"step": step, "name": k, "value": float(v), "time": now} for k, v in values.items()
        ]
        with self.path.open("a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        self._pending.extend(records)
        self._post()
        if self._publish_to_ray:
            self._publish(values)

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
            print(f"llmforge: metrics not delivered yet ({e}); kept in {self.path}", flush=True)
            return
        self._pending = []

    def _publish(self, values: dict[str, float]) -> None:
        try:
            from ray.util.metrics import Gauge
        except ImportError:
            return
        for name, value in values.items():
            gauge = self._gauges.get(name)
            if gauge is None:
                gauge = Gauge(
                    f"llmforge_{name}",
                    description=f"llmforge job metric {name}",
                    tag_keys=("job_id",),
                )
                self._gauges[name] = gauge
            gauge.set(float(value), tags={"job_id": self.job_id or "local"})


def report(output: str, step: int, values: dict[str, float]) -> None:
    """Log ``values`` once, with ``metrics.jsonl`` in the job's output folder or URI: on object
    storage the file is written in this node's scratch folder and then uploaded."""
    if not storage.is_remote(output):
        MetricsReporter(output).log(step, values)
        return
    reporter = MetricsReporter(storage.scratch("metrics", uuid.uuid4().hex))
    reporter.log(step, values)
    storage.upload(reporter.path, storage.join(output, reporter.path.name))
