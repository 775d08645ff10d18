"""The compare table's arithmetic, by hand: means, standard errors across seeds, differences
paired by seed or combined, per-item errors with one seed; the chart is a PNG."""

import math

import pytest

from llm.eval.compare import chart, difference, markdown, mean_stderr, tabulate


def _tasks(bpb: float, acc: float, acc_se: float | None = None) -> dict:
    return {
        "results": {
            "held": {"metrics": {"bits_per_byte": {"value": bpb, "stderr": None}}},
            "mc": {
                "metrics": {
                    "acc": {"value": acc, "stderr": acc_se},
                    "acc_norm": {"value": acc + 0.01, "stderr": acc_se},
                }
            },
        }
    }


def test_mean_and_stderr_across_seeds() -> None:
    assert mean_stderr([2.0]) == (2.0, None)
    mean, se = mean_stderr([1.0, 2.0, 3.0])
    assert mean == 2.0 and se == pytest.approx(1.0 / math.sqrt(3))  # sd 1, n 3


def test_differences_pair_by_seed_when_the_seeds_match() -> None:
    # per-seed differences 0.5 and 0.7: mean 0.6, sd 0.1414, se 0.1
    d = difference({0: 1.5, 1: 2.7}, {0: 1.0, 1: 2.0}, (None,))
    assert d["value"] == pytest.approx(0.6) and d["stderr"] == pytest.approx(0.1)
    assert d["stderr_from"] == "paired seeds"
    # other seeds: the two standard errors combined
    d = difference({0: 1.0, 1: 3.0}, {5: 1.0, 6: 2.0}, (None,))
    assert d["value"] == pytest.approx(0.5)
    assert d["stderr"] == pytest.approx(math.hypot(1.0, 0.5)) and d["stderr_from"] == "seeds"
    # one seed each: per-item errors, combined
    d = difference({0: 0.6}, {0: 0.5}, (0.03, 0.04))
    assert d["stderr"] == pytest.approx(0.05) and d["stderr_from"] == "items"
    assert difference({0: 0.6}, {0: 0.5}, (None, 0.04))["stderr"] is None


def test_the_table_per_arm_against_the_baseline() -> None:
    runs = {"raw_s0": ("raw", 0), "raw_s1": ("raw", 1), "full_s0": ("full", 0),
            "full_s1": ("full", 1)}  # fmt: skip
    loaded = {
        "raw_s0": {"tasks": _tasks(2.0, 0.30), "train": {"tokens_seen": 100}},
        "raw_s1": {"tasks": _tasks(2.2, 0.32), "train": {"tokens_seen": 100}},
        "full_s0": {"tasks": _tasks(1.8, 0.36), "train": {"tokens_seen": 100}},
        "full_s1": {"tasks": _tasks(1.9, 0.40), "train": {"tokens_seen": 100}},
    }
    table = tabulate(runs, loaded, "raw")
    assert table["metrics"] == ["held/bits_per_byte", "mc/acc_norm"]
    full = table["arms"]["full"]
    assert full["seeds"] == [0, 1] and full["tokens"] == [100, 100]
    bpb = full["metrics"]["held/bits_per_byte"]
    assert bpb["mean"] == pytest.approx(1.85) and bpb["stderr"] == pytest.approx(0.05)
    # per-seed differences -0.2 and -0.3: mean -0.25, se 0.05
    assert bpb["difference"]["value"] == pytest.approx(-0.25)
    assert bpb["difference"]["stderr"] == pytest.approx(0.05)
    acc = full["metrics"]["mc/acc_norm"]["difference"]
    assert acc["value"] == pytest.approx(0.07) and acc["stderr"] == pytest.approx(0.01)
    assert "difference" not in table["arms"]["raw"]["metrics"]["held/bits_per_byte"]
    text = markdown(table)
    assert "| full | 0, 1 | 1.8500 ± 0.0500 | 39.00 ± 2.00 | -0.2500 ± 0.0500 | +7.00 ± 1.00 |" in (
        text
    )
    assert "Standard errors from: paired seeds, seeds." in text


def test_one_seed_uses_the_evaluations_own_errors() -> None:
    runs = {"raw_s0": ("raw", 0), "full_s0": ("full", 0)}
    loaded = {
        "raw_s0": {"tasks": _tasks(2.0, 0.30, 0.03), "train": {}},
        "full_s0": {"tasks": _tasks(1.8, 0.34, 0.04), "train": {}},
    }
    table = tabulate(runs, loaded, "raw")
    acc = table["arms"]["full"]["metrics"]["mc/acc_norm"]
    assert acc["stderr"] == 0.04 and acc["stderr_from"] == "items"
    assert acc["difference"]["stderr"] == pytest.approx(0.05)
    bpb = table["arms"]["full"]["metrics"]["held/bits_per_byte"]
    assert bpb["stderr"] is None and bpb["difference"]["stderr"] is None


def test_the_chart_is_a_png_with_every_curve() -> None:
    runs = {"raw_s0": ("raw", 0), "full_s0": ("full", 0)}
    png = chart(runs, {"raw_s0": [(10, 5.0), (20, 4.0)], "full_s0": [(10, 4.8), (20, 3.9)]})
    assert png is not None and png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert chart(runs, {"raw_s0": [], "full_s0": []}) is None


def test_the_table_follows_the_given_task_order() -> None:
    runs = {"raw_s0": ("raw", 0)}
    loaded = {"raw_s0": {"tasks": _tasks(2.0, 0.3), "train": {}}}
    assert tabulate(runs, loaded, "raw", ["mc", "held"])["metrics"] == [
        "mc/acc_norm",
        "held/bits_per_byte",
    ]
