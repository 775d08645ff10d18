"""Metric definitions against hand values and the reference libraries' own results."""

from __future__ import annotations

import math
import random

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from llm.eval.metrics import (
    add_counts,
    add_mean,
    add_ratio,
    exact_match,
    finish,
    leaderboard_normalise,
    merge_stat,
    multiple_choice,
    new_stat,
    rouge_l,
    sacrebleu_counts,
    token_f1,
)

HYPS = [
    "the cat sat on the mat",
    "a quick brown fox jumps over the lazy dog",
    "hello there general kenobi",
    "it is raining cats and dogs today",
]
REFS = [
    "the cat is sitting on the mat",
    "the quick brown fox jumped over the lazy dog",
    "hello there",
    "it rains cats and dogs",
]


def test_acc_and_acc_norm_differ_when_a_long_choice_is_likelier_per_character():
    # "ab": -10 total, -5 per char; "abcdefgh": -12 total, -1.5 per char
    out = multiple_choice([-10.0, -12.0], ["ab", "abcdefgh"], gold=(1,))
    assert (out["pred"], out["pred_norm"]) == (0, 1)
    assert (out["acc"], out["acc_norm"]) == (0.0, 1.0)


def test_acc_norm_counts_characters_and_acc_bytes_utf8_bytes():
    # "ééé": 3 characters, 6 bytes; "eeee": 4 characters, 4 bytes
    out = multiple_choice([-3.0, -3.5], ["ééé", "eeee"], gold=(0,))
    assert out["pred_norm"] == 1  # -1.0 vs -0.875 per character
    assert out["pred_bytes"] == 0  # -0.5 vs -0.875 per byte
    assert (out["acc_norm"], out["acc_bytes"]) == (0.0, 1.0)


def test_ties_go_to_the_first_choice_like_numpy_argmax():
    assert multiple_choice([-1.0, -1.0], ["a", "b"], gold=(0,))["pred"] == 0


def test_mean_and_stderr_equal_lm_evals_mean_stderr():
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    stat = new_stat("acc")
    for v in values:
        add_mean(stat, v)
    mean = sum(values) / len(values)
    sample_sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    assert finish("acc", stat) == {
        "value": pytest.approx(mean),
        "stderr": pytest.approx(sample_sd / math.sqrt(len(values))),
        "n": len(values),
    }


def test_merged_statistics_equal_the_whole():
    rnd = random.Random(1)
    values = [rnd.random() for _ in range(50)]
    whole, left, right = new_stat("f1"), new_stat("f1"), new_stat("f1")
    for i, v in enumerate(values):
        add_mean(whole, v)
        add_mean(left if i < 17 else right, v)
    merged = finish("f1", merge_stat(left, right))
    expected = finish("f1", whole)
    assert merged["value"] == pytest.approx(expected["value"], rel=1e-12)
    assert merged["stderr"] == pytest.approx(expected["stderr"], rel=1e-9)


def test_perplexities_and_bits_per_byte_from_summed_loglikelihoods():
    word, byte, bpb = (
        new_stat("word_perplexity"),
        new_stat("byte_perplexity"),
        new_stat("bits_per_byte"),
    )
    for ll, words, n_bytes in [(-20.0, 5, 30), (-13.0, 4, 21)]:
        add_ratio(word, ll, words)
        add_ratio(byte, ll, n_bytes)
        add_ratio(bpb, ll, n_bytes)
    assert finish("word_perplexity", word)["value"] == pytest.approx(math.exp(33 / 9))
    assert finish("byte_perplexity", byte)["value"] == pytest.approx(math.exp(33 / 51))
    assert finish("bits_per_byte", bpb)["value"] == pytest.approx(33 / 51 / math.log(2))


@pytest.mark.parametrize("metric", ["bleu", "chrf"])
def test_bleu_and_chrf_equal_sacrebleus_corpus_scores(metric):
    stat = new_stat(metric)
    for h, r in zip(HYPS, REFS, strict=True):
        add_counts(stat, sacrebleu_counts(metric, h, [r]))
    library = sacrebleu.corpus_bleu if metric == "bleu" else sacrebleu.corpus_chrf
    assert finish(metric, stat)["value"] == pytest.approx(library(HYPS, [REFS]).score, abs=1e-9)


def test_bleu_counts_merge_across_shards_to_the_corpus_score():
    left, right = new_stat("bleu"), new_stat("bleu")
    for i, (h, r) in enumerate(zip(HYPS, REFS, strict=True)):
        add_counts(left if i < 2 else right, sacrebleu_counts("bleu", h, [r]))
    merged = finish("bleu", merge_stat(left, right))["value"]
    assert merged == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-9)


def test_bleu_with_two_references_equals_sacrebleu():
    second = [
        "a cat sat on a mat",
        "a fast brown fox leaps over a lazy dog",
        "hi there",
        "it pours",
    ]
    stat = new_stat("bleu")
    for h, r1, r2 in zip(HYPS, REFS, second, strict=True):
        add_counts(stat, sacrebleu_counts("bleu", h, [r1, r2]))
    expected = sacrebleu.corpus_bleu(HYPS, [REFS, second]).score
    assert finish("bleu", stat)["value"] == pytest.approx(expected, abs=1e-9)


def test_rouge_l_equals_rouge_scores_fmeasure():
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for h, r in zip(HYPS, REFS, strict=True):
        assert rouge_l(h, [r]) == pytest.approx(scorer.score(r, h)["rougeL"].fmeasure)
    # the best of several references counts
    assert rouge_l(HYPS[2], ["nothing alike", REFS[2]]) == pytest.approx(
        scorer.score(REFS[2], HYPS[2])["rougeL"].fmeasure
    )


def test_token_f1_and_exact_match_squad_style():
    assert token_f1("The Eiffel Tower!", "eiffel tower") == 1.0  # articles, case, punctuation
    assert token_f1("in Paris France", "Paris") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert token_f1("London", "Paris") == 0.0
    assert exact_match("  Paris\n", ["Rome", "Paris"]) == 1.0
    assert exact_match("paris", ["Paris"]) == 0.0


def test_open_llm_leaderboard_normalisation():
    assert leaderboard_normalise(0.6, 0.25) == pytest.approx(46.666666, abs=1e-4)  # their example
    assert leaderboard_normalise(0.2, 0.25) == 0.0
    assert leaderboard_normalise(1.0, 0.5) == 100.0
