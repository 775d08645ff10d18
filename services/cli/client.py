"""The control plane's REST API as the CLI reaches it: URL, key, and printing its answers.

The API's URL comes from ``LLMFORGE_API_URL`` (default http://127.0.0.1:8000), the key from
``LLMFORGE_API_KEY`` or the admin key a local control plane wrote at its first start.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
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


# ``${NAME}`` or ``${NAME:-default}``: a variable of the file. A pipeline's own placeholders
# (``${stage.field}``) always hold a dot, so the two never meet.
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class MissingVariableError(ValueError):
    """A spec file names a variable that neither ``--var`` nor the environment sets."""


def expand_variables(value: Any, variables: Mapping[str, str]) -> Any:
    """``value`` (a parsed spec file) with every ``${NAME}`` / ``${NAME:-default}`` in its strings
    replaced by ``variables[NAME]``, else the environment's ``NAME``, else the default. Expanded
    after parsing, so a value cannot change the file's structure."""
    if isinstance(value, dict):
        return {k: expand_variables(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_variables(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = variables.get(name, os.environ.get(name, default))
        if found is None:
            raise MissingVariableError(
                f"the file uses ${{{name}}}: give it with --var {name}=VALUE (or set {name} in "
                "the environment)"
            )
        return found

    return _VARIABLE.sub(one, value)


def parse_variables(pairs: Sequence[str]) -> dict[str, str]:
    """``--var NAME=VALUE`` options as a mapping; a malformed one is an error naming it."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise MissingVariableError(f"--var {pair!r}: write it as NAME=VALUE")
        out[name] = value
    return out


def load_file(path: str, variables: Sequence[str] = ()) -> Any:
    """A JSON/YAML spec file, its ``${NAME}`` variables expanded (``variables``: NAME=VALUE)."""
    return expand_variables(yaml.safe_load(Path(path).read_text()), parse_variables(variables))


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
