"""The OpenAPI document's links: what a client may call with the id a create operation answers.

Each create operation's 2xx response links to every operation of the resource it made whose
path needs only that resource's id (``POST /api/v1/jobs`` -> ``GET /api/v1/jobs/{job_id}``,
``…/cancel``, ``…/retry``, …), the id taken from the response body. Generated clients and
schemathesis's stateful phase follow them to chain calls (create, then read, change, delete).
"""

from __future__ import annotations

import re
from typing import Any

# create operation (method, path) -> (the made resource's path prefix, its id parameter)
CREATES: dict[tuple[str, str], tuple[str, str]] = {
    ("post", "/api/v1/jobs"): ("/api/v1/jobs", "job_id"),
    ("post", "/api/v1/pipelines"): ("/api/v1/pipelines", "pipeline_id"),
    ("post", "/api/v1/datasets"): ("/api/v1/datasets", "artifact_id"),
    ("post", "/api/v1/models"): ("/api/v1/models", "artifact_id"),
    ("post", "/api/v1/prompts"): ("/api/v1/prompts", "ref"),
    ("post", "/api/v1/ratings/campaigns"): ("/api/v1/ratings/campaigns", "campaign_id"),
    ("post", "/api/v1/ratings"): ("/api/v1/ratings", "rating_id"),
    ("post", "/api/v1/keys"): ("/api/v1/keys", "key_id"),
}
_PARAM = re.compile(r"\{([^}]+)\}")


def add_links(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with a ``links`` entry on each create operation's success response."""
    paths = document.get("paths", {})
    for (method, path), (prefix, param) in CREATES.items():
        operation = paths.get(path, {}).get(method)
        if operation is None:
            continue
        links = {
            _name(target_method, target_path, prefix): {
                "operationId": target["operationId"],
                "parameters": {param: "$response.body#/id"},
                "description": f"the {param} this operation answered",
            }
            for target_path, operations in paths.items()
            if target_path.startswith(f"{prefix}/{{{param}}}")
            and _PARAM.findall(target_path) == [param]
            for target_method, target in operations.items()
        }
        for status, response in operation.get("responses", {}).items():
            if status.startswith("2") and links:
                response["links"] = links
    return document


def _name(method: str, path: str, prefix: str) -> str:
    """``GetById``, ``PostCancel``, ``DeleteById``, … : unique within one response."""
    rest = [p for p in _PARAM.sub("", path.removeprefix(prefix)).split("/") if p]
    words = [method.capitalize(), *(w.capitalize() for p in rest for w in p.split("_"))]
    return "".join(words if rest else [*words, "ById"])
