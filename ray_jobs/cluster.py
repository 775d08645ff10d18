"""Connecting a job to Ray: the cluster that submitted it, else a private local one."""

from __future__ import annotations

import os

import ray
import ray.data

DATASOURCE_V2_ENV = "RAY_DATA_USE_DATASOURCE_V2"


def node_id() -> str:
    """The Ray node this process runs on (a job's result names the nodes its work ran on)."""
    return str(ray.get_runtime_context().get_node_id())


def init_ray() -> None:
    """Join ``RAY_ADDRESS`` (set by the Ray Jobs supervisor) or start a local instance.

    Never ``ray.init()`` bare: it would join whatever cluster last ran on this machine.
    """
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, include_dashboard=False if address == "local" else None)
    context = ray.data.DataContext.get_current()
    # Same input, same output: blocks keep their order through every stage, so shards, their
    # names and the training stream do not depend on which task finished first.
    context.execution_options.preserve_order = True
    # Parquet through Ray Data's first datasource unless RAY_DATA_USE_DATASOURCE_V2 says
    # otherwise. Ray 2.60's default (V2) lists the files in a task and reads their footers on a
    # pool of up to 32 FooterReader actors per read, each a new worker process (about 2.3
    # CPU-s here). Our jobs read parquet files they listed themselves (a curate job's parts, a
    # tokenize job's input), which V1 reads without extra processes: the ablation's two
    # concurrent 240-document curate jobs took 22-29 s instead of 45-64 s on a 2-core head.
    if DATASOURCE_V2_ENV not in os.environ:
        context.use_datasource_v2 = False
