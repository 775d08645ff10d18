"""/api/v1/datasets and /api/v1/models: the registry of what jobs made, with lineage and stats.

Succeeded jobs register their outputs (see ``services.job_outputs``); users may register others
(a raw corpus, an exported model). Teams see their own artifacts, admins every team's. Deleting
a record (admin) keeps the files unless ``delete_files`` is set.

No ``from __future__ import annotations`` here: the routes are built by a function for each
category, and FastAPI reads their parameter types at definition time, locals included.
"""

from typing import Annotated

import pyarrow.fs as pafs
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from contracts.roots import READ, RootError
from llm import storage
from services import job_outputs, roots
from services.adapters import check_adapter_base
from services.api.auditing import audit_event, refusals
from services.api.deps import SchedulerDep, SessionDep
from services.api.downloads import (
    DOWNLOAD_RESPONSES,
    RangeHeader,
    check_relative,
    file_response,
    locate,
)
from services.api.schemas import (
    ArtifactCreate,
    ArtifactPublic,
    ArtifactsPublic,
    DatasetCreate,
    DatasetKind,
    EvaluationPublic,
    LineagePublic,
    ModelCreate,
    ModelKind,
)
from services.api.validation import check_uri, reject_non_finite, request_error
from services.auth import AdminDep, Principal, PrincipalDep
from services.redact import redact
from services.settings import Settings
from services.store import crud
from services.store import registry as store
from services.store.models import Artifact, ArtifactCategory, Deployment, DeploymentState, Role

Cursor = Annotated[str | None, Query(description="next_cursor of the previous page")]
Limit = Annotated[int, Query(ge=1, le=1000)]


def visible(artifact: Artifact, who: Principal) -> bool:
    return who.allowed(Role.admin) or artifact.team in (None, who.team)


def find_visible(
    session: Session, who: Principal, ref: str, category: ArtifactCategory
) -> Artifact | None:
    """The registry entry ``ref`` (an id, or the newest of that name) the caller may see."""
    return store.find_artifact(
        session, ref=ref, category=category, team=who.team, every_team=who.allowed(Role.admin)
    )


def _public(session: SessionDep, artifacts: list[Artifact]) -> list[ArtifactPublic]:
    models = [a.id for a in artifacts if a.category == ArtifactCategory.model.value]
    evaluations = store.evaluations_of(session, model_ids=models)
    fields = set(ArtifactPublic.model_fields) - {"evaluations"}
    return [
        ArtifactPublic.model_validate(
            {f: getattr(a, f) for f in fields}
            | {
                "evaluations": [
                    EvaluationPublic.model_validate(e, from_attributes=True)
                    for e in evaluations[a.id]
                ]
                if a.id in evaluations
                else None
            }
        )
        for a in artifacts
    ]


def _one_or_404(
    session: SessionDep, category: ArtifactCategory, artifact_id: str, who: Principal
) -> Artifact:
    artifact = store.get_artifact(session, artifact_id=artifact_id, category=category)
    if artifact is None or not visible(artifact, who):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{category} {artifact_id} not found")
    return artifact


def _create(
    session: SessionDep,
    settings: Settings,
    category: ArtifactCategory,
    body: ArtifactCreate,
    kind: str,
    who: Principal,
) -> ArtifactPublic:
    check_uri(body.uri, ("body", "uri"))
    reject_non_finite(body.stats, ("body", "stats"))
    for i, uri in enumerate(body.inputs):
        check_uri(uri, ("body", "inputs", i))
    check_location(session, settings, who, body.uri, ("body", "uri"))
    parent = None
    if body.parent_id is not None:
        parent = store.get_artifact(session, artifact_id=body.parent_id)
        if parent is None or not visible(parent, who):
            raise request_error(
                ("body", "parent_id"), f"no dataset or model {body.parent_id!r} to derive from"
            )
    if kind == ModelKind.adapter:
        _check_adapter(body.uri, parent)
    artifact = store.create_artifact(
        session,
        category=category,
        kind=kind,
        name=body.name,
        uri=body.uri,
        parent_id=body.parent_id,
        inputs=body.inputs,
        stats=body.stats,
        owner=who.key_id,
        team=who.team,
    )
    session.commit()
    return _public(session, [artifact])[0]


