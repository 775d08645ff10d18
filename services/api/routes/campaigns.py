"""/api/v1/ratings/campaigns: rating campaigns. Two or more registered models complete the
same prompts (text, and/or a stored template rendered with sets of variables) through this
control plane's serving engines (``services.campaigns``), then raters judge the completions in
blinded pairs: ``next`` hands the calling key a pair it has not rated, models unnamed and sides
shuffled with the campaign's seed; a verdict (left, right or tie) is stored as a normal rating
(``/ratings``), so it counts on the leaderboard and in the DPO preferences export.

Creation answers 201 at once with state ``generating``; the campaign turns ``open`` when the
completions are made (``failed`` when no pair could be made; the reasons are in ``errors``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.api.auditing import audit_event, refusals
from services.api.deps import SessionDep
from services.api.prompt_schemas import (
    BlindPair,
    CampaignCreate,
    CampaignProgress,
    CampaignPublic,
    CampaignRatingCreate,
    CampaignRatingPublic,
    CampaignsPublic,
    ChatMessagePublic,
    NextPair,
)
from services.api.routes import prompts
from services.api.routes.registry import visible
from services.api.validation import request_error
from services.auth import Principal, PrincipalDep
from services.campaigns import CampaignRunner, sampling
from services.store import campaigns as store
from services.store import crud, registry
from services.store import ratings as rating_store
from services.store.models import ArtifactCategory, Campaign, CampaignState, Role

router = APIRouter(prefix="/ratings/campaigns", tags=["ratings"])
ANONYMOUS = "-"  # the rater of a control plane without keys


def _rater(who: Principal) -> str:
    return who.key_id or ANONYMOUS


def _one(session: Session, who: Principal, campaign_id: str) -> Campaign:
    campaign = store.get_campaign(session, campaign_id=campaign_id)
    if campaign is None or not (who.allowed(Role.admin) or campaign.team == who.team):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"campaign {campaign_id} not found")
    return campaign


def _progress(session: Session, campaign: Campaign, who: Principal) -> CampaignProgress:
    counts = store.progress(session, campaign=campaign, rater=_rater(who))
    return CampaignProgress.model_validate(counts)


def _public(session: Session, campaign: Campaign, who: Principal) -> CampaignPublic:
    fields = set(CampaignPublic.model_fields) - {"progress", "sampling"}
    return CampaignPublic.model_validate(
        {f: getattr(campaign, f) for f in fields}
        | {"sampling": campaign.params, "progress": _progress(session, campaign, who)}
    )


def _prompt_set(
    session: Session, who: Principal, body: CampaignCreate
) -> tuple[list[tuple[str, list[dict[str, str]] | None, dict[str, Any] | None]], Any]:
    """(text, messages, variables) of every prompt, and the template used (or None)."""
    prompts_: list[tuple[str, list[dict[str, str]] | None, dict[str, Any] | None]] = [
        (text, None, None) for text in body.prompts
    ]
    record = None
    if body.prompt_template is not None:
        record = prompts.find(session, who, body.prompt_template)
        for i, variables in enumerate(body.variables if body.variables is not None else [{}]):
            out = prompts.render(record, variables, ("body", "variables", i))
            prompts_.append((out.text, out.messages, dict(variables)))
    return prompts_, record


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[refusals("campaigns.create", "campaign")],
)
def create_campaign(
    body: CampaignCreate, session: SessionDep, who: PrincipalDep, request: Request
) -> CampaignPublic:
    """Check the models (each a registered model the key's team may use) and the prompt set,
    store the campaign and start generating its completions in the background."""
    for i, model in enumerate(body.models):
        artifact = registry.get_artifact(
            session, artifact_id=model, category=ArtifactCategory.model
        )
        if artifact is None or not visible(artifact, who):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {model} not found (models.{i})")
    prompt_set, record = _prompt_set(session, who, body)
    params = body.sampling.model_dump()
    campaign = store.create_campaign(
        session,
        team=who.team,
        owner=who.key_id,
        name=body.name,
        models=body.models,
        prompts=prompt_set,
        params=params,
        chat=body.chat,
        seed=body.seed,
        task=body.task,
        ratings_per_pair=body.ratings_per_pair,
        prompt_template=record.id if record is not None else None,
        template_version=record.version if record is not None else None,
    )
    try:
        sampling(campaign, 0).validate()
    except ValueError as e:  # a ParamError: checked by the schema already, but name it
        raise request_error(("body", "sampling"), str(e)) from e
    audit_event(session, request, who, "campaigns.create", "campaign", campaign.id,
                status_code=201, models=",".join(body.models), prompts=len(prompt_set))  # fmt: skip
    session.commit()
    runner: CampaignRunner = request.app.state.campaigns
    runner.submit(campaign.id)
    return _public(session, campaign, who)


@router.get("")
def list_campaigns(
    session: SessionDep,
    who: PrincipalDep,
    team: Annotated[str | None, Query(description="admins: one team's only")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> CampaignsPublic:
    try:
        after = crud.decode_cursor(cursor) if cursor else None
    except ValueError as e:
        raise request_error(("query", "cursor"), str(e)) from e
    scope = team if who.allowed(Role.admin) else who.team
    rows = store.list_campaigns(session, team=scope, limit=limit + 1, after=after)
    page = rows[:limit]
    return CampaignsPublic(
        data=[_public(session, c, who) for c in page],
        count=len(page),
        next_cursor=crud.encode_cursor(page[-1]) if len(rows) > limit else None,
    )


@router.get("/{campaign_id}")
def get_campaign(campaign_id: str, session: SessionDep, who: PrincipalDep) -> CampaignPublic:
    """The campaign, its errors, and its progress (the calling key's own included)."""
    return _public(session, _one(session, who, campaign_id), who)


@router.get("/{campaign_id}/next")
def next_pair(campaign_id: str, session: SessionDep, who: PrincipalDep) -> NextPair:
    """A pair the calling key has not rated (the same one until it is rated): the prompt and
    two completions, left and right, the models not named. ``pair`` is null when nothing is
    left to rate; a campaign still generating is a 409."""
    campaign = _one(session, who, campaign_id)
    if campaign.state == CampaignState.generating.value:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"campaign {campaign_id} is still generating its completions"
        )
    pair = None
    if campaign.state == CampaignState.open.value:
        found = store.next_pair(session, campaign=campaign, rater=_rater(who))
        if found is not None:
            pair = _blind(session, campaign, found)
    return NextPair(
        campaign=campaign.id,
        state=campaign.state,
        pair=pair,
        progress=_progress(session, campaign, who),
    )


def _blind(session: Session, campaign: Campaign, pair: Any) -> BlindPair:
    prompt = store.prompt(session, campaign_id=campaign.id, index=pair.prompt_index)
    texts = {}
    for side, model in (("a", pair.model_a), ("b", pair.model_b)):
        found = store.completion(
            session, campaign_id=campaign.id, prompt_index=pair.prompt_index, model=model
        )
        texts[side] = found.text if found is not None and found.text is not None else ""
    left, right = ("a", "b") if pair.left == "a" else ("b", "a")
    assert prompt is not None
    messages = None
    if campaign.chat:
        raw = prompt.messages or [{"role": "user", "content": prompt.text}]
        messages = [ChatMessagePublic.model_validate(m) for m in raw]
    return BlindPair(
        id=pair.id, prompt=prompt.text, messages=messages, left=texts[left], right=texts[right]
    )


@router.post(
    "/{campaign_id}/ratings",
    status_code=status.HTTP_201_CREATED,
    dependencies=[refusals("campaigns.rate", "campaign", "campaign_id")],
)
def rate_pair(
    campaign_id: str, body: CampaignRatingCreate, session: SessionDep, who: PrincipalDep
) -> CampaignRatingPublic:
    """The calling key's verdict on a pair ``next`` handed out: stored as a rating of the two
    models (winner a, b or tie) with the campaign's task, tagged ``campaign:<id>``."""
    campaign = _one(session, who, campaign_id)
    pair = store.get_pair(session, pair_id=body.pair_id)
    if pair is None or pair.campaign_id != campaign.id:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"pair {body.pair_id} is not one of campaign {campaign_id}"
        )
    if campaign.state != CampaignState.open.value:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"campaign {campaign_id} is {campaign.state}: not rating"
        )
    rater = _rater(who)
    if store.has_rated(session, pair_id=pair.id, rater=rater):
        raise HTTPException(status.HTTP_409_CONFLICT, f"this key already rated pair {pair.id}")
    if campaign.ratings_per_pair is not None and pair.ratings >= campaign.ratings_per_pair:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"pair {pair.id} has all its {pair.ratings} ratings"
        )
    blind = _blind(session, campaign, pair)
    left_model = "a" if pair.left == "a" else "b"
    winner = {"left": left_model, "right": "b" if left_model == "a" else "a", "tie": "tie"}
    rating = rating_store.create_rating(
        session,
        prompt=blind.prompt,
        model_a=pair.model_a,
        model_b=pair.model_b,
        completion_a=blind.left if pair.left == "a" else blind.right,
        completion_b=blind.right if pair.left == "a" else blind.left,
        winner=winner[body.verdict],
        rater=who.key_id,
        team=campaign.team,
        task=campaign.task,
        tags=[f"campaign:{campaign.id}"],
    )
    try:
        store.record_rating(
            session, pair=pair, rater=rater, rating_id=rating.id, cap=campaign.ratings_per_pair
        )
    except IntegrityError as e:  # the same key rated it a moment ago, in another request
        session.rollback()
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"this key already rated pair {pair.id}"
        ) from e
    except store.PairFull as e:  # its last rating came from another rater a moment ago
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, f"pair {pair.id} has all its ratings") from e
    session.commit()
    return CampaignRatingPublic(
        rating=rating.id,
        pair_id=pair.id,
        verdict=body.verdict,
        progress=_progress(session, campaign, who),
    )
