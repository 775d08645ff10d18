"""Elo and Bradley–Terry from pairwise ratings (llm.eval.ratings)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llm.eval.ratings import Games, bradley_terry, elo, leaderboard

PLANTED = {"m1": 1250.0, "m2": 1120.0, "m3": 1000.0, "m4": 900.0, "m5": 730.0}


def _simulate(n: int, seed: int, tie_share: float = 0.15) -> list[tuple[str, str, str]]:
    """Games between random pairs drawn from the BT model with the PLANTED ratings: a share of
    games is a tie, the rest won with BT probability."""
    rng = np.random.default_rng(seed)
    names = list(PLANTED)
    games = []
    for _ in range(n):
        i, j = rng.choice(len(names), size=2, replace=False)
        a, b = names[i], names[j]
        p_a = 1 / (1 + 10 ** ((PLANTED[b] - PLANTED[a]) / 400))
        if rng.random() < tie_share:
            games.append((a, b, "tie"))
        else:
            games.append((a, b, "a" if rng.random() < p_a else "b"))
    return games


def test_elo_by_hand() -> None:
    games = Games.from_records([("A", "B", "a"), ("A", "C", "tie"), ("B", "C", "a")])
    ratings = dict(zip(games.models, elo(games, k=32), strict=True))
    # 1. A beats B, both at 1000: expected 0.5, so A +16 = 1016, B -16 = 984.
    # 2. A (1016) ties C (1000): E_A = 1 / (1 + 10^(-16/400)) = 0.52300959,
    #    delta = 32 * (0.5 - 0.52300959) = -0.73630679: A = 1015.26369321, C = 1000.73630679.
    # 3. B (984) beats C (1000.73630679): E_B = 1 / (1 + 10^(16.73630679/400)) = 0.47593313,
    #    delta = 32 * (1 - 0.47593313) = 16.77013981: B = 1000.77013981, C = 983.96616698.
    assert ratings["A"] == pytest.approx(1015.26369321, abs=1e-7)
    assert ratings["B"] == pytest.approx(1000.77013981, abs=1e-7)
    assert ratings["C"] == pytest.approx(983.96616698, abs=1e-7)
    assert sum(ratings.values()) == pytest.approx(3000)  # every update is zero-sum


def _bt_negative_log_likelihood(theta: np.ndarray, games: Games) -> float:
    diff = theta[games.a] - theta[games.b]
    p_a = 1 / (1 + np.exp(-diff))
    s = games.score  # a tie is half a win each way
    return float(-(s * np.log(p_a) + (1 - s) * np.log(1 - p_a)).sum())


def test_bradley_terry_mm_reaches_the_maximum_likelihood() -> None:
    optimize = pytest.importorskip("scipy.optimize")
    games = Games.from_records(_simulate(600, seed=3))
    ours = bradley_terry(games, prior=0.0)
    fit = optimize.minimize(
        _bt_negative_log_likelihood, np.zeros(len(games.models)), args=(games,), method="BFGS"
    )
    theta = fit.x - fit.x.mean()
    expected = 1000 + 400 * theta / math.log(10)  # natural-log strengths on the Elo scale
    np.testing.assert_allclose(ours, expected, atol=0.05)


def test_bradley_terry_recovers_planted_strengths() -> None:
    games = Games.from_records(_simulate(6000, seed=0, tie_share=0.0))
    scores = dict(zip(games.models, bradley_terry(games), strict=True))
    planted_mean = sum(PLANTED.values()) / len(PLANTED)
    for name, rating in PLANTED.items():
        assert scores[name] == pytest.approx(1000 + rating - planted_mean, abs=25)


def test_bradley_terry_orders_models_by_strength_despite_ties() -> None:
    """Ties that come regardless of strength pull the scores together, not out of order."""
    games = Games.from_records(_simulate(3000, seed=1, tie_share=0.3))
    scores = dict(zip(games.models, bradley_terry(games), strict=True))
    assert sorted(scores, key=lambda m: -scores[m]) == list(PLANTED)


def test_ties_count_as_half_a_win() -> None:
    split = Games.from_records([("A", "B", "a"), ("A", "B", "b"), ("B", "C", "a"), ("B", "C", "b")])
    tied = Games.from_records([("A", "B", "tie"), ("A", "B", "tie"), ("B", "C", "tie")] * 1)
    np.testing.assert_allclose(bradley_terry(split), [1000, 1000, 1000], atol=1e-6)
    np.testing.assert_allclose(bradley_terry(tied), [1000, 1000, 1000], atol=1e-6)
    table = {s.model: s for s in leaderboard([("A", "B", "tie"), ("A", "B", "a")], rounds=0)}
    assert table["A"].win_rate == 0.75 and table["B"].win_rate == 0.25
    assert (table["A"].wins, table["A"].ties, table["A"].losses) == (1, 1, 0)


def test_a_model_that_never_wins_gets_a_finite_last_place() -> None:
    games = [("A", "Z", "a"), ("B", "Z", "a"), ("A", "B", "a"), ("B", "A", "tie")] * 5
    table = leaderboard(games, rounds=50, seed=1)
    assert [s.model for s in table] == ["A", "B", "Z"]
    assert all(math.isfinite(s.bt) and math.isfinite(s.bt_ci[0]) for s in table)


def test_bootstrap_intervals_contain_the_estimates_and_repeat_with_the_seed() -> None:
    games = _simulate(1500, seed=7)
    first = leaderboard(games, rounds=300, seed=11)
    assert first == leaderboard(games, rounds=300, seed=11)
    assert first != leaderboard(games, rounds=300, seed=12)
    assert [s.model for s in first] == list(PLANTED)
    for score in first:
        assert score.bt_ci[0] <= score.bt <= score.bt_ci[1]
        assert score.elo_ci[0] <= score.elo <= score.elo_ci[1]
        assert 5 < score.bt_ci[1] - score.bt_ci[0] < 120  # a real spread, not a point
    narrow = {s.model: s for s in leaderboard(games, rounds=300, seed=11, confidence=0.5)}
    for score in first:
        assert narrow[score.model].bt_ci[1] - narrow[score.model].bt_ci[0] < (
            score.bt_ci[1] - score.bt_ci[0]
        )


@pytest.mark.parametrize(
    ("record", "message"),
    [(("A", "B", "draw"), "game 1: winner must be"), (("A", "A", "a"), "game 1: 'A' is on both")],
)
def test_bad_games_are_named(record: tuple[str, str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Games.from_records([("A", "B", "a"), record])


def test_no_games_no_table() -> None:
    assert leaderboard([], rounds=10) == []
