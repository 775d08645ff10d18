"""Each team's storage roots, and the check of a spec against them (``contracts.roots``).

A team reads and writes its own area (``<artifact_root>/teams/<team>``), reads the shared roots
(``LLMFORGE_SHARED_ROOTS``), reads and writes ``LLMFORGE_SHARED_WRITE_ROOTS`` (single-user
machines and tests), and whatever an admin granted it (``team_roots``). No root may hold the
control plane's home (API keys, the store, the Ray token): the control plane refuses to start,
and an admin to grant one, when a root would.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from fastapi import HTTPException, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from contracts.jobs import JOB_TYPES, JobKind
from contracts.roots import (
    READ,
    WRITE,
    RootError,
    Roots,
    Violation,
    contains,
    is_under,
    normalise,
    violations,
)
from contracts.spec_base import looks_like_path, values_at
from llm import storage
from services.ray_auth import RayToken
from services.settings import Settings
from services.store.models import TeamRoot, utcnow


class RootsRefused(Exception):
    """A spec names storage its team may not use."""

    def __init__(self, found: list[Violation]) -> None:
        super().__init__("; ".join(v.message for v in found))
        self.violations = found


def granted(session: Session, team: str) -> list[TeamRoot]:
    return list(
        session.scalars(select(TeamRoot).where(TeamRoot.team == team).order_by(TeamRoot.uri))
    )


def team_roots(settings: Settings, session: Session, team: str) -> Roots:
    grants = granted(session, team)
    write = [
        settings.team_area(team),
        *settings.shared_write_root_list,
        *(g.uri for g in grants if g.mode == WRITE),
    ]
    read = [*settings.shared_root_list, *(g.uri for g in grants if g.mode == READ)]
    if settings.resolved_data_root:
        read.append(settings.resolved_data_root)
    return Roots.of(read, write)


def anchor(kind: JobKind, spec: dict[str, Any], area: str) -> dict[str, Any]:
    """The spec with every relative local path made relative to the team's area (a job's own
    working directory means nothing on a cluster); placeholders are left as they are."""
    spec = copy.deepcopy(spec)
    paths = JOB_TYPES[kind].uri_paths
    named = set(paths.named)
    for path in (*paths.read, *paths.write, *paths.named):
        for loc, value in list(values_at(spec, path)):
            if path in named and isinstance(value, str) and not looks_like_path(value):
                continue  # a built-in name
            if isinstance(value, str) and _relative(value):
                _put(spec, loc, storage.join(area, value))
    return spec


def _relative(value: str) -> bool:
    return bool(value) and not value.startswith("/") and ":" not in value and "${" not in value


def _put(spec: Any, loc: tuple[str | int, ...], value: str) -> None:
    for part in loc[:-1]:
        spec = spec[part]
    spec[loc[-1]] = value


def check_spec(kind: JobKind, spec: dict[str, Any], roots: Roots) -> None:
    """RootsRefused naming every field of the (dumped) spec outside its roots."""
    job = JOB_TYPES[kind]
    found = violations(spec, job.uri_paths, roots, job.spec.indirect_reads(spec))
    if found:
        raise RootsRefused(found)


def forbidden(e: RootsRefused, loc: tuple[str | int, ...]) -> HTTPException:
    """A 403 shaped like a 422's details: one entry per field, ``loc`` into the request."""
    return HTTPException(
        status.HTTP_403_FORBIDDEN,
        [
            {
                "type": "storage_root",
                "loc": [*loc, *v.loc],
                "msg": v.message,
                "input": v.value,
                "allowed": list(v.allowed),
            }
            for v in e.violations
        ],
    )


def enforce(
    settings: Settings,
    session: Session,
    team: str,
    kind: JobKind,
    spec: dict[str, Any],
    loc: tuple[str | int, ...],
) -> None:
    try:
        check_spec(kind, spec, team_roots(settings, session, team))
    except RootsRefused as e:
        raise forbidden(e, loc) from e


def secrets_of(settings: Settings, token: RayToken | None) -> list[str]:
    """What no job may read: the control plane's home, and the Ray token wherever it is."""
    found = [str(settings.home)]
    if token is not None and token.path is not None:
        found.append(str(token.path))
    if settings.resolved_database_url.startswith("sqlite:///"):
        found.append(settings.resolved_database_url.removeprefix("sqlite:///"))
    return found


def check_root_is_safe(root: str, settings: Settings, token: RayToken | None) -> None:
    """RootError when ``root`` cannot be normalised, holds one of the control plane's secrets,
    or lies inside its home other than in the teams' areas (``<home>/ray`` holds the token)."""
    for secret in secrets_of(settings, token):
        if contains(root, secret):
            raise RootError(
                f"{root} holds {secret} (the control plane's keys, store or Ray token): "
                "jobs could read it; give a folder beside it instead"
            )
    path, home = normalise(root), os.path.realpath(settings.home)
    if is_under(path, home) and not is_under(path, normalise(teams_root(settings))):
        raise RootError(
            f"{root} is inside the control plane's home {home} (its keys, store and Ray "
            "token): give a folder outside it"
        )


def teams_root(settings: Settings) -> str:
    return f"{settings.resolved_artifact_root.rstrip('/')}/teams"


def check_start(settings: Settings, session: Session, token: RayToken | None) -> None:
    """At start-up: no shared or granted root, nor the teams' areas, may hold a secret."""
    roots = [("LLMFORGE_SHARED_ROOTS", r) for r in settings.shared_root_list] + [
        ("LLMFORGE_SHARED_WRITE_ROOTS", r) for r in settings.shared_write_root_list
    ]
    if settings.resolved_data_root:
        roots.append(("LLMFORGE_DATA_ROOT (evaluation data)", settings.resolved_data_root))
    roots += [(f"team {g.team}'s granted root", g.uri) for g in session.scalars(select(TeamRoot))]
    roots.append(("the teams' areas (LLMFORGE_ARTIFACT_ROOT/teams)", teams_root(settings)))
    for origin, root in roots:
        try:
            check_root_is_safe(root, settings, token)
        except RootError as e:
            raise RuntimeError(f"refusing to start: {origin}: {e}") from e


def grant(session: Session, *, team: str, uri: str, mode: str, by: str | None) -> TeamRoot:
    row = session.get(TeamRoot, (team, uri))
    if row is None:
        row = TeamRoot(team=team, uri=uri, mode=mode, created_by=by, created_at=utcnow())
        session.add(row)
    row.mode, row.created_by, row.created_at = mode, by, utcnow()
    session.flush()
    return row
