"""Data mixtures: the share of a run's windows each source of the token shards gets.

A mixture is given one of three ways, over the sources a shard manifest lists (the train split):

* ``weights``: the shares themselves, e.g. web 0.6, books 0.3, news 0.1;
* ``temperature`` T: p_i proportional to n_i^(1/T), n_i the source's size (T = 1 samples in
  proportion to size, a large T evenly; the multilingual-BERT / XLM-R rule);
* ``epochs``: passes over each source, p_i proportional to e_i x n_i; a run reading exactly
  sum(e_i x n_i) tokens makes those passes, a longer or shorter one scales them all alike.

``max_epochs`` caps the repetition of any source over the run: a source whose share would be
read more than ``max_epochs`` times is held at the share that reads it exactly that often, and
what it gives up goes to the other sources in proportion to their shares (UniMax, Chung et al.
2023). When even every source at its cap cannot fill the run, that is an error. Sizes are
counted in windows (what the loader draws: a shard's tokens // window length), so shares of
windows are shares of tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llm.tokenizer.shards import shard_source


class MixtureError(ValueError):
    """A mixture that does not fit the data; ``loc`` names the field inside the mixture."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def window_length(arch: str, seq_len: int) -> int:
    """Tokens in one window the loader draws: a causal-LM window holds its inputs and one more
    target token; the masked-LM and span-corruption objectives use seq_len tokens."""
    return seq_len + 1 if arch == "decoder" else seq_len


def source_windows(manifest: Mapping[str, Any], split: str, length: int) -> dict[str, int]:
    """Windows of ``length`` tokens each source of the split holds (a window never crosses a
    shard), sources in name order."""
    found: dict[str, int] = {}
    for shard in manifest["splits"][split]["shards"]:
        name = shard_source(shard)
        found[name] = found.get(name, 0) + int(shard["tokens"]) // length
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class MixturePlan:
    """What a run draws: ``requested`` shares (from weights, temperature or epochs), ``shares``
    after the repetition cap (what the sampler uses), the windows each source holds and the
    windows the whole run reads."""

    requested: dict[str, float]
    shares: dict[str, float]
    windows: dict[str, int]
    run_windows: int

    @property
    def capped(self) -> list[str]:
        return [s for s in self.shares if self.shares[s] < self.requested[s] - 1e-12]

    def expected_epochs(self) -> dict[str, float]:
        return {s: self.shares[s] * self.run_windows / self.windows[s] for s in self.shares}


def plan_mixture(
    windows: Mapping[str, int],
    *,
    run_windows: int,
    weights: Mapping[str, float] | None = None,
    temperature: float | None = None,
    epochs: Mapping[str, float] | None = None,
    max_epochs: float | None = None,
) -> MixturePlan:
    """The shares of a run of ``run_windows`` windows over sources holding ``windows`` each,
    from exactly one of weights, temperature and epochs (see the module's doc)."""
    if sum(x is not None for x in (weights, temperature, epochs)) != 1:
        raise MixtureError((), "give exactly one of weights, temperature and epochs")
    if weights is not None:
        requested = _named_shares("weights", weights, windows, by_size=False)
    elif epochs is not None:
        requested = _named_shares("epochs", epochs, windows, by_size=True)
    else:
        assert temperature is not None
        if temperature <= 0:
            raise MixtureError(("temperature",), f"must be > 0, got {temperature}")
        if not any(windows.values()):
            raise MixtureError(("temperature",), "no source holds a whole window")
        # in logs: n^(1/T) overflows a float for a large source and a small T
        logs = {s: math.log(n) / temperature for s, n in windows.items() if n > 0}
        top = max(logs.values())
        requested = _normalised({s: math.exp(v - top) for s, v in logs.items()})
    shares = requested
    if max_epochs is not None:
        shares = _capped(requested, windows, max_epochs, run_windows)
    return MixturePlan(requested, shares, {s: windows[s] for s in requested}, run_windows)


def _named_shares(
    field: str, given: Mapping[str, float], windows: Mapping[str, int], *, by_size: bool
) -> dict[str, float]:
    """Shares in proportion to the given values (times each source's size with ``by_size``)."""
    for name, value in given.items():
        if name not in windows:
            raise MixtureError(
                (field, name),
                f"source {name!r} is not in the data; its sources are {sorted(windows)}",
            )
        if value > 0 and windows[name] == 0:
            raise MixtureError(
                (field, name), f"source {name!r} holds no whole window of the run's length"
            )
    positive = {s: v * (windows[s] if by_size else 1) for s, v in given.items() if v > 0}
    if not positive:
        raise MixtureError((field,), "give at least one source a positive value")
    return _normalised(positive)


def _normalised(values: Mapping[str, float]) -> dict[str, float]:
    total = math.fsum(values.values())  # exact: weights 0.6, 0.3, 0.1 stay as given
    return {s: values[s] / total for s in sorted(values)}


def _capped(
    requested: dict[str, float], windows: Mapping[str, int], max_epochs: float, run_windows: int
) -> dict[str, float]:
    """Water-filling: hold each source at the share that reads it max_epochs times, and give
    the rest to the uncapped sources in proportion to their requested shares."""
    if max_epochs <= 0:
        raise MixtureError(("max_epochs",), f"must be > 0, got {max_epochs}")
    limit = {s: max_epochs * windows[s] / max(run_windows, 1) for s in requested}
    if sum(limit.values()) < 1 - 1e-9:
        held = sum(windows[s] for s in requested)
        raise MixtureError(
            ("max_epochs",),
            f"the run reads {run_windows} windows, but its sources hold {held}: at most "
            f"{max_epochs} epochs each fill only {sum(limit.values()):.1%} of it; raise "
            "max_epochs, shorten the run or add data",
        )
    shares, fixed = dict(requested), set[str]()
    if all(shares[s] <= limit[s] for s in shares):
        return shares
    while over := [s for s in shares if s not in fixed and shares[s] > limit[s]]:
        fixed.update(over)
        for s in over:
            shares[s] = limit[s]
        free = [s for s in shares if s not in fixed]
        rest, base = 1 - sum(shares[s] for s in fixed), sum(requested[s] for s in free)
        for s in free:
            shares[s] = rest * requested[s] / base
    return _normalised(shares)  # every source capped: their limits sum to 1 within rounding
