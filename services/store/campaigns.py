"""Rating campaigns: store operations for campaigns, their prompts, completions, blinded pairs
and who rated which pair."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime
from itertools import combinations
from typing import Any

from sqlalchemy import Select, exists, func, select, update
from sqlalchemy.orm import Session

from services.store.crud import new_id, newest_first
from services.store.models import (
    Campaign,
    CampaignCompletion,
    CampaignPair,
    CampaignPrompt,
    CampaignRating,
    CampaignState,
    utcnow,
)


def create_campaign(
    session: Session,
    *,
    team: str,
    owner: str | None,
    name: str | None,
    models: Sequence[str],
    prompts: Sequence[tuple[str, list[dict[str, str]] | None, dict[str, Any] | None]],
    params: dict[str, Any],
    chat: bool,
    seed: int,
    task: str | None,
    ratings_per_pair: int | None,
    prompt_template: str | None = None,
    template_version: int | None = None,
) -> Campaign:
    """The campaign in state generating, with its prompts and one empty completion per prompt
    and model (what the generator fills in)."""
    campaign_id = new_id()
    campaign = Campaign(
        id=campaign_id,
        team=team,
        owner=owner,
        name=name,
        state=CampaignState.generating.value,
        models=list(models),
        params=params,
        chat=chat,
        seed=seed,
        task=task or f"campaign-{campaign_id}",
        ratings_per_pair=ratings_per_pair,
        prompts=len(prompts),
        prompt_template=prompt_template,
        template_version=template_version,
        errors=[],
    )
    session.add(campaign)
    session.flush()
    session.add_all(
        CampaignPrompt(campaign_id=campaign_id, index=i, text=text, messages=messages, variables=v)
        for i, (text, messages, v) in enumerate(prompts)
    )
    session.add_all(
        CampaignCompletion(campaign_id=campaign_id, prompt_index=i, model=model)
        for model in models
        for i in range(len(prompts))
    )
    session.flush()
    return campaign


def get_campaign(session: Session, *, campaign_id: str) -> Campaign | None:
    return session.get(Campaign, campaign_id)


def list_campaigns(
    session: Session,
    *,
    team: str | None,
    limit: int = 100,
    after: tuple[datetime, str] | None = None,
) -> list[Campaign]:
    query = newest_first(
        select(Campaign), Campaign.created_at, Campaign.id, limit=limit, after=after
    )
    if team is not None:
        query = query.where(Campaign.team == team)
    return list(session.scalars(query))


def in_state(session: Session, *, state: CampaignState) -> list[str]:
    query = select(Campaign.id).where(Campaign.state == state.value).order_by(Campaign.created_at)
    return list(session.scalars(query))


def prompts_of(session: Session, *, campaign_id: str) -> list[CampaignPrompt]:
    query = select(CampaignPrompt).where(CampaignPrompt.campaign_id == campaign_id)
    return list(session.scalars(query.order_by(CampaignPrompt.index)))


def completions_of(
    session: Session, *, campaign_id: str, model: str | None = None, pending: bool = False
) -> list[CampaignCompletion]:
    query = select(CampaignCompletion).where(CampaignCompletion.campaign_id == campaign_id)
    if model is not None:
        query = query.where(CampaignCompletion.model == model)
    if pending:
        query = query.where(CampaignCompletion.text.is_(None), CampaignCompletion.error.is_(None))
    return list(session.scalars(query.order_by(CampaignCompletion.prompt_index)))


def _pairs(session: Session, campaign: Campaign) -> list[CampaignPair]:
    """A pair for each prompt and two models that both completed it. Which model shows on the
    left, and the order raters meet the pairs in, come from the campaign's seed."""
    done: dict[int, set[str]] = {}
    for c in completions_of(session, campaign_id=campaign.id):
        if c.text is not None:
            done.setdefault(c.prompt_index, set()).add(c.model)
    rng = random.Random(campaign.seed)  # the same seed, the same sides and order
    pairs = [
        (index, a, b)
        for index in range(campaign.prompts)
        for a, b in combinations(campaign.models, 2)
        if {a, b} <= done.get(index, set())
    ]
    order = list(range(len(pairs)))
    rng.shuffle(order)
    return [
        CampaignPair(
            id=new_id(),
            campaign_id=campaign.id,
            prompt_index=index,
            model_a=a,
            model_b=b,
            left=rng.choice("ab"),
            position=position,
            ratings=0,
        )
        for (index, a, b), position in zip(pairs, order, strict=True)
    ]


