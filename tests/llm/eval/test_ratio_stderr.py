"""Perplexity-type metrics carry the delta-method standard error of their ratio, by hand."""

import math

import pytest

from llm.eval.metrics import add_ratio, finish, merge_stat, new_stat


def test_bits_per_byte_has_the_ratio_estimators_standard_error() -> None:
    # three documents: log-likelihoods and byte counts
    items = [(-10.0, 10), (-30.0, 20), (-20.0, 10)]
    stat = new_stat("bits_per_byte")
    for num, den in items:
        add_ratio(stat, num, den)
    r = -60.0 / 40  # per byte
    residuals = [num - r * den for num, den in items]  # 5, 0, -5
    se_r = math.sqrt(sum(z * z for z in residuals) / 2 / 3) / (40 / 3)
    got = finish("bits_per_byte", stat)
    assert got["value"] == pytest.approx(1.5 / math.log(2))
    assert got["stderr"] == pytest.approx(se_r / math.log(2))
    ppl = finish("byte_perplexity", stat)
    assert ppl["value"] == pytest.approx(math.exp(1.5))
    assert ppl["stderr"] == pytest.approx(math.exp(1.5) * se_r)


def test_merged_shards_give_the_same_error_and_old_statistics_none() -> None:
    items = [(-10.0, 10), (-30.0, 20), (-20.0, 10), (-7.0, 5)]
    whole, a, b = (new_stat("bits_per_byte") for _ in range(3))
    for i, (num, den) in enumerate(items):
        add_ratio(whole, num, den)
        add_ratio(a if i % 2 else b, num, den)
    assert finish("bits_per_byte", merge_stat(a, b)) == pytest.approx(
        finish("bits_per_byte", whole)
    )
    old = {"kind": "ratio", "num": -60.0, "den": 40}  # an eval.json written before the sums
    assert finish("bits_per_byte", old)["stderr"] is None
    one = new_stat("bits_per_byte")
    add_ratio(one, -10.0, 10)
    assert finish("bits_per_byte", one)["stderr"] is None
