"""Scores for models from pairwise human ratings: win rates, Elo and Bradley–Terry, with
bootstrap confidence intervals, the way LMSYS's Chatbot Arena notebook computes them.

A game is ``(model_a, model_b, winner)`` with winner ``"a"``, ``"b"`` or ``"tie"``; a tie counts
as half a win for each side. Both scores are on the Elo scale: a 400-point gap means 10:1 odds.

* **Elo** (online): games in order, each moving both ratings by ``k * (score - expected)``.
  It depends on the order of the games, which the bootstrap shuffles.
* **Bradley–Terry** (maximum likelihood): strengths ``p`` with ``P(i beats j) = p_i / (p_i +
  p_j)``, fitted by Hunter's MM algorithm (2004), order-free. Only models connected by games
  can be compared: each connected group of models averages ``INITIAL``.

Hand-written rather than taken from a library: the Arena notebook itself fits BT with
scikit-learn's logistic regression over pandas pivot tables, and ``choix`` (the BT library) needs
scipy and has no ties or game weights. The MM and Elo updates are a few lines of numpy each, and
numpy lets the bootstrap run its resamples together.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

SCORES = {"a": 1.0, "b": 0.0, "tie": 0.5}
SCALE, BASE, INITIAL = 400.0, 10.0, 1000.0
LOG_BASE = math.log(BASE)
# Virtual games per pair of models that played, scored as a tie, added before the BT fit.
# Without them a model that won (or lost) every game has no finite MLE — common in bootstrap
# resamples of few games. 0.01 games moves a well-measured score by a fraction of a point.
PRIOR_GAMES = 0.1
CHUNK = 128  # bootstrap resamples computed together (memory: chunk × games)
TINY = 1e-300


@dataclass(frozen=True)
class Games:
    """Games as index arrays over ``models``: what every estimator here works on."""

    models: list[str]
    a: np.ndarray  # index of model_a, per game
    b: np.ndarray  # index of model_b, per game
    score: np.ndarray  # model_a's score: 1, 0 or 0.5
    pair: np.ndarray  # per game, its (unordered) pair of models in pair_i / pair_j
    pair_i: np.ndarray  # the pairs that played: the lower model index …
    pair_j: np.ndarray  # … and the higher

    @classmethod
    def from_records(cls, records: Iterable[tuple[str, str, str]]) -> Games:
        rows = list(records)
        for n, (model_a, model_b, winner) in enumerate(rows):
            if winner not in SCORES:
                raise ValueError(f"game {n}: winner must be 'a', 'b' or 'tie', got {winner!r}")
            if model_a == model_b:
                raise ValueError(f"game {n}: {model_a!r} is on both sides")
        models = sorted({m for a, b, _ in rows for m in (a, b)})
        index = {m: i for i, m in enumerate(models)}
        a = np.array([index[r[0]] for r in rows], dtype=np.int64)
        b = np.array([index[r[1]] for r in rows], dtype=np.int64)
        width = max(len(models), 1)
        keys, pair = np.unique(np.minimum(a, b) * width + np.maximum(a, b), return_inverse=True)
        return cls(
            models=models,
            a=a,
            b=b,
            score=np.array([SCORES[r[2]] for r in rows], dtype=np.float64),
            pair=pair.astype(np.int64),
            pair_i=keys // width,
            pair_j=keys % width,
        )

    def __len__(self) -> int:
        return len(self.a)


# --- Elo ----------------------------------------------------------------------------------------


def elo(games: Games, *, k: float = 4.0, scale: float = SCALE, base: float = BASE) -> np.ndarray:
    """Online Elo over the games in their given order; every model starts at ``INITIAL``."""
    rounds = _elo_rounds(games, np.arange(len(games))[None, :], k=k, scale=scale, base=base)
    return rounds[0]


def _elo_rounds(
    games: Games, order: np.ndarray, *, k: float, scale: float, base: float
) -> np.ndarray:
    """Online Elo for each row of ``order`` (game indices), all rows advanced together."""
    n_rounds, n_games = order.shape
    ratings = np.full((n_rounds, len(games.models)), INITIAL)
    rows = np.arange(n_rounds)
    for t in range(n_games):
        g = order[:, t]
        a, b = games.a[g], games.b[g]
        expected = 1.0 / (1.0 + base ** ((ratings[rows, b] - ratings[rows, a]) / scale))
        delta = k * (games.score[g] - expected)
        ratings[rows, a] += delta
        ratings[rows, b] -= delta
    return ratings


# --- Bradley–Terry ------------------------------------------------------------------------------


def _tallies(games: Games, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wins of each side of every played pair (ties as halves), each game counted ``weights``
    times: the lower-indexed model's, then the higher's."""
    lower_score = np.where(games.a < games.b, games.score, 1.0 - games.score)
    pairs = len(games.pair_i)
    lower = np.bincount(games.pair, weights * lower_score, minlength=pairs)
    upper = np.bincount(games.pair, weights * (1.0 - lower_score), minlength=pairs)
    return lower, upper


