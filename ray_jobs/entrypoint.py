"""The shared shape of every job entrypoint: ``python -m ray_jobs.<kind> --spec URI``.

It parses and validates the spec, runs the job, writes ``result.json`` into the output folder and,
on failure, prints one ``LLMFORGE_ERROR:`` line that the control plane shows as the job's error.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from contracts.specs import Spec
from llm import storage

ERROR_PREFIX = "LLMFORGE_ERROR: "
RESULT_FILE = "result.json"
S = TypeVar("S", bound=Spec)


class JobError(Exception):
    """A failure whose message is for the user (a missing input, a bad file), not a bug."""


def local_path(uri: str) -> Path:
    """A plain path or file:// URI as a local path."""
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if "://" in uri:
        raise JobError(f"unsupported URI scheme in {uri!r}: use a local path or file://")
    return Path(uri)


def load_spec(uri: str, spec_type: type[S]) -> S:
    try:
        text = storage.read_text(uri)
    except FileNotFoundError as e:
        raise JobError(f"spec file not found: {uri}") from e
    return spec_type.model_validate(json.loads(text))


def write_result(output: str, result: dict[str, Any]) -> None:
    """The job's completion marker, written last (whole-object: never half a result)."""
    storage.write_json(storage.join(output, RESULT_FILE), result)


def main(
    spec_type: type[S], run: Callable[[S], dict[str, Any]], argv: list[str] | None = None
) -> int:
    parser = argparse.ArgumentParser(description=f"llmforge {spec_type.__name__} job")
    parser.add_argument("--spec", required=True, help="path or file:// URI of the spec JSON")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec, spec_type)
        result = run(spec)
        write_result(spec.output, result)  # type: ignore[attr-defined]
    except (JobError, ValidationError, FileNotFoundError, ValueError) as e:
        traceback.print_exc()
        print(f"{ERROR_PREFIX}{e}".replace("\n", " "), file=sys.stderr, flush=True)
        return 1
    except Exception as e:
        traceback.print_exc()
        print(
            f"{ERROR_PREFIX}{type(e).__name__}: {e}".replace("\n", " "), file=sys.stderr, flush=True
        )
        return 1
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0
