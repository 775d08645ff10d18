"""schemathesis hooks for the contract run (``SCHEMATHESIS_HOOKS=bench.contract_hooks``).

The run authenticates with the control plane's bootstrap admin key, read from its key file
before every request: a ``POST /api/v1/keys/{id}/rotate`` that the stateful phase makes on that
key rewrites the file, as it does for the local CLI. The one key the run must not lose is the
one it calls with: revoking or rotating it is sent to a key id that does not exist instead (the
operations still run on every key the run creates).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import schemathesis

KEY_FILE = "LLMFORGE_CONTRACT_KEY_FILE"
ADMIN_ID = "LLMFORGE_CONTRACT_ADMIN_ID"


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
