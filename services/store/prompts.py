"""Prompt templates: store operations. A team's names are unique; a lookup takes an id or a
name of the caller's team."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.store.models import PromptTemplate


def get(session: Session, *, template_id: str) -> PromptTemplate | None:
    return session.get(PromptTemplate, template_id)


def by_name(session: Session, *, team: str, name: str) -> PromptTemplate | None:
    query = select(PromptTemplate).where(PromptTemplate.team == team, PromptTemplate.name == name)
    return session.scalars(query).first()


def find(session: Session, *, ref: str, team: str, any_team: bool) -> PromptTemplate | None:
    """By id (any team's when ``any_team``, for admins), else by name in ``team``."""
    found = session.get(PromptTemplate, ref)
    if found is not None and (any_team or found.team == team):
        return found
    return by_name(session, team=team, name=ref)


def list_templates(
    session: Session, *, team: str | None, limit: int = 1000
) -> list[PromptTemplate]:
    query = select(PromptTemplate).order_by(PromptTemplate.team, PromptTemplate.name).limit(limit)
    if team is not None:
        query = query.where(PromptTemplate.team == team)
    return list(session.scalars(query))
