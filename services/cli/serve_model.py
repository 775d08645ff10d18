"""``llmforge serve-model ID``: deploy a registered model as a Ray Serve deployment on the
cluster (``POST /api/v1/models/{id}/deploy``), watch it, or undeploy it.

llmforge serve-model MODEL --min-replicas 1 --max-replicas 4 --device cuda --wait
llmforge serve-model MODEL --status
llmforge serve-model MODEL --undeploy
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from services.api.routes.deployments import DeploymentPublic
from services.cli.api import Api, ApiError
from services.cli.client import api_client, console, print_error, print_result

SETTLED = {"RUNNING", "FAILED", "UNDEPLOYED", "UNHEALTHY"}
SPEC_FIELDS = (
    "min_replicas",
    "max_replicas",
    "target_ongoing_requests",
    "device",
    "num_cpus",
    "max_batch",
    "max_queue",
    "cache_mb",
)


def _wait(api: Api, model: str, timeout_s: float) -> DeploymentPublic:
    deadline = time.monotonic() + timeout_s
    with console.status("waiting…") as status:
        while True:
            deployment = api.deployment(model)
            if deployment.state in SETTLED or time.monotonic() > deadline:
                return deployment
            status.update(f"{deployment.state} ({deployment.replicas} replicas running)")
            time.sleep(1)


def cmd_serve_model(args: argparse.Namespace) -> int:
    with api_client(timeout=120) as http:
        api = Api(http)
        if args.status:
            return print_result(lambda: api.deployment(args.model))
        try:
            if args.undeploy:
                deployment = api.undeploy(args.model)
            else:
                spec: dict[str, Any] = {
                    f: getattr(args, f) for f in SPEC_FIELDS if getattr(args, f) is not None
                }
                deployment = api.deploy(args.model, spec)
            if args.wait:
                deployment = _wait(api, args.model, args.timeout)
        except ApiError as e:
            return print_error(e)
        code = print_result(lambda: deployment)
        if args.wait and deployment.state not in ("RUNNING", "UNDEPLOYED"):
            print(f"llmforge serve-model: {deployment.state}", file=sys.stderr)
            return 1
        return code


def add_serve_model_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve-model",
        help="deploy a registered model on the Ray cluster (Ray Serve), or undeploy it",
    )
    p.add_argument("model", help="a registered model's id (llmforge models list)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--undeploy", action="store_true", help="delete its deployment")
    what.add_argument("--status", action="store_true", help="show its deployment's state")
    p.add_argument("--min-replicas", type=int, help="0: scale to zero when idle (default 1)")
    p.add_argument("--max-replicas", type=int, help="autoscaling's ceiling (default 1)")
    p.add_argument("--target-ongoing-requests", type=float, help="per replica (default: batch)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="cuda: one GPU per replica")
    p.add_argument("--num-cpus", type=float, help="CPUs each replica reserves (default 1)")
    p.add_argument("--max-batch", type=int, help="sequences a replica runs per step")
    p.add_argument("--max-queue", type=int, help="requests a replica queues before a 429")
    p.add_argument("--cache-mb", type=int, help="a replica's KV cache budget")
    p.add_argument("--wait", action="store_true", help="until it runs (or is undeployed)")
    p.add_argument("--timeout", type=float, default=600, help="seconds --wait waits at most")
    p.set_defaults(fn=cmd_serve_model)
