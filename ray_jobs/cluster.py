"""Connecting a job to Ray: the cluster that submitted it, else a private local one."""

from __future__ import annotations

import os

import ray
import ray.data


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
    # Same input, same output: blocks keep their order through every stage, so shards, their
    # names and the training stream do not depend on which task finished first.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
