"""Human pairwise ratings of two models' completions: store operations."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from services.store.crud import new_id, newest_first
from services.store.models import Rating


def create_rating(
    session: Session,
    *,
    prompt: str,
    model_a: str,
    model_b: str,
    completion_a: str,
    completion_b: str,
    winner: str,
    rater: str | None = None,
    team: str | None = None,
    task: str | None = None,
    tags: Sequence[str] = (),
) -> Rating:
    rating = Rating(
        id=new_id(),
        prompt=prompt,
        model_a=model_a,
        model_b=model_b,
        completion_a=completion_a,
        completion_b=completion_b,
        winner=winner,
        rater=rater,
        team=team,
        task=task,
        tags=list(tags),
    )
    session.add(rating)
    session.flush()
    return rating


def get_rating(session: Session, *, rating_id: str) -> Rating | None:
    return session.get(Rating, rating_id)


def _filtered(
    query: Select[Any],
    *,
    team: str | None,
    task: str | None,
    model: str | None,
    rater: str | None,
    winner: str | None,
) -> Select[Any]:
    if team is not None:
        query = query.where(Rating.team == team)
    if task is not None:
        query = query.where(Rating.task == task)
    if model is not None:
        query = query.where(or_(Rating.model_a == model, Rating.model_b == model))
    if rater is not None:
        query = query.where(Rating.rater == rater)
    if winner is not None:
        query = query.where(Rating.winner == winner)
    return query


def list_ratings(
    session: Session,
    *,
    team: str | None = None,
    task: str | None = None,
    model: str | None = None,
    rater: str | None = None,
    winner: str | None = None,
    limit: int = 100,
    after: tuple[datetime, str] | None = None,
) -> list[Rating]:
    """Newest first, one page."""
    query = newest_first(select(Rating), Rating.created_at, Rating.id, limit=limit, after=after)
    return list(
        session.scalars(
            _filtered(query, team=team, task=task, model=model, rater=rater, winner=winner)
        )
    )


def games(
    session: Session, *, team: str | None = None, task: str | None = None
) -> list[tuple[str, str, str]]:
    """(model_a, model_b, winner) of every matching rating, oldest first: the order in which
    sequential Elo sees them. Only three short columns, so large rating sets stay cheap."""
    query = select(Rating.model_a, Rating.model_b, Rating.winner).order_by(
        Rating.created_at, Rating.id
    )
    if team is not None:
        query = query.where(Rating.team == team)
    if task is not None:
        query = query.where(Rating.task == task)
    return [(a, b, w) for a, b, w in session.execute(query)]


def preference_rows(
    session: Session,
    *,
    team: str | None = None,
    task: str | None = None,
    model: str | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Every matching rating with what ``llm.finetune.preference_records.preferences_from_ratings``
    reads, oldest first (then by id: a stable order, so an export is reproducible). Rows are
    streamed, so an export of many long completions need not hold them all at once."""
    columns = (Rating.id, Rating.prompt, Rating.model_a, Rating.model_b, Rating.completion_a,
               Rating.completion_b, Rating.winner, Rating.task)  # fmt: skip
    ordered = cast("Select[Any]", select(*columns).order_by(Rating.created_at, Rating.id))
    query = _filtered(ordered, team=team, task=task, model=model, rater=None, winner=None)
    if limit is not None:
        query = query.limit(limit)
    for row in session.execute(query.execution_options(yield_per=500)):
        yield dict(row._mapping)
