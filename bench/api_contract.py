"""The REST API's contract, checked as a client would: schemathesis with all its checks.

Starts a control plane on embedded defaults (a local Ray head, SQLite, keys on) in a temporary
home on loopback, then runs ``schemathesis run <its openapi.json> -c all -n N`` (examples,
coverage, fuzzing and stateful phases) with the admin key (``bench/contract_hooks.py``). Prints
schemathesis's report; the last line is one JSON object with the failure count and exit status.

    .venv/bin/python -m bench.api_contract [--examples 25] [--seed 1]

The per-key rate limit is off (the run makes thousands of requests with one key); everything
else is the default. ``tests/services/test_schemathesis.py`` runs the same with few examples.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from bench.contract_hooks import ADMIN_ID, AREA, KEY_FILE
from services.auth import ADMIN_KEY_FILE
from services.ray_head import free_port
from services.server import BackgroundServer
from services.settings import Settings

MAX_STEPS = 10  # calls in one stateful sequence
CURSOR = "cursor: an opaque token the server made (next_cursor); any other string is a 422"
CROSS_FIELD = "a rule across fields that the schema documents but OpenAPI cannot express"
# Checks left out of the run, by operation, each with the reason: (operation, check) -> why.
EXCLUSIONS: dict[tuple[str, str], str] = {
    **{
        (f"GET /api/v1/{path}", "positive_data_acceptance"): CURSOR
        for path in ("jobs", "datasets", "models", "ratings", "ratings/campaigns", "audit")
    },
    **{
        (f"GET /api/v1/{path}/{{path}}", "positive_data_acceptance"): "a file path: look-alike, "
        "control and format characters (Unicode NFKC rules) are a 400 that no pattern expresses"
        for path in (
            "jobs/{job_id}/artifacts",
            "datasets/{artifact_id}/files",
            "models/{artifact_id}/files",
        )
    },
    **{
        (f"POST /api/v1/{path}", "positive_data_acceptance"): "parent_id names an existing "
        "dataset or model (else a 422 naming it): state, not shape"
        for path in ("datasets", "models")
    },
    **{
        (f"DELETE /api/v1/{path}/{{artifact_id}}", "positive_data_acceptance"): "delete_files "
        "is refused (422) for an artifact whose URI is too close to a filesystem root: the "
        "record's state, not the request's shape"
        for path in ("datasets", "models")
    },
    ("POST /api/v1/jobs", "positive_data_acceptance"): "spec's schema depends on kind (the "
    "*Spec schemas): OpenAPI cannot select a property's schema by a sibling's value",
    ("POST /api/v1/pipelines", "positive_data_acceptance"): "each stage's spec depends on its "
    "kind, as for POST /api/v1/jobs",
    ("POST /api/v1/experiments/ablation", "positive_data_acceptance"): "steps are a "
    "discriminated union and runs' specs depend on their kind",
    ("POST /api/v1/keys", "positive_data_acceptance"): f"{CROSS_FIELD}: expires_in_days or "
    "expires_at, not both; expires_at in the future",
    ("POST /api/v1/plan", "positive_data_acceptance"): f"{CROSS_FIELD}: exactly one of flops, "
    "gpu_hours and tokens",
    ("POST /api/v1/ratings", "positive_data_acceptance"): f"{CROSS_FIELD}: model_a and model_b "
    "differ",
    ("POST /api/v1/ratings/campaigns", "positive_data_acceptance"): f"{CROSS_FIELD}: each model "
    "once, and prompts or a template",
    ("POST /api/v1/ratings/preferences", "positive_data_acceptance"): "output: a URI under the "
    "team's write roots (control and look-alike characters refused)",
    ("POST /api/v1/prompts", "positive_data_acceptance"): f"{CROSS_FIELD}: an example gives "
    "its input or its variables; the template must parse (Jinja2)",
    ("PUT /api/v1/prompts/{ref}", "positive_data_acceptance"): "as POST /api/v1/prompts",
    ("POST /api/v1/prompts/{ref}/render", "positive_data_acceptance"): "the variables the "
    "stored template needs: state, not shape",
    ("PUT /api/v1/teams/{team}/roots", "positive_data_acceptance"): "uri: a storage root that "
    "holds none of the control plane's secrets (checked on the server's disk)",
    ("POST /api/v1/models/{model_id}/deploy", "positive_data_acceptance"): f"{CROSS_FIELD}: "
    "max_replicas >= min_replicas",
    **{
        (f"POST {path}", "positive_data_acceptance"): f"{CROSS_FIELD}: a prompt (or messages) "
        "or a prompt_template, one of them"
        for path in (
            "/v1/completions",
            "/v1/chat/completions",
            "/api/v1/models/{model_id}/completions",
        )
    },
}


def config_file(
    folder: Path, exclusions: dict[tuple[str, str], str], examples: int, scenarios: int
) -> Path:
    """A schemathesis.toml: ``examples`` per operation and phase, ``scenarios`` sequences of up
    to ``MAX_STEPS`` linked calls in the stateful phase, every check on but each excluded one
    for its operation. (The examples are set here, not with ``--max-examples``: an option on
    the command line would override the stateful phase's own.)"""
    lines = [
        f"generation.max-examples = {examples}",
        "",
        "[phases.stateful]",
        f"generation.max-examples = {scenarios}",
        f"max-steps = {MAX_STEPS}",
        "",
        "[checks]",
        "enabled = true  # all of them (`-c all`)",
        "",
    ]
    for (operation, check), why in sorted(exclusions.items()):
        lines += [
            f"# {why}",
            "[[operations]]",
            f"include-name = {json.dumps(operation)}",
            f"checks.{check}.enabled = false",
            "",
        ]
    path = folder / "schemathesis.toml"
    path.write_text("\n".join(lines))
    return path


def run_schemathesis(
    server: BackgroundServer,
    examples: int,
    seed: int,
    extra: list[str] | None = None,
    exclusions: dict[tuple[str, str], str] | None = None,
    scenarios: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """``schemathesis run`` with every check and phase against ``server``, in a scratch folder
    (its cassettes and caches stay out of the checkout), less ``exclusions``; the stateful
    phase runs up to about ``scenarios`` sequences (default: ``examples`` x 2)."""
    keys = httpx.get(f"{server.url}/api/v1/keys", headers=server.headers, timeout=30).json()
    # The first request for the document builds it (seconds on a loaded machine); schemathesis
    # waits 10 s for it, so build it now: the app keeps it.
    httpx.get(f"{server.url}/openapi.json", timeout=300).raise_for_status()
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
        "SCHEMATHESIS_HOOKS": "bench.contract_hooks",
        KEY_FILE: str(server.settings.home / ADMIN_KEY_FILE),
        ADMIN_ID: keys[0]["id"],
        AREA: server.settings.team_area(keys[0]["team"]),
        "NO_COLOR": "1",
    }
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file={config}",
        "run",
        f"{server.url}/openapi.json",
        f"--seed={seed}",
        "--workers=1",
        "--suppress-health-check=all",
        "--request-timeout=120",  # a loaded CI machine, not a slow API
        *(extra or []),
    ]
    with tempfile.TemporaryDirectory() as scratch:
        config = config_file(
            Path(scratch),
            EXCLUSIONS if exclusions is None else exclusions,
            examples,
            examples * 2 if scenarios is None else scenarios,
        )
        command[1] = command[1].format(config=config)
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=scratch)


