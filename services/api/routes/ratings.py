"""/api/v1/ratings: human pairwise ratings of two models' completions, and the leaderboard.

A rating says which of two completions of one prompt is better (or a tie); the rater is the API
key that sent it. The leaderboard turns a team's ratings into win rates, Elo and Bradley–Terry
scores with bootstrap intervals (``llm.eval.ratings``). Teams see their own ratings.

``/ratings/preferences`` turns a team's ratings into DPO preference records (winner chosen,
loser rejected; ties and pairs that teach nothing dropped and counted): GET returns them, POST
writes them as JSONL under one of the team's write roots, for a finetune spec (method "dpo")
to read as its data.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status

from contracts.roots import WRITE, RootError, Violation, normalise
from llm import storage
from llm.eval.ratings import leaderboard as rank
from llm.finetune.preference_records import preferences_from_ratings
from services import roots
from services.api.auditing import audit_event, refusals
from services.api.deps import SchedulerDep, SessionDep
from services.api.schemas import (
    Leaderboard,
    ModelRank,
    PreferenceExport,
    PreferenceExportPublic,
    PreferenceRecord,
    Preferences,
    RatingCreate,
    RatingPublic,
    RatingsPublic,
)
from services.api.validation import request_error
from services.auth import Principal, PrincipalDep
from services.redact import redact
from services.store import crud
from services.store import ratings as store
from services.store.models import Role

router = APIRouter(prefix="/ratings", tags=["ratings"])
# The bootstrap is the costly part: one online-Elo pass and one BT fit per round. 500 rounds
# keep a request to seconds even for sparse rating sets; 95% percentile intervals need no more.
MAX_ROUNDS = 500


def _team(who: Principal, team: str | None) -> str | None:
    """Admins may look at one team (or all, with none); others only at their own."""
    return team if who.allowed(Role.admin) else who.team


@router.post("", status_code=status.HTTP_201_CREATED)
def create_rating(body: RatingCreate, session: SessionDep, who: PrincipalDep) -> RatingPublic:
    rating = store.create_rating(session, **body.model_dump(), rater=who.key_id, team=who.team)
    session.commit()
    return RatingPublic.model_validate(rating, from_attributes=True)


@router.get("")
def list_ratings(
    session: SessionDep,
    who: PrincipalDep,
    task: str | None = None,
    model: Annotated[str | None, Query(description="on either side")] = None,
    rater: Annotated[str | None, Query(description="an API key id")] = None,
    winner: Literal["a", "b", "tie"] | None = None,
    team: Annotated[str | None, Query(description="admins: one team's only")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> RatingsPublic:
    try:
        after = crud.decode_cursor(cursor) if cursor else None
    except ValueError as e:
        raise request_error(("query", "cursor"), str(e)) from e
    rows = store.list_ratings(
        session,
        team=_team(who, team),
        task=task,
        model=model,
        rater=rater,
        winner=winner,
        limit=limit + 1,
        after=after,
    )
    page = rows[:limit]
    return RatingsPublic(
        data=[RatingPublic.model_validate(r, from_attributes=True) for r in page],
        count=len(page),
        next_cursor=crud.encode_cursor(page[-1]) if len(rows) > limit else None,
    )


@router.get("/leaderboard")
def leaderboard(
    session: SessionDep,
    who: PrincipalDep,
    task: str | None = None,
    team: Annotated[str | None, Query(description="admins: one team's only")] = None,
    k: Annotated[float, Query(gt=0, le=100, description="online Elo step size")] = 4.0,
    rounds: Annotated[
        int, Query(ge=0, le=MAX_ROUNDS, description="bootstrap resamples; 0: no intervals")
    ] = 200,
    seed: Annotated[int, Query(ge=0, le=2**32 - 1)] = 0,
    confidence: Annotated[float, Query(gt=0, lt=1)] = 0.95,
) -> Leaderboard:
    """Per model: games, win rate, Elo and Bradley–Terry with bootstrap confidence intervals
    (the same seed gives the same intervals); best Bradley–Terry score first."""
    games = store.games(session, team=_team(who, team), task=task)
    table = rank(games, k=k, rounds=rounds, seed=seed, confidence=confidence)
    return Leaderboard(
        ratings=len(games),
        k=k,
        rounds=rounds,
        seed=seed,
        confidence=confidence,
        models=[ModelRank.model_validate(s, from_attributes=True) for s in table],
    )


@router.get("/preferences")
def preferences(
    session: SessionDep,
    who: PrincipalDep,
    task: str | None = None,
    model: Annotated[str | None, Query(description="on either side")] = None,
    team: Annotated[str | None, Query(description="admins: one team's only")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="ratings read, oldest first")] = 1000,
) -> Preferences:
    """The ratings as DPO preference records {prompt, chosen, rejected, ...}: the winner's
    completion chosen, the loser's rejected; ties and pairs with an empty or the same
    completion on both sides are dropped and counted."""
    rows = list(
        store.preference_rows(
            session, team=_team(who, team), task=task, model=model, limit=limit + 1
        )
    )
    records, stats = preferences_from_ratings(rows[:limit])
    return Preferences(
        ratings=stats["ratings"],
        count=stats["records"],
        dropped=stats["dropped"],
        truncated=len(rows) > limit,
        data=[PreferenceRecord.model_validate(r) for r in records],
    )


@router.post(
    "/preferences",
    status_code=status.HTTP_201_CREATED,
    dependencies=[refusals("ratings.export", "ratings")],
)
def export_preferences(
    body: PreferenceExport,
    session: SessionDep,
    scheduler: SchedulerDep,
    who: PrincipalDep,
    request: Request,
) -> PreferenceExportPublic:
    """Every matching rating as a preference record, one JSON line each, written to
    ``output``: a file the team's jobs may read, for a finetune spec's ``data``."""
    settings = scheduler.settings
    output = body.output
    if not output.startswith("/") and ":" not in output and "${" not in output:
        output = storage.join(settings.team_area(who.team), output)  # as job specs anchor
    try:
        normalise(output)
    except RootError as e:  # not a safe URI at all: a bad request, as in a job spec
        raise request_error(("body", "output"), str(e)) from e
    allowed = roots.team_roots(settings, session, who.team)
    try:
        allowed.check(output, WRITE)
    except RootError as e:
        found = [Violation(("output",), body.output, WRITE, str(e), allowed.allowed(WRITE))]
        raise roots.forbidden(roots.RootsRefused(found), ("body",)) from e
    if storage.is_dir(output):
        raise request_error(("body", "output"), f"{output} is a folder: name the file to write")
    rows = store.preference_rows(
        session, team=_team(who, body.team), task=body.task, model=body.model
    )
    records, stats = preferences_from_ratings(rows)
    try:
        storage.write_text(output, "".join(json.dumps(r) + "\n" for r in records))
    except (storage.StorageError, PermissionError) as e:
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY, redact(f"cannot write {output}: {e}")
        ) from e
    except OSError as e:  # a file where a folder of the path should be, say
        raise request_error(("body", "output"), f"cannot write {output}: {e}") from e
    audit_event(
        session, request, who, "ratings.export", "ratings", None, status_code=201,
        output=output, records=stats["records"],
    )  # fmt: skip
    session.commit()
    return PreferenceExportPublic(
        output=output, ratings=stats["ratings"], count=stats["records"], dropped=stats["dropped"]
    )


@router.get("/{rating_id}")
def get_rating(rating_id: str, session: SessionDep, who: PrincipalDep) -> RatingPublic:
    rating = store.get_rating(session, rating_id=rating_id)
    if rating is None or not (who.allowed(Role.admin) or rating.team in (None, who.team)):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"rating {rating_id} not found")
    return RatingPublic.model_validate(rating, from_attributes=True)
