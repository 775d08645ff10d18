"""Masked-LM pseudo-log-likelihood against a hand computation, and minimal-pair scoring."""

from __future__ import annotations

import math

import pytest
import torch

from llm.eval.pll import minimal_pair_accuracy, pseudo_log_likelihood
from llm.model.config import ModelConfig
from llm.model.encoders import EncoderLM

MASK, BOS, EOS = 30, 31, 29


def _encoder() -> EncoderLM:
    torch.manual_seed(0)
    config = ModelConfig(
        arch="encoder", vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32
    )
    return EncoderLM(config).eval()


@torch.no_grad()
def _by_hand(model: EncoderLM, ids: list[int], skip: set[int]) -> float:
    """One forward pass per scored position, its token masked, its log-probability summed."""
    total = 0.0
    for i, token in enumerate(ids):
        if token in skip:
            continue
        masked = list(ids)
        masked[i] = MASK
        logits, _ = model(torch.tensor([masked]))
        probs = torch.softmax(logits[0, i].double(), dim=-1)
        total += math.log(float(probs[token]))
    return total


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_pll_equals_a_hand_computation(batch_size: int) -> None:
    model = _encoder()
    ids = [BOS, 3, 14, 15, 9, 2, 6, EOS]
    expected = _by_hand(model, ids, {BOS, EOS})
    got = pseudo_log_likelihood(model, ids, MASK, skip={BOS, EOS}, batch_size=batch_size)
    assert got == pytest.approx(expected, abs=1e-4)
    assert got < 0
    everything = pseudo_log_likelihood(model, ids, MASK)  # specials scored too: more terms
    assert everything == pytest.approx(_by_hand(model, ids, set()), abs=1e-4)
    assert model.training is False


def test_minimal_pairs_are_scored_by_pll() -> None:
    model = _encoder()
    pairs = [([BOS, 3, 4, 5, EOS], [BOS, 3, 5, 4, EOS]), ([BOS, 7, 8, EOS], [BOS, 8, 8, EOS])]
    scores = minimal_pair_accuracy(model, pairs, MASK, skip={BOS, EOS})
    good = [_by_hand(model, g, {BOS, EOS}) for g, _ in pairs]
    bad = [_by_hand(model, b, {BOS, EOS}) for _, b in pairs]
    assert scores["acc"] == sum(g > b for g, b in zip(good, bad, strict=True)) / 2
    assert scores["pll_good"] == pytest.approx(sum(good) / 2, abs=1e-4)
    assert scores["pll_bad"] == pytest.approx(sum(bad) / 2, abs=1e-4)
    with pytest.raises(ValueError, match="no minimal pairs"):
        minimal_pair_accuracy(model, [], MASK)
