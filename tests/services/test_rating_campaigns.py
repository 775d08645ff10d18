"""/api/v1/ratings/campaigns: two tiny models complete three prompts through the control
plane's serving engines, raters get blinded pairs, and their verdicts reach the leaderboard and
the DPO preferences export. On SQLite and PostgreSQL (the store's two databases)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.api.app import create_app
from services.auth import ADMIN_KEY_FILE
from services.ray_head import free_port
from services.settings import Settings
from tests.services.tiny_models import seeded_checkpoint


@dataclass
class Api:
    client: TestClient
    admin: dict[str, str]
    red: dict[str, str]
    blue: dict[str, str]
    models: list[str]  # red's two models (other weights)
    tmp: Path


def _key(client: TestClient, admin: dict[str, str], team: str) -> dict[str, str]:
    r = client.post("/api/v1/keys", json={"name": team, "team": team}, headers=admin)
    return {"Authorization": f"Bearer {r.json()['key']}"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("campaign-models")
    # random weights: seeds whose greedy completions of the test's prompts all differ
    return [seeded_checkpoint(tmp / f"ckpt{seed}", seed) for seed in (0, 4)]


@pytest.fixture()
def api(database_url: str, checkpoints: list[Path], tmp_path: Path) -> Iterator[Api]:
    settings = Settings(
        home=tmp_path / "home",
        database_url=database_url,
        ray_address=f"http://127.0.0.1:{free_port()}",
        poll_interval_s=60,
        rate_limit_per_min=0,
        serve_max_batch=4,
        shared_roots=str(checkpoints[0].parent),  # every team reads it
    )
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": f"Bearer {(tmp_path / 'home' / ADMIN_KEY_FILE).read_text()}"}
        red, blue = _key(client, admin, "red"), _key(client, admin, "blue")
        models = [
            client.post(
                "/api/v1/models",
                json={"name": f"tiny{i}", "kind": "checkpoint", "uri": str(ckpt)},
                headers=red,
            ).json()["id"]
            for i, ckpt in enumerate(checkpoints)
        ]
        yield Api(client, admin, red, blue, models, tmp_path)


def _wait_open(api: Api, campaign: str, who: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        got = api.client.get(f"/api/v1/ratings/campaigns/{campaign}", headers=who).json()
        if got["state"] != "generating":
            return got
        assert time.monotonic() < deadline, got
        time.sleep(0.1)


def _completion(api: Api, model: str, prompt: str, seed: int) -> str:
    body = {"prompt": prompt, "max_tokens": 8, "temperature": 0, "seed": seed}
    r = api.client.post(f"/api/v1/models/{model}/completions", json=body, headers=api.red)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


def test_a_campaigns_ratings_reach_the_leaderboard_and_the_preferences(api: Api) -> None:
    c, red = api.client, api.red
    first, second = api.models
    template = {"name": "story", "template": "The {{ who }} said"}
    assert c.post("/api/v1/prompts", json=template, headers=red).status_code == 201
    body = {
        "name": "kings",
        "models": api.models,
        "prompts": ["Hello world, the"],
        "prompt_template": "story",
        "variables": [{"who": "queen"}, {"who": "man"}],
        "sampling": {"max_tokens": 8, "temperature": 0},
        "seed": 3,
    }
    r = c.post("/api/v1/ratings/campaigns", json=body, headers=red)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["state"] in ("generating", "open") and made["prompts"] == 3
    assert made["task"] == f"campaign-{made['id']}" and made["template_version"] == 1
    campaign = _wait_open(api, made["id"], red)
    assert campaign["state"] == "open" and campaign["errors"] == [], campaign
    progress = campaign["progress"]
    assert progress["completions"] == progress["completions_done"] == 6
    assert progress["pairs"] == 3 and progress["ratings"] == 0 and progress["left_for_you"] == 3

    # the completions are the serving engine's, as the completions route gives them: prompt i
    # samples with seed + i
    prompts = ["Hello world, the", "The queen said", "The man said"]
    ours = {p: _completion(api, first, p, 3 + i) for i, p in enumerate(prompts)}
    theirs = {p: _completion(api, second, p, 3 + i) for i, p in enumerate(prompts)}
    assert all(ours[p] != theirs[p] for p in prompts)

    # blinded pairs: no model named; red prefers the first model's completion every time
    url = f"/api/v1/ratings/campaigns/{made['id']}"
    seen, sides = set(), []
    for _ in range(3):
        r = c.get(f"{url}/next", headers=red)
        assert r.status_code == 200, r.text
        assert first not in r.text and second not in r.text and "tiny" not in r.text
        pair = r.json()["pair"]
        assert pair["id"] not in seen and pair["prompt"] in prompts
        assert {pair["left"], pair["right"]} == {ours[pair["prompt"]], theirs[pair["prompt"]]}
        assert c.get(f"{url}/next", headers=red).json()["pair"]["id"] == pair["id"]  # until rated
        verdict = "left" if pair["left"] == ours[pair["prompt"]] else "right"
        sides.append(verdict)
        r = c.post(f"{url}/ratings", json={"pair_id": pair["id"], "verdict": verdict}, headers=red)
        assert r.status_code == 201, r.text
        assert r.json()["progress"]["yours"] == len(seen) + 1
        seen.add(pair["id"])
    done = c.get(f"{url}/next", headers=red).json()
    assert done["pair"] is None and done["progress"]["left_for_you"] == 0
    again = c.post(f"{url}/ratings", json={"pair_id": pair["id"], "verdict": "tie"}, headers=red)
    assert again.status_code == 409  # a rater rates a pair once
    bogus = c.post(f"{url}/ratings", json={"pair_id": "nope", "verdict": "tie"}, headers=red)
    assert bogus.status_code == 404

    # another rater of the team gets the pairs afresh; a tie
    other = _key(c, api.admin, "red")
    pair = c.get(f"{url}/next", headers=other).json()["pair"]
    r = c.post(f"{url}/ratings", json={"pair_id": pair["id"], "verdict": "tie"}, headers=other)
    assert r.status_code == 201
    progress = c.get(url, headers=red).json()["progress"]
    assert progress["ratings"] == 4 and progress["pairs_rated"] == 3 and progress["yours"] == 3

    # normal ratings: on the leaderboard under the campaign's task, and as DPO preferences
    task = {"task": made["task"]}
    board = c.get("/api/v1/ratings/leaderboard", params=task | {"rounds": 0}, headers=red).json()
    assert board["ratings"] == 4
    top = board["models"][0]
    assert (top["model"], top["wins"], top["losses"], top["ties"]) == (first, 3, 0, 1)
    prefs = c.get("/api/v1/ratings/preferences", params=task, headers=red).json()
    assert prefs["count"] == 3 and prefs["dropped"] == {"tie": 1}
    assert {d["chosen_model"] for d in prefs["data"]} == {first}
    assert {(d["prompt"], d["chosen"], d["rejected"]) for d in prefs["data"]} == {
        (p, ours[p], theirs[p]) for p in prompts
    }
    ratings = c.get("/api/v1/ratings", params=task, headers=red).json()["data"]
    assert all(r["tags"] == [f"campaign:{made['id']}"] for r in ratings)

    # another team sees none of it
    assert c.get(url, headers=api.blue).status_code == 404
    assert c.get(f"{url}/next", headers=api.blue).status_code == 404
    r = c.post(f"{url}/ratings", json={"pair_id": pair["id"], "verdict": "tie"}, headers=api.blue)
    assert r.status_code == 404
    assert c.get("/api/v1/ratings/campaigns", headers=api.blue).json()["count"] == 0
    assert c.get("/api/v1/ratings/campaigns", headers=red).json()["data"][0]["id"] == made["id"]


def test_completions_that_cannot_be_made_are_recorded_with_their_reason(api: Api) -> None:
    c, red = api.client, api.red
    empty = api.tmp / "home" / "artifacts" / "teams" / "red" / "empty"  # red's area
    empty.mkdir(parents=True)
    broken = c.post(
        "/api/v1/models", json={"name": "gone", "kind": "checkpoint", "uri": str(empty)},
        headers=red,
    ).json()["id"]  # fmt: skip
    body = {
        "models": [*api.models, broken],
        "prompts": ["The king said", "the king " * 150],  # the second: past the context
        "sampling": {"max_tokens": 4, "temperature": 0},
        "ratings_per_pair": 1,
    }
    r = c.post("/api/v1/ratings/campaigns", json=body, headers=red)
    assert r.status_code == 201, r.text
    campaign = _wait_open(api, r.json()["id"], red)
    assert campaign["state"] == "open"
    errors = {(e["model"], tuple(e["prompts"] or ())): e["error"] for e in campaign["errors"]}
    assert "cannot be served" in errors[(broken, ())]
    for model in api.models:
        assert "context" in errors[(model, (1,))]
    progress = campaign["progress"]
    assert progress["completions_done"] == 2 and progress["completions_failed"] == 4
    assert progress["pairs"] == 1  # prompt 0, the two models that completed it

    # one rating per pair: once red rated it, nobody else gets it
    url = f"/api/v1/ratings/campaigns/{campaign['id']}"
    pair = c.get(f"{url}/next", headers=red).json()["pair"]
    assert pair["prompt"] == "The king said"
    assert c.post(f"{url}/ratings", json={"pair_id": pair["id"], "verdict": "tie"}, headers=red)
    other = _key(c, api.admin, "red")
    assert c.get(f"{url}/next", headers=other).json()["pair"] is None
    r = c.post(f"{url}/ratings", json={"pair_id": pair["id"], "verdict": "left"}, headers=other)
    assert r.status_code == 409 and "all its" in r.text
    assert c.get(url, headers=red).json()["progress"]["pairs_complete"] == 1

    # nothing to pair at all: the campaign fails, saying why
    body = {"models": [api.models[0], broken], "prompts": ["Hello"]}
    r = c.post("/api/v1/ratings/campaigns", json=body, headers=red)
    failed = _wait_open(api, r.json()["id"], red)
    assert failed["state"] == "failed" and "no prompt was completed by two" in failed["message"]
    r = c.get(f"/api/v1/ratings/campaigns/{failed['id']}/next", headers=red)
    assert r.status_code == 200 and r.json()["pair"] is None
    elsewhere = {"pair_id": pair["id"], "verdict": "tie"}  # a pair of the other campaign
    r = c.post(f"/api/v1/ratings/campaigns/{failed['id']}/ratings", json=elsewhere, headers=red)
    assert r.status_code == 404 and "is not one of campaign" in r.text


def test_bad_campaigns_are_refused_naming_what(api: Api) -> None:
    c, red = api.client, api.red
    blue_model = api.tmp / "home" / "artifacts" / "teams" / "blue" / "b"  # blue's area
    blue_model.mkdir(parents=True)
    blues = c.post(
        "/api/v1/models",
        json={"name": "b", "kind": "checkpoint", "uri": str(blue_model)},
        headers=api.blue,
    ).json()["id"]
    assert c.post("/api/v1/prompts", json={"name": "t", "template": "{{ who }}"}, headers=red)
    base = {"models": api.models, "prompts": ["Hello"]}
    for change, code, where in [
        ({"models": api.models[:1]}, 422, ["body", "models"]),
        ({"models": [api.models[0], api.models[0]]}, 422, ["body"]),
        ({"models": [api.models[0], "nope"]}, 404, "model nope not found"),
        ({"models": [api.models[0], blues]}, 404, f"model {blues} not found"),
        ({"prompts": []}, 422, ["body"]),
        ({"prompt_template": "nope"}, 404, "prompt template nope not found"),
        ({"prompt_template": "t", "variables": [{"who": "a"}, {}]}, 422,
         ["body", "variables", 1, "who"]),
        ({"variables": [{"who": "a"}]}, 422, ["body"]),
        ({"sampling": {"temperature": 3}}, 422, ["body", "sampling", "temperature"]),
        ({"prompts": ["x"] * 1001}, 422, ["body", "prompts"]),
    ]:  # fmt: skip
        r = c.post("/api/v1/ratings/campaigns", json=base | change, headers=red)
        assert r.status_code == code, (change, r.text)
        if isinstance(where, list):
            assert any(e["loc"] == where for e in r.json()["detail"]), r.text
        else:
            assert where in r.json()["detail"]
    assert c.get("/api/v1/ratings/campaigns", headers=red).json()["count"] == 0
    assert c.get("/api/v1/ratings/campaigns/nope/next", headers=red).status_code == 404


def test_a_campaign_left_generating_is_resumed_at_start(
    database_url: str, checkpoints: list[Path], tmp_path: Path
) -> None:
    """A control plane stopped mid-generation leaves the campaign generating with its pending
    completions; the next start finishes them."""
    from services.store import campaigns, registry
    from services.store.db import make_engine, make_sessionmaker
    from services.store.models import ArtifactCategory

    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        models = [
            registry.create_artifact(
                session, category=ArtifactCategory.model, kind="checkpoint", name=f"m{i}",
                uri=str(ckpt), team="red",
            ).id
            for i, ckpt in enumerate(checkpoints)
        ]  # fmt: skip
        params = {"max_tokens": 4, "temperature": 0.0, "top_p": 1.0, "top_k": None, "stop": None}
        made = campaigns.create_campaign(
            session, team="red", owner=None, name=None, models=models,
            prompts=[("The king said", None, None), ("Hello", None, None)], params=params,
            chat=False, seed=0, task=None, ratings_per_pair=None,
        )  # fmt: skip
        session.commit()
    engine.dispose()
    settings = Settings(
        home=tmp_path / "home",
        database_url=database_url,
        ray_address=f"http://127.0.0.1:{free_port()}",
        poll_interval_s=60,
        rate_limit_per_min=0,
    )
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": f"Bearer {(tmp_path / 'home' / ADMIN_KEY_FILE).read_text()}"}
        api = Api(client, admin, admin, admin, models, tmp_path)
        campaign = _wait_open(api, made.id, admin)
    assert campaign["state"] == "open" and campaign["progress"]["pairs"] == 2


def test_a_chat_campaign_prompts_through_the_chat_template(api: Api) -> None:
    c, red = api.client, api.red
    body = {
        "models": api.models,
        "prompts": ["Who would come?"],
        "chat": True,
        "sampling": {"max_tokens": 6, "temperature": 0},
    }
    r = c.post("/api/v1/ratings/campaigns", json=body, headers=red)
    assert r.status_code == 201, r.text
    campaign = _wait_open(api, r.json()["id"], red)
    assert campaign["state"] == "open", campaign
    pair = c.get(f"/api/v1/ratings/campaigns/{campaign['id']}/next", headers=red).json()["pair"]
    assert pair["messages"] == [{"role": "user", "content": "Who would come?"}]
    replies = set()
    for model in api.models:
        chat = {"model": model, "messages": pair["messages"], "max_tokens": 6, "temperature": 0}
        r = c.post("/v1/chat/completions", json=chat, headers=red)
        replies.add(r.json()["choices"][0]["message"]["content"])
    assert {pair["left"], pair["right"]} == replies


def test_pairs_sides_and_order_follow_the_seed_and_a_rater_rates_a_pair_once(
    session: Session,
) -> None:
    from services.store import campaigns, ratings
    from services.store.models import CampaignPair

    def made(seed: int) -> Any:
        campaign = campaigns.create_campaign(
            session, team="red", owner=None, name=None, models=["a1", "b2", "c3"],
            prompts=[(f"p{i}", None, None) for i in range(10)], params={}, chat=False,
            seed=seed, task=None, ratings_per_pair=2,
        )  # fmt: skip
        for c in campaigns.completions_of(session, campaign_id=campaign.id):
            c.text = f"{c.model} on {c.prompt_index}"
        campaigns.finish_generation(session, campaign=campaign)
        session.commit()
        return campaign

    def layout(campaign: Any) -> list[tuple[int, str, str, str, int]]:
        pairs = session.scalars(select(CampaignPair).where(CampaignPair.campaign_id == campaign.id))
        return sorted((p.prompt_index, p.model_a, p.model_b, p.left, p.position) for p in pairs)

    first, again, other = made(7), made(7), made(8)
    assert first.state == "open" and len(layout(first)) == 30  # 10 prompts x 3 model pairs
    assert not campaigns.finish_generation(session, campaign=first)  # finished already
    assert len(layout(first)) == 30
    assert layout(first) == layout(again) and layout(first) != layout(other)
    assert {side for *_, side, _ in layout(first)} == {"a", "b"}
    assert sorted(p for *_, p in layout(first)) == list(range(30))

    pair = campaigns.next_pair(session, campaign=first, rater="k1")
    assert pair is not None and pair.position == 0
    rating = ratings.create_rating(session, prompt="p", model_a=pair.model_a,
        model_b=pair.model_b, completion_a="x", completion_b="y", winner="a")  # fmt: skip
    campaigns.record_rating(session, pair=pair, rater="k1", rating_id=rating.id, cap=2)
    session.commit()
    following = campaigns.next_pair(session, campaign=first, rater="k1")
    assert following is not None and following.id != pair.id
    # another rater starts with the pairs nobody rated yet
    assert campaigns.next_pair(session, campaign=first, rater="k2").id == following.id
    with pytest.raises(IntegrityError):  # the same rater, the same pair
        campaigns.record_rating(session, pair=pair, rater="k1", rating_id=rating.id, cap=2)
    session.rollback()
    campaigns.record_rating(session, pair=pair, rater="k2", rating_id=rating.id, cap=2)
    with pytest.raises(campaigns.PairFull):  # a third rating past ratings_per_pair
        campaigns.record_rating(session, pair=pair, rater="k3", rating_id=rating.id, cap=2)
    session.rollback()
