"""The ``llmforge`` command: run the control plane, the demo, and talk to the REST API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import httpx
import yaml

from services.settings import get_settings


def _api() -> httpx.Client:
    return httpx.Client(
        base_url=os.environ.get("LLMFORGE_API_URL", "http://127.0.0.1:8000"), timeout=30
    )


def _print_response(r: httpx.Response) -> int:
    print(json.dumps(r.json(), indent=2))
    return 0 if r.is_success else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from services.server import serve

    serve(get_settings())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from services.demo import run_demo

    return run_demo(
        get_settings(),
        user_input=args.input,
        steps=args.steps,
        workers=args.workers,
        timeout_s=args.timeout,
    )


def cmd_submit(args: argparse.Namespace) -> int:
    spec = yaml.safe_load(Path(args.spec).read_text())
    with _api() as api:
        return _print_response(api.post("/api/v1/jobs", json={"kind": args.kind, "spec": spec}))


def cmd_status(args: argparse.Namespace) -> int:
    with _api() as api:
        return _print_response(api.get(f"/api/v1/jobs/{args.job}"))


def cmd_metrics(args: argparse.Namespace) -> int:
    params = {"name": args.name} if args.name else {}
    with _api() as api:
        return _print_response(api.get(f"/api/v1/jobs/{args.job}/metrics", params=params))


def cmd_logs(args: argparse.Namespace) -> int:
    with _api() as api:
        r = api.get(f"/api/v1/jobs/{args.job}/logs")
        if not r.is_success:
            return _print_response(r)
        print(r.json()["logs"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the control plane").set_defaults(fn=cmd_serve)
    demo = sub.add_parser("demo", help="curate → tokenize → train → evaluate, end to end")
    demo.add_argument("--input", help="your corpus: JSONL file or folder (default: a real sample)")
    demo.add_argument("--steps", type=int, default=300, help="training steps")
    demo.add_argument("--workers", type=int, default=2, help="Ray Train workers (DDP)")
    demo.add_argument("--timeout", type=float, default=1200, help="seconds before giving up")
    demo.set_defaults(fn=cmd_demo)
    submit = sub.add_parser("submit", help="submit one job from a JSON/YAML spec file")
    submit.add_argument("kind", choices=["curate", "tokenize", "train", "evaluate"])
    submit.add_argument("spec")
    submit.set_defaults(fn=cmd_submit)
    for name, fn in (("status", cmd_status), ("logs", cmd_logs)):
        p = sub.add_parser(name, help=f"a job's {name}")
        p.add_argument("job")
        p.set_defaults(fn=fn)
    metrics = sub.add_parser("metrics", help="a job's metrics")
    metrics.add_argument("job")
    metrics.add_argument("--name")
    metrics.set_defaults(fn=cmd_metrics)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
