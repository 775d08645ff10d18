"""/api/v1/ratings: storing human pairwise ratings and the leaderboard built from them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.auth import ADMIN_KEY_FILE
from services.ray_head import free_port
from services.settings import Settings

RATING = {
    "prompt": "Write a haiku about rain.",
    "model_a": "small",
    "model_b": "large",
    "completion_a": "Rain falls.",
    "completion_b": "Soft rain on the roof / ...",
    "winner": "b",
}


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = Settings(
        home=tmp_path, ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=60
    )
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": f"Bearer {(tmp_path / ADMIN_KEY_FILE).read_text().strip()}"}
        yield client, admin


def _key(client: TestClient, admin: dict[str, str], team: str, role: str = "member") -> Any:
    r = client.post("/api/v1/keys", json={"name": team, "team": team, "role": role}, headers=admin)
    return r.json()["id"], {"X-API-Key": r.json()["key"]}


def test_rating_round_trip_records_the_rater(api: tuple[TestClient, dict[str, str]]) -> None:
    client, admin = api
    key_id, red = _key(client, admin, "red")
    r = client.post(
        "/api/v1/ratings", json={**RATING, "task": "poems", "tags": ["short"]}, headers=red
    )
    assert r.status_code == 201, r.text
    rating = r.json()
    assert rating["rater"] == key_id and rating["team"] == "red"
    assert {k: rating[k] for k in RATING} == RATING
    assert client.get(f"/api/v1/ratings/{rating['id']}", headers=red).json() == rating
    _, reader = _key(client, admin, "red", role="read_only")
    assert client.post("/api/v1/ratings", json=RATING, headers=reader).status_code == 403
    _, blue = _key(client, admin, "blue")
    assert client.get(f"/api/v1/ratings/{rating['id']}", headers=blue).status_code == 404
    assert client.get("/api/v1/ratings", headers=blue).json()["count"] == 0


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"winner": "c"}, ["body", "winner"]),
        ({"model_b": "small"}, ["body"]),
        ({"prompt": ""}, ["body", "prompt"]),
        ({"tags": ["x" * 51]}, ["body", "tags", 0]),
        ({"score": 3}, ["body", "score"]),
        ({"model_a": None}, ["body", "model_a"]),
    ],
)
def test_bad_ratings_are_422_with_the_field(
    api: tuple[TestClient, dict[str, str]], change: dict[str, Any], loc: list[Any]
) -> None:
    client, admin = api
    r = client.post("/api/v1/ratings", json={**RATING, **change}, headers=admin)
    assert r.status_code == 422
    assert loc in [e["loc"] for e in r.json()["detail"]]
    if "model_b" in change:
        assert "must differ" in r.text


def test_list_filters_and_pages(api: tuple[TestClient, dict[str, str]]) -> None:
    client, admin = api
    for i in range(5):
        body = {**RATING, "winner": "a" if i < 2 else "tie", "task": "t1" if i % 2 else "t2"}
        assert client.post("/api/v1/ratings", json=body, headers=admin).status_code == 201
    client.post("/api/v1/ratings", json={**RATING, "model_a": "other"}, headers=admin)

    def ids(**params: Any) -> list[str]:
        return [
            r["id"]
            for r in client.get("/api/v1/ratings", params=params, headers=admin).json()["data"]
        ]

    assert len(ids(winner="tie")) == 3 and len(ids(task="t1")) == 2
    assert len(ids(model="small")) == 5 and len(ids(model="large")) == 6
    seen, cursor = [], None
    while True:
        page = client.get(
            "/api/v1/ratings",
            params={"limit": 4, **({"cursor": cursor} if cursor else {})},
            headers=admin,
        ).json()
        seen += [r["id"] for r in page["data"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert len(seen) == len(set(seen)) == 6
    assert client.get("/api/v1/ratings", params={"winner": "x"}, headers=admin).status_code == 422


def test_leaderboard_ranks_by_planted_strength_and_repeats(
    api: tuple[TestClient, dict[str, str]],
) -> None:
    client, admin = api
    strength = {"strong": 1200.0, "middle": 1000.0, "weak": 800.0}
    rng = np.random.default_rng(0)
    names = list(strength)
    for _ in range(240):
        i, j = rng.choice(3, size=2, replace=False)
        p_a = 1 / (1 + 10 ** ((strength[names[j]] - strength[names[i]]) / 400))
        winner = "a" if rng.random() < p_a else "b"
        body = {**RATING, "model_a": names[i], "model_b": names[j], "winner": winner, "task": "qa"}
        client.post("/api/v1/ratings", json=body, headers=admin)
    client.post("/api/v1/ratings", json={**RATING, "task": "other"}, headers=admin)
    params = {"task": "qa", "rounds": 100, "seed": 3}
    board = client.get("/api/v1/ratings/leaderboard", params=params, headers=admin).json()
    assert board["ratings"] == 240 and [m["model"] for m in board["models"]] == names
    for m in board["models"]:
        assert m["bt_ci"][0] <= m["bt"] <= m["bt_ci"][1]
        assert m["elo_ci"][0] <= m["elo"] <= m["elo_ci"][1]
        assert m["wins"] + m["losses"] + m["ties"] == m["games"]
    again = client.get("/api/v1/ratings/leaderboard", params=params, headers=admin).json()
    assert again == board
    everything = client.get("/api/v1/ratings/leaderboard", params={"rounds": 0}, headers=admin)
    assert everything.json()["ratings"] == 241
    for bad in ({"rounds": 5000}, {"confidence": 1}, {"k": 0}):
        assert (
            client.get("/api/v1/ratings/leaderboard", params=bad, headers=admin).status_code == 422
        )