def finish_generation(session: Session, *, campaign: Campaign) -> bool:
    """Make the pairs and open the campaign (failed: when there is no pair). The state moves
    from generating in one conditional UPDATE, so where two control planes finish the same
    campaign, one makes the pairs and the other (False) leaves them be."""
    pairs = _pairs(session, campaign)
    state = CampaignState.open if pairs else CampaignState.failed
    message = (
        None
        if pairs
        else ("no prompt was completed by two models, so there is no pair to rate: see errors")
    )
    claimed = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign.id, Campaign.state == CampaignState.generating.value)
        .values(state=state.value, message=message, generated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.expire(campaign)
    if getattr(claimed, "rowcount", 1) == 0:
        return False
    session.add_all(pairs)
    session.flush()
    return True


def _open_to(query: Select[Any], campaign: Campaign, rater: str) -> Select[Any]:
    """The campaign's pairs this rater has not rated and that still take ratings."""
    rated = exists().where(CampaignRating.pair_id == CampaignPair.id, CampaignRating.rater == rater)
    query = query.where(CampaignPair.campaign_id == campaign.id, ~rated)
    if campaign.ratings_per_pair is not None:
        query = query.where(CampaignPair.ratings < campaign.ratings_per_pair)
    return query


def next_pair(session: Session, *, campaign: Campaign, rater: str) -> CampaignPair | None:
    """A pair this rater has not rated: the least rated first, then in the seeded order."""
    query = _open_to(select(CampaignPair), campaign, rater)
    query = query.order_by(CampaignPair.ratings, CampaignPair.position).limit(1)
    return session.scalars(query).first()


def get_pair(session: Session, *, pair_id: str) -> CampaignPair | None:
    return session.get(CampaignPair, pair_id)


def completion(
    session: Session, *, campaign_id: str, prompt_index: int, model: str
) -> CampaignCompletion | None:
    return session.get(CampaignCompletion, (campaign_id, prompt_index, model))


def prompt(session: Session, *, campaign_id: str, index: int) -> CampaignPrompt | None:
    return session.get(CampaignPrompt, (campaign_id, index))


def has_rated(session: Session, *, pair_id: str, rater: str) -> bool:
    return session.get(CampaignRating, (pair_id, rater)) is not None


class PairFull(Exception):
    """The pair got its ratings_per_pair ratings meanwhile."""


def record_rating(
    session: Session, *, pair: CampaignPair, rater: str, rating_id: str, cap: int | None
) -> None:
    """Who rated the pair; the pair's count goes up in the database, and only below ``cap``
    (no lost update, no rating past the cap, when two raters rate it at once: PairFull). A
    second rating of the pair by the same rater is an IntegrityError at flush."""
    session.add(
        CampaignRating(
            pair_id=pair.id, rater=rater, campaign_id=pair.campaign_id, rating_id=rating_id
        )
    )
    session.flush()
    query = update(CampaignPair).where(CampaignPair.id == pair.id)
    if cap is not None:
        query = query.where(CampaignPair.ratings < cap)
    done = session.execute(
        query.values(ratings=CampaignPair.ratings + 1).execution_options(synchronize_session=False)
    )
    if getattr(done, "rowcount", 1) == 0:
        raise PairFull(pair.id)


def progress(session: Session, *, campaign: Campaign, rater: str) -> dict[str, int]:
    """Counts: completions done and failed, pairs, pairs rated at least once (and, with
    ratings_per_pair, those that have all theirs), ratings, and this rater's own."""
    cid = campaign.id
    done = session.scalar(
        select(func.count()).where(
            CampaignCompletion.campaign_id == cid, CampaignCompletion.text.is_not(None)
        )
    )
    failed = session.scalar(
        select(func.count()).where(
            CampaignCompletion.campaign_id == cid, CampaignCompletion.error.is_not(None)
        )
    )
    pairs = session.scalar(select(func.count()).where(CampaignPair.campaign_id == cid))
    rated = session.scalar(
        select(func.count()).where(CampaignPair.campaign_id == cid, CampaignPair.ratings > 0)
    )
    ratings = session.scalar(select(func.count()).where(CampaignRating.campaign_id == cid))
    mine = session.scalar(
        select(func.count()).where(CampaignRating.campaign_id == cid, CampaignRating.rater == rater)
    )
    complete = None
    if campaign.ratings_per_pair is not None:
        complete = session.scalar(
            select(func.count()).where(
                CampaignPair.campaign_id == cid,
                CampaignPair.ratings >= campaign.ratings_per_pair,
            )
        )
    left = session.scalar(_open_to(select(func.count(CampaignPair.id)), campaign, rater))
    counts = {
        "completions": len(campaign.models) * campaign.prompts,
        "completions_done": done or 0,
        "completions_failed": failed or 0,
        "pairs": pairs or 0,
        "pairs_rated": rated or 0,
        "ratings": ratings or 0,
        "yours": mine or 0,
        "left_for_you": (left or 0) if campaign.state == CampaignState.open.value else 0,
    }
    if complete is not None:
        counts["pairs_complete"] = complete
    return counts
