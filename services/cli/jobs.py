"""``llmforge`` subcommands for jobs, pipelines and API keys, over the control plane's REST API."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from contracts.jobs import JobKind
from services.api.log_stream import LogLine
from services.api.schemas import JobPublic, PipelinePublic
from services.cli.api import Api, ApiError
from services.cli.client import (
    MissingVariableError,
    api_client,
    console,
    load_file,
    print_error,
    print_result,
    show_state,
)


def _spec_file(path: str, variables: list[str]) -> Any:
    """The file's content, its ``${NAME}`` variables expanded; a missing one ends the command."""
    try:
        return load_file(path, variables)
    except MissingVariableError as e:
        raise SystemExit(f"{path}: {e}") from None


def cmd_submit(args: argparse.Namespace) -> int:
    spec = _spec_file(args.spec, args.var)

    def submit() -> JobPublic:
        job = api.submit_job({"kind": args.kind, "spec": spec})
        return api.wait(job, show_state) if args.wait else job

    with api_client() as http:
        api = Api(http)
        return print_result(submit)


def cmd_status(args: argparse.Namespace) -> int:
    with api_client() as http:
        return print_result(lambda: Api(http).job(args.job))


def cmd_cancel(args: argparse.Namespace) -> int:
    with api_client() as http:
        return print_result(lambda: Api(http).cancel_job(args.job))


def cmd_retry(args: argparse.Namespace) -> int:
    with api_client() as http:
        return print_result(lambda: Api(http).retry_job(args.job))


def cmd_metrics(args: argparse.Namespace) -> int:
    with api_client() as http:
        return print_result(lambda: Api(http).job_metrics(args.job, args.name))


def cmd_logs(args: argparse.Namespace) -> int:
    with api_client() as http:
        api = Api(http)
        try:
            if not args.follow:
                print(api.job_logs(args.job).logs)
                return 0
            return _follow(api, args.job)
        except ApiError as e:
            return print_error(e)


def _follow(api: Api, job_id: str) -> int:
    """Print each line as the job writes it; then its state (stderr): 0 unless the stream
    ended early."""
    for item in api.follow_logs(job_id):
        if isinstance(item, LogLine):
            sys.stdout.write(item.line + "\n")
            sys.stdout.flush()
        elif item.error:
            console.print(f"log stream ended early: {item.error}", highlight=False)
            return 1
        else:
            console.print(f"job {job_id}: {item.status}", highlight=False)
    return 0


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    body = _spec_file(args.file, args.var)

    def run() -> PipelinePublic:
        pipeline = api.run_pipeline(body)
        return api.wait(pipeline, show_state) if args.wait else pipeline

    with api_client() as http:
        api = Api(http)
        return print_result(run)


def cmd_pipeline_resume(args: argparse.Namespace) -> int:
    with api_client() as http:
        return print_result(lambda: Api(http).resume_pipeline(args.pipeline))


def cmd_keys_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "role": args.role, "team": args.team}
    if args.expires_in_days is not None:
        body["expires_in_days"] = args.expires_in_days
    if args.rate_limit is not None:
        body["rate_limit_per_min"] = args.rate_limit
    with api_client() as http:
        return print_result(lambda: Api(http).create_key(body))


def cmd_keys_list(args: argparse.Namespace) -> int:
    with api_client() as http:
        return print_result(lambda: Api(http).keys())


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    with api_client() as http:
        return print_result(lambda: Api(http).revoke_key(args.key_id))


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    body: dict[str, int] = {"grace_seconds": args.grace_seconds}
    if args.expires_in_days is not None:
        body["expires_in_days"] = args.expires_in_days
    with api_client() as http:
        return print_result(lambda: Api(http).rotate_key(args.key_id, body))


def _add_keys(sub: Any) -> None:
    keys = sub.add_parser("keys", help="API keys (admin; rotate: also your own)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="create a key; it is printed once")
    create.add_argument("--name", required=True)
    create.add_argument("--role", choices=["read_only", "member", "admin"], default="member")
    create.add_argument("--team", default="default")
    create.add_argument("--expires-in-days", type=int, help="the key stops working after this")
    create.add_argument(
        "--rate-limit", type=int, help="its requests a minute (0: none; default: the server's)"
    )
    create.set_defaults(fn=cmd_keys_create)
    rotate = ksub.add_parser(
        "rotate", help="a new key like this one (printed once); the old one is revoked"
    )
    rotate.add_argument("key_id")
    rotate.add_argument(
        "--grace-seconds", type=int, default=0, help="the old key keeps working this long"
    )
    rotate.add_argument("--expires-in-days", type=int, help="the new key's lifetime")
    rotate.set_defaults(fn=cmd_keys_rotate)
    ksub.add_parser("list", help="list keys").set_defaults(fn=cmd_keys_list)
    revoke = ksub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(fn=cmd_keys_revoke)


def add_job_commands(sub: Any) -> None:
    _add_keys(sub)
    submit = sub.add_parser("submit", help="submit one job from a JSON/YAML spec file")
    submit.add_argument("kind", choices=[k.value for k in JobKind])
    submit.add_argument("spec")
    submit.add_argument("--wait", action="store_true", help="wait for the job to end")
    submit.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a value for ${NAME} in the file (else the environment's, else ${NAME:-default})",
    )
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
    run.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a value for ${NAME} in the file (else the environment's, else ${NAME:-default})",
    )
    run.set_defaults(fn=cmd_pipeline_run)
    resume = psub.add_parser("resume", help="rerun a failed pipeline from its failed stage")
    resume.add_argument("pipeline")
    resume.set_defaults(fn=cmd_pipeline_resume)
