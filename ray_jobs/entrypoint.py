"""The shared shape of every job entrypoint: ``python -m ray_jobs.<kind> --spec URI``.

It parses and validates the spec, claims the output (``job.json``: which job writes there; an
output that holds another job's finished results is refused), runs the job, writes
``result.json`` into the output folder last, as its completion marker, and, on failure, prints
one ``LLMFORGE_ERROR:`` line that the control plane shows as the job's error. The output may be
a local folder or an ``s3://`` prefix (``llm.storage``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from contracts.reporting import ENV_JOB_ID
from contracts.roots import RootError, Roots, violations
from contracts.spec_base import uri_paths
from contracts.specs import Spec
from llm import storage

ERROR_PREFIX = "LLMFORGE_ERROR: "
RESULT_FILE = "result.json"
OWNER_FILE = "job.json"
S = TypeVar("S", bound=Spec)


class JobError(Exception):
    """A failure whose message is for the user (a missing input, a bad file), not a bug."""


def load_spec(uri: str, spec_type: type[S]) -> S:
    try:
        text = storage.read_text(uri)
    except FileNotFoundError as e:
        raise JobError(f"spec file not found: {uri}") from e
    return spec_type.model_validate(json.loads(text))


def check_roots(spec: Spec) -> None:
    """Every URI of the spec under the roots the scheduler gave this job (its environment),
    checked again here: the control plane checked them at submit time, but a symlink may have
    changed since, or the spec file may not be the one it wrote. A job run by hand, without
    roots in its environment, is not checked."""
    try:
        allowed = Roots.from_env(os.environ)
    except RootError as e:
        raise JobError(f"storage roots: {e}") from e
    if allowed is None:
        return
    dumped = spec.model_dump(mode="json")
    found = violations(dumped, uri_paths(type(spec)), allowed, spec.indirect_reads(dumped))
    if found:
        raise JobError("; ".join(v.message for v in found))


def write_result(output: str, result: dict[str, Any]) -> None:
    """The job's completion marker, written last (whole-object: never half a result)."""
    storage.write_json(storage.join(output, RESULT_FILE), result)


def claim_output(output: str, kind: str) -> None:
    """Make ``output`` this job's, before any work: refused when another job finished there
    (its results would be overwritten, or taken for ours). The same job run again (a retry)
    first removes its old completion marker, so a crash cannot leave it standing."""
    try:
        storage.check_access(output, write=True)
    except OSError as e:
        raise JobError(f"output {output}: {e}") from e
    job_id = os.environ.get(ENV_JOB_ID) or "local"
    result, owner_file = storage.join(output, RESULT_FILE), storage.join(output, OWNER_FILE)
    if storage.is_file(result):
        owner = storage.read_json(owner_file).get("job_id") if storage.is_file(owner_file) else None
        if owner != job_id:
            whose = f"job {owner}" if owner else "another run"
            raise JobError(
                f"{output} already holds the results of {whose}: give a new output, or delete "
                "that one first"
            )
        storage.delete(result)
    storage.write_json(owner_file, {"job_id": job_id, "kind": kind, "started": time.time()})


def main(
    spec_type: type[S], run: Callable[[S], dict[str, Any]], argv: list[str] | None = None
) -> int:
    parser = argparse.ArgumentParser(description=f"llmforge {spec_type.__name__} job")
    parser.add_argument("--spec", required=True, help="path or file:// URI of the spec JSON")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec, spec_type)
        check_roots(spec)
        claim_output(spec.output, spec_type.__name__.removesuffix("Spec").lower())  # type: ignore[attr-defined]
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
