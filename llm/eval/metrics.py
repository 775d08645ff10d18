"""Metrics as mergeable statistics, so results computed on item shards combine exactly.

Each metric keeps a small statistic per task instead of a finished number: a running mean
(count, sum, sum of squared deviations: merged with Chan et al.'s parallel update), a ratio of
sums (perplexities, bits per byte) or sacrebleu's additive corpus counts (BLEU, chrF). The
reported value and standard error are computed from the statistic; the standard error of a
mean is lm-eval's mean_stderr (sample standard deviation / sqrt(n)).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

RATIO_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")
SACREBLEU_METRICS = ("bleu", "chrf")


@dataclass
class MeanStat:
    """Count, sum (exact for 0/1 scores) and sum of squared deviations from the mean."""

    n: int = 0
    total: float = 0.0
    m2: float = 0.0

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    def add(self, x: float) -> None:
        before = self.mean
        self.n += 1
        self.total += x
        self.m2 += (x - before) * (x - self.mean)  # Welford

    def merge(self, other: MeanStat) -> None:
        n = self.n + other.n
        if n == 0:
            return
        delta = other.mean - self.mean
        self.m2 += other.m2 + delta * delta * self.n * other.n / n  # Chan et al.
        self.n, self.total = n, self.total + other.total

    def stderr(self) -> float | None:
        if self.n < 2:
            return None
        return math.sqrt(max(self.m2, 0.0) / (self.n - 1)) / math.sqrt(self.n)


def new_stat(metric: str) -> dict[str, Any]:
    if metric in RATIO_METRICS:
        # sums over items for the delta-method standard error of the ratio (``_ratio_stderr``)
        return {"kind": "ratio", "num": 0.0, "den": 0, "n": 0, "nn": 0.0, "nd": 0.0, "dd": 0.0}
    if metric in SACREBLEU_METRICS:
        return {"kind": "sacrebleu", "stats": []}
    return {"kind": "mean", "n": 0, "sum": 0.0, "m2": 0.0}


def add_mean(stat: dict[str, Any], x: float) -> None:
    m = MeanStat(stat["n"], stat["sum"], stat["m2"])
    m.add(float(x))
    stat.update(n=m.n, sum=m.total, m2=m.m2)


def add_ratio(stat: dict[str, Any], num: float, den: float) -> None:
    stat["num"] += num
    stat["den"] += den
    if "n" in stat:
        stat["n"] += 1
        stat["nn"] += num * num
        stat["nd"] += num * den
        stat["dd"] += den * den


def add_counts(stat: dict[str, Any], counts: Sequence[float]) -> None:
    if not stat["stats"]:
        stat["stats"] = [0] * len(counts)
    stat["stats"] = [a + b for a, b in zip(stat["stats"], counts, strict=True)]


def merge_stat(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    if a["kind"] != b["kind"]:
        raise ValueError(f"cannot merge a {a['kind']} statistic with a {b['kind']} one")
    if a["kind"] == "mean":
        m = MeanStat(a["n"], a["sum"], a["m2"])
        m.merge(MeanStat(b["n"], b["sum"], b["m2"]))
        return {"kind": "mean", "n": m.n, "sum": m.total, "m2": m.m2}
    if a["kind"] == "ratio":
        keys = ("num", "den", "n", "nn", "nd", "dd") if "n" in a and "n" in b else ("num", "den")
        return {"kind": "ratio", **{k: a[k] + b[k] for k in keys}}
    out = {"kind": "sacrebleu", "stats": list(a["stats"])}
    if b["stats"]:
        add_counts(out, b["stats"])
    return out


def _ratio_stderr(stat: dict[str, Any], r: float) -> float | None:
    """Standard error of r = sum(num) / sum(den) over n items by the delta method (the ratio
    estimator's): sqrt(sum((num_i - r den_i)^2) / (n - 1) / n) / mean(den). lm-evaluation-
    harness reports none for its perplexities; this lets a difference in bits per byte be
    weighed against its noise. None for fewer than two items or a statistic without the sums."""
    n = stat.get("n", 0)
    if n < 2:
        return None
    squares = stat["nn"] - 2 * r * stat["nd"] + r * r * stat["dd"]
    mean_den = stat["den"] / n
    return math.sqrt(max(squares, 0.0) / (n - 1) / n) / mean_den


def _scaled(se: float | None, factor: float) -> float | None:
    return None if se is None else se * abs(factor)


def finish(metric: str, stat: dict[str, Any]) -> dict[str, float | None]:
    """{"value", "stderr"} of one metric from its statistic (stderr None where not defined)."""
    if stat["kind"] == "mean":
        m = MeanStat(stat["n"], stat["sum"], stat["m2"])
        return {"value": m.mean if m.n else None, "stderr": m.stderr(), "n": m.n}
    if stat["kind"] == "ratio":
        if not stat["den"]:
            return {"value": None, "stderr": None}
        per_unit = stat["num"] / stat["den"]
        se = _ratio_stderr(stat, per_unit)
        if metric == "bits_per_byte":
            return {"value": -per_unit / math.log(2), "stderr": _scaled(se, 1 / math.log(2))}
        value = math.exp(-per_unit)
        return {"value": value, "stderr": _scaled(se, value)}  # d exp(-r) = exp(-r) dr
    if not stat["stats"]:
        return {"value": None, "stderr": None}
    score = _sacrebleu_metric(metric)._compute_score_from_stats(stat["stats"])
    return {"value": float(score.score), "stderr": None}


def multiple_choice(
    logprobs: Sequence[float], choices: Sequence[str], gold: Sequence[int]
) -> dict[str, Any]:
    """lm-eval's multiple-choice scoring: argmax of the summed log-likelihood (acc), of it
    divided by the choice's length in characters (acc_norm) or in UTF-8 bytes (acc_bytes).
    The lengths are of the choice text without the target delimiter, as lm-eval measures."""
    lls = np.array(logprobs, dtype=np.float64)
    chars = np.array([float(len(c)) for c in choices])
    n_bytes = np.array([float(len(c.encode("utf-8"))) for c in choices])
    with np.errstate(divide="ignore", invalid="ignore"):
        pred = int(np.argmax(lls))
        pred_norm = int(np.argmax(lls / chars))
        pred_bytes = int(np.argmax(lls / n_bytes))
    return {
        "pred": pred,
        "pred_norm": pred_norm,
        "pred_bytes": pred_bytes,
        "acc": float(pred in gold),
        "acc_norm": float(pred_norm in gold),
        "acc_bytes": float(pred_bytes in gold),
    }


def leaderboard_normalise(value: float, baseline: float) -> float:
    """Open LLM Leaderboard v2: 0 at or below the random-guess baseline, 100 at a perfect
    score, linear between."""
    if value < baseline:
        return 0.0
    return (value - baseline) / (1.0 - baseline) * 100.0


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's answer normalisation: lower case, no punctuation, no articles, one space."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token-overlap F1 between normalised answers."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = Counter(pred) & Counter(ref)
    overlap = sum(common.values())
    if not pred or not ref:
        return float(pred == ref)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1 when the prediction equals a reference, surrounding whitespace ignored."""
    return float(any(prediction.strip() == r.strip() for r in references))


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """rouge-score's ROUGE-L F-measure (0..1), the best over the references."""
    scorer = _rouge_scorer()
    return max(scorer.score(r, prediction)["rougeL"].fmeasure for r in references)


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


@lru_cache(maxsize=2)
def _sacrebleu_metric(metric: str) -> Any:
    import sacrebleu

    return sacrebleu.BLEU() if metric == "bleu" else sacrebleu.CHRF()


def sacrebleu_counts(metric: str, prediction: str, references: Sequence[str]) -> list[float]:
    """sacrebleu's sufficient statistics of one segment; their sums give the corpus score
    sacrebleu's corpus_score computes (it sums the same per-segment counts)."""
    counts = _sacrebleu_metric(metric)._extract_corpus_statistics(
        [prediction], [[r] for r in references]
    )
    return [float(x) for x in counts[0]]