class _Batch:
    """R sets of tallies over the same pairs (R = 1 for a fit, a chunk for the bootstrap), with
    what each MM step needs. Only pairs with games in a row count in that row; models linked by
    them form groups, and each group is centred on its own, since nothing ties it to the
    others: without that the groups drift apart and the iteration never settles."""

    def __init__(self, games: Games, lower: np.ndarray, upper: np.ndarray, prior: float) -> None:
        self.games, self.tallies, self.prior = games, (lower, upper), prior
        self.rounds, self.m = len(lower), len(games.models)
        self.i, self.j = games.pair_i, games.pair_j
        active = (lower + upper) > 0
        self.lower = np.where(active, lower + prior / 2.0, 0.0)
        self.upper = np.where(active, upper + prior / 2.0, 0.0)
        self.played = self.lower + self.upper
        offsets = (np.arange(self.rounds) * self.m)[:, None]
        self.flat_i, self.flat_j = (offsets + self.i).ravel(), (offsets + self.j).ravel()
        self.log_wins = np.log(np.maximum(self.per_model(self.lower, self.upper), TINY))
        self.present = self.per_model(active, active) > 0
        groups = _components(self.i, self.j, active, self.m)
        self.group = (offsets + groups).ravel()
        self.group_size = np.bincount(self.group, minlength=self.rounds * self.m)

    def rows(self, keep: np.ndarray) -> _Batch:
        """The same fit for some of the rows only."""
        lower, upper = self.tallies
        return _Batch(self.games, lower[keep], upper[keep], self.prior)

    def per_model(self, at_i: np.ndarray, at_j: np.ndarray) -> np.ndarray:
        """Per-pair values summed onto both models of each pair, row by row."""
        size = self.rounds * self.m
        summed = np.bincount(self.flat_i, np.ravel(at_i), minlength=size)
        summed += np.bincount(self.flat_j, np.ravel(at_j), minlength=size)
        return summed.reshape(self.rounds, self.m)

    def centred(self, log_p: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
        """Each group moved to mean 0 (or to the mean of ``target`` over the same models)."""
        flat = log_p.ravel()
        size = self.rounds * self.m
        shift = np.bincount(self.group, flat, minlength=size)
        if target is not None:
            shift -= np.bincount(self.group, np.broadcast_to(target, log_p.shape).ravel(), size)
        shift = shift[self.group] / self.group_size[self.group]
        return (flat - shift).reshape(log_p.shape)

    def step(self, log_p: np.ndarray) -> np.ndarray:
        """One MM update (Hunter 2004): p_i = wins_i / sum_j n_ij / (p_i + p_j)."""
        p = np.exp(log_p)
        ratio = self.played / (p[:, self.i] + p[:, self.j])
        denominator = np.maximum(self.per_model(ratio, ratio), TINY)
        return self.centred(self.log_wins - np.log(denominator))

    def log_likelihood(self, log_p: np.ndarray) -> np.ndarray:
        gap = log_p[:, self.i] - log_p[:, self.j]
        # -log P(i wins) = softplus(-gap) and -log P(j wins) = softplus(-gap) + gap
        loss = self.played * np.logaddexp(0.0, -gap) + self.upper * gap
        return -loss.sum(axis=1)


def _components(i: np.ndarray, j: np.ndarray, active: np.ndarray, m: int) -> np.ndarray:
    """Per row, each model's group: the smallest model index it is linked to by active pairs
    (label propagation with pointer jumping, all rows at once)."""
    rows = np.broadcast_to(np.arange(len(active))[:, None], active.shape)[active]
    left, right = np.broadcast_to(i, active.shape)[active], np.broadcast_to(j, active.shape)[active]
    labels = np.tile(np.arange(m), (len(active), 1))
    while True:
        low = np.minimum(labels[rows, left], labels[rows, right])
        new = labels.copy()
        np.minimum.at(new, (rows, left), low)
        np.minimum.at(new, (rows, right), low)
        new = np.take_along_axis(new, new, axis=1)  # jump to the label's label
        if np.array_equal(new, labels):
            return labels
        labels = new


def _fit(batch: _Batch, start: np.ndarray, *, tol: float, max_iter: int) -> np.ndarray:
    """MM to the maximum, accelerated with SQUAREM (Varadhan & Roland, 2008): plain MM crawls
    when a model won or lost nearly every game (thousands of steps); SQUAREM extrapolates along
    the steps and falls back to two plain steps wherever that would lower the likelihood.
    Rows that have settled leave the batch, so a few slow resamples do not hold up the rest."""
    x = batch.centred(np.broadcast_to(start, (batch.rounds, batch.m)).copy())
    result, pending = np.empty_like(x), np.arange(batch.rounds)
    for _ in range(max_iter):
        once = batch.step(x)
        r = once - x
        settled = np.max(np.abs(r), axis=1, initial=0.0) < tol
        result[pending[settled]] = once[settled]
        if settled.all():
            return result
        if settled.mean() >= 0.25:
            batch, pending, x = batch.rows(~settled), pending[~settled], x[~settled]
            continue
        twice = batch.step(once)
        v = twice - 2.0 * once + x
        alpha = -np.linalg.norm(r, axis=1) / np.maximum(np.linalg.norm(v, axis=1), TINY)
        alpha = np.clip(alpha, -1e3, -1.0)[:, None]
        with np.errstate(over="ignore", invalid="ignore"):
            jump = batch.step(x - 2.0 * alpha * r + alpha**2 * v)
            worse = ~np.isfinite(jump).all(axis=1)
            worse |= batch.log_likelihood(jump) < batch.log_likelihood(twice)
        x = np.where(worse[:, None], twice, jump)
    result[pending] = x  # not settled in max_iter rounds: the best reached
    return result


def bradley_terry(
    games: Games,
    *,
    weights: np.ndarray | None = None,
    prior: float = PRIOR_GAMES,
    tol: float = 1e-10,
    max_iter: int = 10_000,
) -> np.ndarray:
    """BT maximum-likelihood scores on the Elo scale; each connected group averages INITIAL."""
    w = np.ones(len(games)) if weights is None else np.asarray(weights, dtype=np.float64)
    lower, upper = _tallies(games, w)
    batch = _Batch(games, lower[None], upper[None], prior)
    log_p = _fit(batch, np.zeros(len(games.models)), tol=tol, max_iter=max_iter)
    return INITIAL + SCALE * log_p[0] / LOG_BASE


# --- bootstrap and the table --------------------------------------------------------------------


def bootstrap(
    games: Games,
    *,
    rounds: int,
    seed: int,
    k: float = 4.0,
    prior: float = PRIOR_GAMES,
    tol: float = 1e-6,
    max_iter: int = 300,
) -> tuple[np.ndarray, np.ndarray]:
    """Elo and BT scores of ``rounds`` resamples of the games (with replacement; a resample is
    also a new order for online Elo): arrays (rounds, models), NaN for a model a resample left
    out. Same seed, same result."""
    rng = np.random.default_rng(seed)
    n, m = len(games), len(games.models)
    elo_rounds, bt_rounds = np.empty((rounds, m)), np.empty((rounds, m))
    # A resample's groups are placed like the full fit's, and its MM starts from that fit.
    point = (bradley_terry(games, prior=prior) - INITIAL) * LOG_BASE / SCALE
    for first in range(0, rounds, CHUNK):
        draws = rng.integers(0, n, size=(min(CHUNK, rounds - first), n))
        last = first + len(draws)
        counts = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.float64)
        tallies = [_tallies(games, c) for c in counts]
        batch = _Batch(
            games, np.stack([t[0] for t in tallies]), np.stack([t[1] for t in tallies]), prior
        )
        log_p = batch.centred(_fit(batch, point, tol=tol, max_iter=max_iter), target=point)
        bt_rounds[first:last] = np.where(batch.present, INITIAL + SCALE * log_p / LOG_BASE, np.nan)
        ratings = _elo_rounds(games, draws, k=k, scale=SCALE, base=BASE)
        elo_rounds[first:last] = np.where(batch.present, ratings, np.nan)
    return elo_rounds, bt_rounds


