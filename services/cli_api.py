"""``llmforge`` subcommands that talk to the control plane's REST API.

The API's URL comes from ``LLMFORGE_API_URL`` (default http://127.0.0.1:8000).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console

from ray_jobs.specs import JobKind
from services.auth import ADMIN_KEY_FILE

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED", "CANCELLED"}
console = Console(stderr=True)


def api_key() -> str | None:
    """``LLMFORGE_API_KEY``, else the admin key the local control plane wrote at first start."""
    if key := os.environ.get("LLMFORGE_API_KEY"):
        return key
    path = Path(os.environ.get("LLMFORGE_HOME", ".llmforge")) / ADMIN_KEY_FILE
    return path.read_text().strip() if path.is_file() else None


def _api(timeout: float | None = 30) -> httpx.Client:
    key = api_key()
    return httpx.Client(
        base_url=os.environ.get("LLMFORGE_API_URL", "http://127.0.0.1:8000"),
        timeout=timeout,
        headers={"Authorization": f"Bearer {key}"} if key else None,
    )


def _print_response(r: httpx.Response) -> int:
    print(json.dumps(r.json(), indent=2))
    return 0 if r.is_success else 1


def _load(path: str) -> Any:
    return yaml.safe_load(Path(path).read_text())


def _wait(api: httpx.Client, path: str) -> httpx.Response:
    """Poll until the job or pipeline ends, showing its state (and stages) as it changes."""
    last = ""
    with console.status("waiting…") as status:
        while True:
            r = api.get(path)
            body = r.json()
            if not r.is_success or body["state"] in TERMINAL | {"SUCCEEDED", "FAILED"}:
                return r
            stages = " ".join(f"{j['stage']}:{j['state']}" for j in body.get("jobs", []))
            line = f"{body['state']} {stages}".strip()
            if line != last:
                status.update(line)
                last = line
            time.sleep(1)


def cmd_submit(args: argparse.Namespace) -> int:
    with _api() as api:
        r = api.post("/api/v1/jobs", json={"kind": args.kind, "spec": _load(args.spec)})
        if args.wait and r.is_success:
            r = _wait(api, f"/api/v1/jobs/{r.json()['id']}")
        return _print_response(r)


def cmd_status(args: argparse.Namespace) -> int:
    with _api() as api:
        return _print_response(api.get(f"/api/v1/jobs/{args.job}"))


def cmd_cancel(args: argparse.Namespace) -> int:
    with _api() as api:
        return _print_response(api.post(f"/api/v1/jobs/{args.job}/cancel"))


def cmd_retry(args: argparse.Namespace) -> int:
    with _api() as api:
        return _print_response(api.post(f"/api/v1/jobs/{args.job}/retry"))


def cmd_metrics(args: argparse.Namespace) -> int:
    params = {"name": args.name} if args.name else {}
    with _api() as api:
        return _print_response(api.get(f"/api/v1/jobs/{args.job}/metrics", params=params))


def cmd_logs(args: argparse.Namespace) -> int:
    with _api(timeout=None if args.follow else 30) as api:
        if args.follow:
            with api.stream("GET", f"/api/v1/jobs/{args.job}/logs", params={"follow": True}) as r:
                if not r.is_success:
                    r.read()
                    return _print_response(r)
                for chunk in r.iter_text():
                    sys.stdout.write(chunk)
                    sys.stdout.flush()
            return 0
        r = api.get(f"/api/v1/jobs/{args.job}/logs")
        if not r.is_success:
            return _print_response(r)
        print(r.json()["logs"])
    return 0


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    with _api() as api:
        r = api.post("/api/v1/pipelines", json=_load(args.file))
        if args.wait and r.is_success:
            r = _wait(api, f"/api/v1/pipelines/{r.json()['id']}")
        return _print_response(r)


def cmd_pipeline_resume(args: argparse.Namespace) -> int:
    with _api() as api:
        return _print_response(api.post(f"/api/v1/pipelines/{args.pipeline}/resume"))


def cmd_keys_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "role": args.role, "team": args.team}
    with _api() as api:
        return _print_response(api.post("/api/v1/keys", json=body))


def cmd_keys_list(args: argparse.Namespace) -> int:
    with _api() as api:
        return _print_response(api.get("/api/v1/keys"))


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    with _api() as api:
        return _print_response(api.delete(f"/api/v1/keys/{args.key_id}"))


def _add_keys(sub: Any) -> None:
    keys = sub.add_parser("keys", help="API keys (admin)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="create a key; it is printed once")
    create.add_argument("--name", required=True)
    create.add_argument("--role", choices=["read_only", "member", "admin"], default="member")
    create.add_argument("--team", default="default")
    create.set_defaults(fn=cmd_keys_create)
    ksub.add_parser("list", help="list keys").set_defaults(fn=cmd_keys_list)
    revoke = ksub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(fn=cmd_keys_revoke)


def add_api_commands(sub: Any) -> None:
    _add_keys(sub)
    submit = sub.add_parser("submit", help="submit one job from a JSON/YAML spec file")
    submit.add_argument("kind", choices=[k.value for k in JobKind])
    submit.add_argument("spec")
    submit.add_argument("--wait", action="store_true", help="wait for the job to end")
    submit.set_defaults(fn=cmd_submit)
    for name, fn, text in (
        ("status", cmd_status, "a job's state and result"),
        ("cancel", cmd_cancel, "stop a job"),
        ("retry", cmd_retry, "run an ended, unsuccessful job again"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("job")
        p.set_defaults(fn=fn)
    logs = sub.add_parser("logs", help="a job's logs")
    logs.add_argument("job")
    logs.add_argument("-f", "--follow", action="store_true", help="stream until the job ends")
    logs.set_defaults(fn=cmd_logs)
    metrics = sub.add_parser("metrics", help="a job's metrics")
    metrics.add_argument("job")
    metrics.add_argument("--name")
    metrics.set_defaults(fn=cmd_metrics)
    pipelines = sub.add_parser("pipelines", help="run or resume a pipeline of jobs")
    psub = pipelines.add_subparsers(dest="pipeline_command", required=True)
    run = psub.add_parser("run", help="submit a pipeline from a JSON/YAML file")
    run.add_argument("file")
    run.add_argument("--wait", action="store_true", help="wait for the pipeline to end")
    run.set_defaults(fn=cmd_pipeline_run)
    resume = psub.add_parser("resume", help="rerun a failed pipeline from its failed stage")
    resume.add_argument("pipeline")
    resume.set_defaults(fn=cmd_pipeline_resume)
