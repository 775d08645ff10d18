"""The REST API keeps its OpenAPI contract: schemathesis with all its checks (no server error,
documented statuses, content types and headers, response schemas, schema-valid requests
accepted and schema-violating ones rejected, Allow headers, auth, use after delete, …) and all
its phases (examples, coverage, fuzzing, stateful sequences over the document's links).

The control plane runs for real (uvicorn in a thread, SQLite, keys on) and is called with the
admin key (``bench/contract_hooks.py``), so every route's handler runs, not only the auth
check. Ray is an address where nothing listens: submissions fail visibly, a 2xx with a FAILED
job, never a 5xx. The run is seeded and small; ``python -m bench.api_contract`` runs more
examples against a control plane on embedded defaults (a real Ray head).

What is left out is named, with its reason: ``bench.api_contract.EXCLUSIONS`` (rules the
schema documents but OpenAPI cannot express, and state such as opaque cursors), and here the
deployment operations, which wait for Ray's connection timeout when no cluster answers
(test_deployments.py runs them on a real cluster).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from bench.api_contract import EXCLUSIONS, failures, run_schemathesis, stateful
from services.ray_head import free_port
from services.server import BackgroundServer
from services.settings import Settings

# Per operation and phase; LLMFORGE_SCHEMATHESIS_EXAMPLES raises it for a deeper search.
EXAMPLES = int(os.environ.get("LLMFORGE_SCHEMATHESIS_EXAMPLES", "3"))
# Stateful sequences, each up to bench.api_contract.MAX_STEPS calls (a budget: Hypothesis may
# run fewer, or a few more).
SCENARIOS = 10 * EXAMPLES
NEED_RAY = r"^/api/v1/models/\{model_id\}/deploy$"


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    home = tmp_path_factory.mktemp("schemathesis")
    server = BackgroundServer(
        Settings(
            home=home,
            api_port=free_port(),
            ray_address=f"http://127.0.0.1:{free_port()}",
            artifact_root=str(home / "artifacts"),
            poll_interval_s=3600,
            rate_limit_per_min=0,  # thousands of requests a minute, all with the admin key
        )
    )
    server.start()
    yield server
    server.stop()


def test_every_operation_keeps_the_contract(live_api: BackgroundServer) -> None:
    extra = [f"--exclude-path-regex={NEED_RAY}"]
    run = run_schemathesis(live_api, EXAMPLES, seed=1, extra=extra, scenarios=SCENARIOS)
    report = run.stdout[-30_000:]
    assert "Tested: 62" in report, report  # every operation but the three deployment ones
    assert run.returncode == 0 and failures(run.stdout) == 0, report
    assert all(why for why in EXCLUSIONS.values())
    # The stateful phase ran, chaining calls over the document's links (create, then read,
    # change or delete what was made), with no failure.
    document = httpx.get(f"{live_api.url}/openapi.json", timeout=30).json()
    documented = sum(
        len(response.get("links", {}))
        for operations in document["paths"].values()
        for operation in operations.values()
        for response in operation["responses"].values()
    )
    phase = stateful(run.stdout)
    assert phase["ran"] and phase["passed"] and phase["scenarios"] >= 1, report
    assert phase["links_documented"] == documented >= 25, (phase, documented)
    # Seeded runs here followed 3 links (13 scenarios; a stateful-only run: 13 links in 47),
    # most creates being refused for cross-field rules (bench.api_contract.EXCLUSIONS).
    assert phase["links_covered"] >= 3, phase
