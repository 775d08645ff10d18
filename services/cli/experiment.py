"""``llmforge experiment ablation SPEC``: a curation ablation (``contracts.ablation``) as one
pipeline over REST; with ``--wait``, the comparison table once it ends."""

from __future__ import annotations

import argparse
import json
from typing import Any

from llm.eval.compare import markdown
from services.cli.client import api_client, load_file, print_response, wait_until_ended


def cmd_ablation(args: argparse.Namespace) -> int:
    with api_client() as api:
        r = api.post("/api/v1/experiments/ablation", json=load_file(args.spec))
        if not (args.wait and r.is_success):
            return print_response(r)
        pipeline_id = r.json()["id"]
        print(f"pipeline {pipeline_id}: {len(r.json()['jobs'])} jobs", flush=True)
        r = wait_until_ended(api, f"/api/v1/pipelines/{pipeline_id}")
        body = r.json()
        if not r.is_success or body["state"] != "SUCCEEDED":
            return print_response(r) or 1
        compare = next(j for j in body["jobs"] if j["stage"] == "compare")
        result = compare["result"]
        print(markdown(result))
        print(json.dumps({"pipeline": pipeline_id, "table": result["table"],
                          "chart": result["chart"]}))  # fmt: skip
        return 0


def add_experiment_commands(sub: Any) -> None:
    experiment = sub.add_parser("experiment", help="experiments that run as one pipeline")
    esub = experiment.add_subparsers(dest="experiment_command", required=True)
    ablation = esub.add_parser(
        "ablation",
        help="datasets that differ only in curation, trained and evaluated alike (YAML/JSON)",
    )
    ablation.add_argument("spec", help="an ablation spec file (see README: Curation ablations)")
    ablation.add_argument("--wait", action="store_true", help="wait, then print the table")
    ablation.set_defaults(fn=cmd_ablation)