@dataclass(frozen=True)
class ModelScore:
    model: str
    games: int
    wins: int
    losses: int
    ties: int
    win_rate: float  # (wins + ties / 2) / games
    elo: float  # the median over bootstrap orders (one order is arbitrary), as Arena reports it
    elo_in_order: float  # online Elo over the games in the order they were recorded
    elo_ci: tuple[float, float]
    bt: float
    bt_ci: tuple[float, float]


def _summary(
    samples: np.ndarray, confidence: float, fallback: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median and percentile interval per model over the resamples that had it."""
    tail = (1.0 - confidence) / 2.0 * 100.0
    seen = ~np.isnan(samples).all(axis=0)
    filled = np.where(seen, samples, fallback)  # a model no resample had: its point value
    mid, low, high = np.nanpercentile(filled, [50.0, tail, 100.0 - tail], axis=0)
    return mid, low, high


def leaderboard(
    records: Iterable[tuple[str, str, str]],
    *,
    k: float = 4.0,
    rounds: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    prior: float = PRIOR_GAMES,
) -> list[ModelScore]:
    """Per model: games, wins, losses, ties, win rate, online Elo and BT, each with a bootstrap
    percentile interval; best BT first. ``rounds=0``: no bootstrap, so Elo is the in-order value
    and the intervals are that single point."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    games = Games.from_records(records)
    if not len(games):
        return []
    elo_point = elo(games, k=k)
    bt_point = bradley_terry(games, prior=prior)
    elo_mid = elo_lo = elo_hi = elo_point
    bt_lo = bt_hi = bt_point
    if rounds > 0:
        elo_samples, bt_samples = bootstrap(games, rounds=rounds, seed=seed, k=k, prior=prior)
        elo_mid, elo_lo, elo_hi = _summary(elo_samples, confidence, elo_point)
        _, bt_lo, bt_hi = _summary(bt_samples, confidence, bt_point)
    m = len(games.models)
    wins = np.bincount(games.a, games.score == 1, m) + np.bincount(games.b, games.score == 0, m)
    ties = np.bincount(games.a, games.score == 0.5, m) + np.bincount(games.b, games.score == 0.5, m)
    played = np.bincount(games.a, minlength=m) + np.bincount(games.b, minlength=m)
    table = [
        ModelScore(
            model=name,
            games=int(played[i]),
            wins=int(wins[i]),
            losses=int(played[i] - wins[i] - ties[i]),
            ties=int(ties[i]),
            win_rate=float((wins[i] + ties[i] / 2) / played[i]),
            elo=float(elo_mid[i]),
            elo_in_order=float(elo_point[i]),
            elo_ci=(float(elo_lo[i]), float(elo_hi[i])),
            bt=float(bt_point[i]),
            bt_ci=(float(bt_lo[i]), float(bt_hi[i])),
        )
        for i, name in enumerate(games.models)
    ]
    return sorted(table, key=lambda s: (-s.bt, s.model))
