"""``registry:<id>`` in a spec's read fields: the registry entry's URI, resolved on submit.

A user names a model or dataset they registered (``registry:<id>``, or ``registry:<name>`` for
the newest of that name) wherever a spec reads one: an evaluate job's checkpoint and judges, a
finetune's base, a train's init. The submit routes put the entry's URI in its place before the
spec's URIs are anchored and checked against the team's roots, so the job (and the stored spec)
sees a plain URI. Only entries the caller's team may see resolve; the rest are a 422 naming the
field, as if they did not exist.
"""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy.orm import Session

from contracts.jobs import JOB_TYPES, JobKind
from contracts.spec_base import values_at
from services.api.validation import request_error
from services.auth import Principal
from services.store import registry as store
from services.store.models import ArtifactCategory, Role

PREFIX = "registry:"
Loc = tuple[str | int, ...]


def _uri_of(session: Session, who: Principal, value: str, loc: Loc) -> str:
    ref = value.removeprefix(PREFIX).strip()
    if not ref:
        raise request_error(loc, f"{value!r}: name a registered model or dataset after registry:")
    for category in (ArtifactCategory.model, ArtifactCategory.dataset):
        found = store.find_artifact(
            session, ref=ref, category=category, team=who.team, every_team=who.allowed(Role.admin)
        )
        if found is not None:
            return found.uri
    raise request_error(
        loc,
        f"{value}: no registered model or dataset {ref!r} that team {who.team!r} may read; "
        "register it first (POST /api/v1/models or /api/v1/datasets), or give its URI",
    )


def resolve_refs(
    session: Session, who: Principal, kind: JobKind, spec: dict[str, Any], loc: Loc
) -> dict[str, Any]:
    """The (dumped) spec with each ``registry:`` value of a field it reads replaced by the
    entry's URI; RequestValidationError at the field when there is no such entry for the
    caller."""
    paths = JOB_TYPES[kind].uri_paths
    resolved = copy.deepcopy(spec)
    for path in (*paths.read, *paths.named):
        for at, value in list(values_at(resolved, path)):
            if isinstance(value, str) and value.startswith(PREFIX):
                _put(resolved, at, _uri_of(session, who, value, (*loc, *at)))
    return resolved


def _put(spec: Any, loc: Loc, value: str) -> None:
    for part in loc[:-1]:
        spec = spec[part]
    spec[loc[-1]] = value
