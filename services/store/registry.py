"""The registry of datasets and models: store operations for artifacts and their evaluations."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from services.store.crud import new_id, newest_first
from services.store.models import Artifact, ArtifactCategory, Evaluation

# Lineage deeper than this is a cycle someone wrote by hand, not a real history.
MAX_LINEAGE = 100


def normalize_uri(uri: str) -> str:
    """The form URIs are stored and matched in: no file:// prefix, no trailing slash."""
    stripped = uri.removeprefix("file://")
    return stripped.rstrip("/") or stripped


def create_artifact(
    session: Session,
    *,
    category: ArtifactCategory,
    kind: str,
    name: str,
    uri: str,
    job_id: str | None = None,
    parent_id: str | None = None,
    inputs: Sequence[str] = (),
    stats: dict[str, Any] | None = None,
    owner: str | None = None,
    team: str | None = None,
) -> Artifact:
    artifact = Artifact(
        id=new_id(),
        category=category.value,
        kind=kind,
        name=name,
        uri=normalize_uri(uri),
        job_id=job_id,
        parent_id=parent_id,
        inputs=list(inputs),
        stats=stats or {},
        owner=owner,
        team=team,
    )
    session.add(artifact)
    session.flush()
    return artifact


def get_artifact(
    session: Session, *, artifact_id: str, category: ArtifactCategory | None = None
) -> Artifact | None:
    artifact = session.get(Artifact, artifact_id)
    if artifact is None or (category is not None and artifact.category != category.value):
        return None
    return artifact


def find_artifact(
    session: Session, *, ref: str, category: ArtifactCategory, team: str | None, every_team: bool
) -> Artifact | None:
    """The artifact whose id is ``ref``, else the newest named ``ref``, among those ``team``
    may see (its own and the shared ones; with ``every_team``, all)."""
    found = get_artifact(session, artifact_id=ref, category=category)
    if found is not None and (every_team or found.team in (None, team)):
        return found
    query = select(Artifact).where(Artifact.category == category.value, Artifact.name == ref)
    if not every_team:
        query = query.where(or_(Artifact.team.is_(None), Artifact.team == team))
    query = query.order_by(Artifact.created_at.desc(), Artifact.id.desc()).limit(1)
    return session.scalars(query).first()


def list_artifacts(
    session: Session,
    *,
    category: ArtifactCategory,
    kind: str | None = None,
    team: str | None = None,
    owner: str | None = None,
    job_id: str | None = None,
    parent_id: str | None = None,
    uri: str | None = None,
    limit: int = 100,
    after: tuple[datetime, str] | None = None,
) -> list[Artifact]:
    query = select(Artifact).where(Artifact.category == category.value)
    query = newest_first(query, Artifact.created_at, Artifact.id, limit=limit, after=after)
    filters = {
        Artifact.kind: kind,
        Artifact.team: team,
        Artifact.owner: owner,
        Artifact.job_id: job_id,
        Artifact.parent_id: parent_id,
        Artifact.uri: normalize_uri(uri) if uri else None,
    }
    for column, value in filters.items():
        if value is not None:
            query = query.where(column == value)
    return list(session.scalars(query))


def newest_at(
    session: Session, *, uris: Sequence[str], category: ArtifactCategory | None = None
) -> Artifact | None:
    """The newest artifact recorded at any of ``uris``: the one a job that reads there used."""
    query = select(Artifact).where(Artifact.uri.in_([normalize_uri(u) for u in uris]))
    if category is not None:
        query = query.where(Artifact.category == category.value)
    query = query.order_by(Artifact.created_at.desc(), Artifact.id.desc()).limit(1)
    return session.scalars(query).first()


def children(session: Session, *, artifact_id: str) -> list[Artifact]:
    query = select(Artifact).where(Artifact.parent_id == artifact_id).order_by(Artifact.id)
    return list(session.scalars(query))


def lineage(session: Session, *, artifact: Artifact) -> list[Artifact]:
    """The artifact, its parent, its parent's parent, … (stops at a repeated id)."""
    chain = [artifact]
    seen = {artifact.id}
    while chain[-1].parent_id and len(chain) < MAX_LINEAGE:
        parent = session.get(Artifact, chain[-1].parent_id)
        if parent is None or parent.id in seen:
            break
        chain.append(parent)
        seen.add(parent.id)
    return chain


def add_evaluation(
    session: Session,
    *,
    checkpoint: str,
    metrics: dict[str, Any],
    model_id: str | None = None,
    job_id: str | None = None,
    data: str | None = None,
) -> Evaluation:
    evaluation = Evaluation(
        id=new_id(),
        model_id=model_id,
        job_id=job_id,
        checkpoint=checkpoint,
        data=data,
        metrics=metrics,
    )
    session.add(evaluation)
    session.flush()
    return evaluation


def evaluations_of(session: Session, *, model_ids: Sequence[str]) -> dict[str, list[Evaluation]]:
    """Each model's evaluations, oldest first (one query for a page of models)."""
    found: dict[str, list[Evaluation]] = {m: [] for m in model_ids}
    if not model_ids:
        return found
    query = (
        select(Evaluation)
        .where(Evaluation.model_id.in_(list(model_ids)))
        .order_by(Evaluation.created_at, Evaluation.id)
    )
    for evaluation in session.scalars(query):
        found[str(evaluation.model_id)].append(evaluation)
    return found


def delete_artifact(session: Session, *, artifact: Artifact) -> None:
    """The record and its evaluations; the caller decides about the files."""
    session.execute(delete(Evaluation).where(Evaluation.model_id == artifact.id))
    session.delete(artifact)
    session.flush()
