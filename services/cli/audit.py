"""``llmforge audit``: the audit log (admins), newest first, with the API's filters."""

from __future__ import annotations

import argparse
from typing import Any

from services.cli.api import Api
from services.cli.client import api_client, print_result

FILTERS = ("action", "team", "key_id", "resource_type", "resource_id", "since", "until", "cursor")


def cmd_audit(args: argparse.Namespace) -> int:
    params = {name: getattr(args, name) for name in FILTERS if getattr(args, name) is not None}
    with api_client() as http:
        return print_result(lambda: Api(http).audit(**params, limit=args.limit))


def add_audit_commands(sub: Any) -> None:
    p = sub.add_parser("audit", help="who submitted, cancelled, deleted, changed keys (admin)")
    p.add_argument("--action", help="e.g. job.submit, job.cancel, key.rotate, team.limit.set")
    p.add_argument("--team", help="the acting key's team")
    p.add_argument("--key-id", help="the acting key")
    p.add_argument("--resource-type", help="job, pipeline, key, team, dataset, model")
    p.add_argument("--resource-id")
    p.add_argument("--since", help="ISO time (UTC), e.g. 2026-01-31T12:00:00Z")
    p.add_argument("--until", help="ISO time (UTC)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--cursor", help="next_cursor of the previous page")
    p.set_defaults(fn=cmd_audit)