def stateful(output: str) -> dict[str, int | bool]:
    """What the report says of the stateful phase: whether it passed, its scenarios, and the
    links it followed (covered) of those it chose from (selected; total, inferred ones among
    them: the rest are the document's own)."""
    phase = re.search(r"(\S+)\s+Stateful \(in [^)]*\)\s+Scenarios:\s+(\d+)", output)
    links = re.search(
        r"API Links:\s+(\d+) covered / (\d+) selected / (\d+) total(?: \((\d+) inferred\))?",
        output,
    )
    if phase is None or links is None:
        return {"ran": False}
    covered, selected, total, inferred = (int(g or 0) for g in links.groups())
    return {
        "ran": True,
        "passed": phase.group(1) == "\u2705",
        "scenarios": int(phase.group(2)),
        "links_covered": covered,
        "links_selected": selected,
        "links_total": total,
        "links_documented": total - inferred,
    }


def failures(output: str) -> int:
    """The count in schemathesis's closing line (``== 3 failures, 1 warning in 20.1s ==``)."""
    found = re.findall(r"(\d+) failures?\b", output)
    return int(found[-1]) if found else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenarios", type=int, help="stateful sequences (default examples x 2)")
    parser.add_argument("--max-time", type=int, default=0, help="seconds; 0: no budget")
    parser.add_argument("--all", action="store_true", help="no exclusions (EXCLUSIONS)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="llmforge-contract-"))
    server = BackgroundServer(Settings(home=home, api_port=free_port(), rate_limit_per_min=0))
    server.start()
    try:
        extra = [f"--max-time={args.max_time}"] if args.max_time else []
        exclusions = {} if args.all else None
        run = run_schemathesis(server, args.examples, args.seed, extra, exclusions, args.scenarios)
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(run.stdout)
    print(run.stderr, file=sys.stderr)
    summary = {"failures": failures(run.stdout), "exit": run.returncode}
    print(json.dumps(summary | {"stateful": stateful(run.stdout)}))
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