def check_location(
    session: Session, settings: Settings, who: Principal, uri: str, loc: tuple[str | int, ...]
) -> None:
    """A 422 naming ``loc`` unless ``uri`` lies under the team's read roots (the confinement a
    job spec's URIs get: registering a URI lets the team download its files) and exists (a
    local file or folder, an S3 object or a prefix holding one)."""
    allowed = roots.team_roots(settings, session, who.team).allowed(READ)
    try:
        roots.Roots(read=allowed, write=()).check(uri, READ)
    except RootError as e:
        raise RequestValidationError(
            [
                {
                    "type": "storage_root",
                    "loc": loc,
                    "msg": f"{uri!r} may not be registered by team {who.team}: {e}; register a "
                    f"URI under one of the team's read roots: {', '.join(allowed) or 'none'}",
                    "input": uri,
                    "allowed": list(allowed),
                }
            ]
        ) from e
    try:
        found = storage.exists(uri) or storage.is_dir(uri)
    except OSError as e:
        raise request_error(loc, redact(f"cannot check that {uri!r} exists: {e}")) from e
    if not found:
        raise request_error(
            loc,
            f"{uri!r} does not exist: write the files there first (a local file or folder, an "
            "S3 object or a prefix holding objects), then register it",
        )


def _check_adapter(uri: str, base: Artifact | None) -> None:
    """An adapter is registered with its base as parent, and only onto the base it was made on."""
    if base is None or base.category != ArtifactCategory.model.value:
        raise request_error(("body", "parent_id"), "an adapter's parent_id is its base model")
    try:
        check_adapter_base(uri, base.uri)
    except OSError as e:
        raise request_error(("body", "uri"), redact(f"cannot read the adapter: {e}")) from e
    except ValueError as e:
        raise request_error(("body", "uri"), str(e)) from e


def _lineage(
    session: SessionDep, category: ArtifactCategory, artifact_id: str, who: Principal
) -> LineagePublic:
    chain = store.lineage(session, artifact=_one_or_404(session, category, artifact_id, who))
    shown = []
    for artifact in chain:
        if not visible(artifact, who):
            break
        shown.append(artifact)
    complete = len(shown) == len(chain) and not chain[-1].parent_id
    return LineagePublic(artifact_id=artifact_id, chain=_public(session, shown), complete=complete)


def _delete(
    session: SessionDep,
    artifact: Artifact,
    delete_files: bool,
    request: Request,
    who: Principal,
) -> ArtifactPublic:
    children = store.children(session, artifact_id=artifact.id)
    if children:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"{artifact.category} {artifact.id} is the parent of "
            f"{', '.join(c.id for c in children[:10])}: delete those first",
        )
    deployment = session.get(Deployment, artifact.id)
    if deployment is not None and DeploymentState(deployment.state).active:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"model {artifact.id} is deployed on the cluster: undeploy it first "
            f"(DELETE /api/v1/models/{artifact.id}/deploy)",
        )
    public = _public(session, [artifact])[0]
    if delete_files:
        try:
            job_outputs.delete_files(artifact.uri)
        except ValueError as e:
            raise request_error(("query", "delete_files"), str(e)) from e
        except OSError as e:
            raise HTTPException(
                status.HTTP_502_BAD_GATEWAY, redact(f"files not deleted: {e}")
            ) from e
    audit_event(
        session, request, who, f"{artifact.category}.delete", artifact.category, artifact.id,
        name=artifact.name, uri=artifact.uri, team=artifact.team, delete_files=delete_files,
    )  # fmt: skip
    store.delete_artifact(session, artifact=artifact)
    session.commit()
    return public


def _file(artifact: Artifact, path: str) -> tuple[str, int]:
    """The artifact's file at ``path``: inside its folder, or its own name when it is a file."""
    name = artifact.uri.rstrip("/").rsplit("/", 1)[-1]
    if check_relative(path) == name:
        try:
            found = storage.info(artifact.uri)
        except OSError:
            found = None
        if found is not None and found.type == pafs.FileType.File:
            return storage.resolve(artifact.uri), int(found.size)
    return locate(artifact.uri, path, f"{artifact.category} {artifact.id}")


