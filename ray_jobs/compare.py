"""The compare job (``contracts.compare.CompareSpec``): reads every run's evaluation, train
result and validation curve through ``llm.storage`` and writes ``compare.json``, ``compare.md``
and ``curves.png`` (``llm.eval.compare``). It reads a few small files; no cluster work.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from contracts.compare import CompareRun, CompareSpec
from llm import storage
from llm.eval.compare import chart, markdown, tabulate
from ray_jobs import entrypoint
from ray_jobs.entrypoint import JobError
from ray_jobs.reporting import METRICS_FILE

CURVE_METRIC = "val_loss"


def _read_json(uri: str, what: str) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads(storage.read_text(uri))
    except FileNotFoundError as e:
        raise JobError(f"{what} not found: {uri}") from e
    return loaded


def _curve(train: str) -> list[tuple[int, float]]:
    """(step, val_loss) of a train output's metrics.jsonl, in step order."""
    uri = storage.join(train, METRICS_FILE)
    if not storage.is_file(uri):
        return []
    points = {}
    for line in storage.read_text(uri).splitlines():
        record = json.loads(line)
        if record.get("name") == CURVE_METRIC:
            points[int(record["step"])] = float(record["value"])
    return sorted(points.items())


def _load(runs: Mapping[str, CompareRun]) -> dict[str, dict[str, Any]]:
    loaded = {}
    for name, run in runs.items():
        evaluation = _read_json(storage.join(run.evaluate, "eval.json"), f"run {name}: eval.json")
        if "tasks" not in evaluation:
            raise JobError(f"run {name}: {run.evaluate} evaluated no tasks")
        train = _read_json(storage.join(run.train, "result.json"), f"run {name}: train result")
        loaded[name] = {"tasks": evaluation["tasks"], "train": train, "curve": _curve(run.train)}
    return loaded


def run(spec: CompareSpec) -> dict[str, Any]:
    out = storage.resolve(spec.output)
    storage.check_access(out, write=True)
    loaded = _load(spec.runs)
    runs = {name: (run.arm, run.seed) for name, run in spec.runs.items()}
    table = tabulate(runs, loaded, spec.baseline, spec.tasks)
    storage.write_text(storage.join(out, "compare.md"), markdown(table))
    curves = {name: run["curve"] for name, run in loaded.items()}
    png = chart(runs, curves)
    chart_uri = None
    if png is not None:
        chart_uri = storage.join(out, "curves.png")
        storage.write_bytes(chart_uri, png)
    storage.write_text(storage.join(out, "compare.json"), json.dumps({**table, "curves": curves}))
    return {**table, "table": storage.join(out, "compare.md"), "chart": chart_uri}


if __name__ == "__main__":
    raise SystemExit(entrypoint.main(CompareSpec, run))
