"""The control plane's REST API as the CLI reaches it: URL, key, and printing its answers.

The API's URL comes from ``LLMFORGE_API_URL`` (default http://127.0.0.1:8000), the key from
``LLMFORGE_API_KEY`` or the admin key a local control plane wrote at its first start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import BaseModel
from rich.console import Console

from services.auth import ADMIN_KEY_FILE
from services.cli.api import ApiError

console = Console(stderr=True)


def api_key() -> str | None:
    """``LLMFORGE_API_KEY``, else the admin key the local control plane wrote at first start."""
    if key := os.environ.get("LLMFORGE_API_KEY"):
        return key
    path = Path(os.environ.get("LLMFORGE_HOME", ".llmforge")) / ADMIN_KEY_FILE
    return path.read_text().strip() if path.is_file() else None


def api_client(timeout: float | None = 30) -> httpx.Client:
    key = api_key()
    return httpx.Client(
        base_url=os.environ.get("LLMFORGE_API_URL", "http://127.0.0.1:8000"),
        timeout=timeout,
        headers={"Authorization": f"Bearer {key}"} if key else None,
    )


def print_response(r: httpx.Response) -> int:
    print(json.dumps(r.json(), indent=2))
    return 0 if r.is_success else 1


def load_file(path: str) -> Any:
    return yaml.safe_load(Path(path).read_text())


def print_result(call: Callable[[], BaseModel | list[Any]]) -> int:
    """Print what a typed call (``services.cli.api``) answered (a model, or a list of them),
    or its error body: 0 or 1."""
    try:
        result = call()
    except ApiError as e:
        return print_error(e)
    if isinstance(result, list):
        print(json.dumps([item.model_dump(mode="json") for item in result], indent=2))
    else:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
    return 0


def print_error(e: ApiError) -> int:
    print(json.dumps(e.error.model_dump(mode="json"), indent=2))
    return 1


def show_state(line: str) -> None:
    console.print(line, highlight=False)