def build_router(
    category: ArtifactCategory, kinds: type[DatasetKind] | type[ModelKind]
) -> APIRouter:
    plural = f"{category.value}s"
    router = APIRouter(prefix=f"/{plural}", tags=[plural])
    body_type = DatasetCreate if category == ArtifactCategory.dataset else ModelCreate

    @router.get("", name=f"list_{plural}")
    def list_artifacts(
        session: SessionDep,
        who: PrincipalDep,
        kind: kinds | None = None,  # type: ignore[valid-type]
        owner: str | None = Query(default=None, description="an API key id"),
        team: str | None = Query(default=None, description="admins: one team's only"),
        job_id: str | None = None,
        parent_id: str | None = None,
        uri: str | None = None,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> ArtifactsPublic:
        try:
            after = crud.decode_cursor(cursor) if cursor else None
        except ValueError as e:
            raise request_error(("query", "cursor"), str(e)) from e
        rows = store.list_artifacts(
            session,
            category=category,
            kind=str(kind) if kind else None,  # a StrEnum member is its value
            team=team if who.allowed(Role.admin) else who.team,
            owner=owner,
            job_id=job_id,
            parent_id=parent_id,
            uri=uri,
            limit=limit + 1,
            after=after,
        )
        page = rows[:limit]
        next_cursor = crud.encode_cursor(page[-1]) if len(rows) > limit else None
        return ArtifactsPublic(
            data=_public(session, page), count=len(page), next_cursor=next_cursor
        )

    @router.post("", status_code=status.HTTP_201_CREATED, name=f"register_{category.value}")
    def register(
        body: body_type,  # type: ignore[valid-type]
        session: SessionDep,
        scheduler: SchedulerDep,
        who: PrincipalDep,
    ) -> ArtifactPublic:
        """Register files a job did not make. ``uri`` must lie under the caller's team's read
        roots and exist (else a 422 at ``body.uri``); see ``ArtifactCreate.uri``."""
        kind = str(body.kind)  # type: ignore[attr-defined]
        return _create(session, scheduler.settings, category, body, kind, who)

    @router.get("/{artifact_id}", name=f"get_{category.value}")
    def get(artifact_id: str, session: SessionDep, who: PrincipalDep) -> ArtifactPublic:
        return _public(session, [_one_or_404(session, category, artifact_id, who)])[0]

    @router.get("/{artifact_id}/lineage", name=f"{category.value}_lineage")
    def lineage(artifact_id: str, session: SessionDep, who: PrincipalDep) -> LineagePublic:
        """The artifact and its ancestors: what each was made from, by which job."""
        return _lineage(session, category, artifact_id, who)

    @router.get(
        "/{artifact_id}/files/{path:path}",
        name=f"download_{category.value}_file",
        response_class=StreamingResponse,
        responses=DOWNLOAD_RESPONSES,
    )
    def download(
        artifact_id: str,
        path: str,
        session: SessionDep,
        who: PrincipalDep,
        range: RangeHeader = None,
    ) -> StreamingResponse:
        """One file under the artifact's URI (a path relative to it), streamed, with ranges."""
        artifact = _one_or_404(session, category, artifact_id, who)
        return file_response(*_file(artifact, path), range)

    @router.delete(
        "/{artifact_id}",
        name=f"delete_{category.value}",
        dependencies=[refusals(f"{category.value}.delete", category.value, "artifact_id")],
    )
    def delete(
        artifact_id: str,
        session: SessionDep,
        who: AdminDep,
        request: Request,
        delete_files: Annotated[
            bool, Query(description="also delete the files at its URI (default: keep them)")
        ] = False,
    ) -> ArtifactPublic:
        artifact = _one_or_404(session, category, artifact_id, who)
        return _delete(session, artifact, delete_files, request, who)

    return router


datasets = build_router(ArtifactCategory.dataset, DatasetKind)
models = build_router(ArtifactCategory.model, ModelKind)
