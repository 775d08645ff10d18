"""schemathesis hooks for the contract run (``SCHEMATHESIS_HOOKS=bench.contract_hooks``).

The run authenticates with the control plane's bootstrap admin key, read from its key file
before every request: a ``POST /api/v1/keys/{id}/rotate`` that the stateful phase makes on that
key rewrites the file, as it does for the local CLI. The one key the run must not lose is the
one it calls with: revoking or rotating it is sent to a key id that does not exist instead (the
operations still run on every key the run creates).

A dataset or model registers only a URI that exists under the team's roots, which a generated
string never is: a registration whose ``uri`` is valid in form is pointed at a fresh folder in
the admin's team's area instead (each its own, since a DELETE with ``delete_files`` removes
it), so that the stateful phase can follow the links from a registration to its GET, lineage
and DELETE. URIs invalid in form are sent as generated.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import schemathesis
from pydantic import TypeAdapter

from services.api.schemas import RegistryUri

KEY_FILE = "LLMFORGE_CONTRACT_KEY_FILE"
ADMIN_ID = "LLMFORGE_CONTRACT_ADMIN_ID"
AREA = "LLMFORGE_CONTRACT_AREA"  # the admin's team's area on the control plane's disk
REGISTRIES = ("/api/v1/datasets", "/api/v1/models")
URI: TypeAdapter[str] = TypeAdapter(RegistryUri)


@schemathesis.auth(refresh_interval=None)
class AdminKey:
    def get(self, case: schemathesis.Case, ctx: Any) -> str:
        return Path(os.environ[KEY_FILE]).read_text().strip()

    def set(self, case: schemathesis.Case, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schemathesis.hook
def before_call(ctx: Any, case: schemathesis.Case, **kwargs: Any) -> None:
    params = case.path_parameters or {}
    if params.get("key_id") == os.environ.get(ADMIN_ID):
        case.path_parameters = {**params, "key_id": "0"}
    registering = case.method.upper() == "POST" and case.operation.path in REGISTRIES
    if registering and isinstance(case.body, dict):
        case.body = _existing_uri(case.body)


def _existing_uri(body: dict[str, Any]) -> dict[str, Any]:
    uri = body.get("uri")
    try:
        URI.validate_python(uri)
    except ValueError:
        return body  # invalid in form: the API must say so
    folder = Path(os.environ[AREA]) / "registered" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    (folder / "part-0.jsonl").write_text('{"text": "a"}\n')
    return {**body, "uri": str(folder)}
