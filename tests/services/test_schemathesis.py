"""Property-based requests from the OpenAPI schema (schemathesis): no route answers 5xx.

The control plane runs for real (uvicorn in a thread, SQLite, keys on) and is called with the
admin key, so every route's handler runs, not only the auth check. Ray is an address where
nothing listens: submissions fail visibly, which is a 2xx with a FAILED job, never a 5xx.
Examples are bounded and derandomised, so the run is repeatable and takes well under a minute.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.schemas import OpenApiSchema

from services.api.app import create_app
from services.ray_head import free_port
from services.server import BackgroundServer
from services.settings import Settings

# Per operation and mode; LLMFORGE_SCHEMATHESIS_EXAMPLES raises it for a deeper search.
EXAMPLES = int(os.environ.get("LLMFORGE_SCHEMATHESIS_EXAMPLES", "10"))


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
            rate_limit_per_min=0,  # hundreds of requests a minute, all with the admin key
        )
    )
    server.start()
    yield server
    server.stop()


def _schema() -> OpenApiSchema:
    """The app's own OpenAPI document (building the app starts nothing)."""
    app = create_app(Settings(ray_address="http://127.0.0.1:1"))
    return schemathesis.openapi.from_dict(app.openapi())


SCHEMA = _schema()
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
# An operation without parameters or body has no input to make invalid.
CASES = [(op.label, GenerationMode.POSITIVE) for op in OPERATIONS] + [
    (op.label, GenerationMode.NEGATIVE)
    for op in OPERATIONS
    if op.definition.raw.get("parameters") or op.definition.raw.get("requestBody")
]


def documented_unavailable(response: Any, case: schemathesis.Case) -> None:
    """5xx is a bug unless the operation documents it: readiness answers 503 when Ray or the
    store is down, which is what a readiness probe is for (Ray is down in this test)."""
    documented = case.operation.definition.raw.get("responses", {})
    if response.status_code >= 500 and str(response.status_code) not in documented:
        raise AssertionError(
            f"{case.operation.label} answered {response.status_code}: {response.text[:500]}"
        )


# schemathesis's own pytest plugin (`schema.parametrize`) does not run under pytest 9 (it reads
# `request.node._nodeid`), so each operation gets a plain parametrised test and a Hypothesis
# strategy from schemathesis's Python API. Negative mode sends data the schema forbids.
@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label}-{mode}" for label, mode in CASES])
def test_no_route_answers_5xx(label: str, mode: GenerationMode, live_api: BackgroundServer) -> None:
    operation = SCHEMA.find_operation_by_label(label)
    assert operation is not None

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def call(case: schemathesis.Case) -> None:
        response = case.call(base_url=live_api.url, headers=live_api.headers)
        documented_unavailable(response, case)

    call()
