"""``llmforge experiment ablation SPEC``: a curation ablation (``contracts.ablation``) as one
pipeline over REST; with ``--wait``, the comparison table once it ends."""

from __future__ import annotations

import argparse
import json
from typing import Any

from llm.eval.compare import markdown
from services.cli.api import Api, ApiError
from services.cli.client import api_client, load_file, print_error, print_result, show_state


def cmd_ablation(args: argparse.Namespace) -> int:
    with api_client() as http:
        api = Api(http)
        try:
            pipeline = api.run_ablation(load_file(args.spec))
            if not args.wait:
                return print_result(lambda: pipeline)
            print(f"pipeline {pipeline.id}: {len(pipeline.jobs)} jobs", flush=True)
            pipeline = api.wait(pipeline, show_state)
        except ApiError as e:
            return print_error(e)
        if pipeline.state != "SUCCEEDED":
            print_result(lambda: pipeline)
            return 1
        compare = next(j for j in pipeline.jobs if j.stage == "compare")
        result = compare.result or {}
        pipeline_id = pipeline.id
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
