"""Several arms' evaluations as one table against a baseline arm, and their validation curves
on one chart (the compare job, ``ray_jobs.compare``; an ablation's last stage).

For each arm and task: the task's main metric (``report.main_metric``: acc_norm, acc or
bits_per_byte), its mean over the arm's seeds and the standard error of that mean across seeds.
The difference from the baseline is paired by seed where both arms ran the same seeds (the
standard error of the per-seed differences), else the two arms' standard errors combined. With
one seed there is no spread across seeds: the evaluation's own per-item standard errors stand
in (combined as if independent, which overstates the error of a difference measured on the same
items), and the table says which kind each is. Torch-free: the CLI prints tables with it.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from llm.eval.report import PERCENT_METRICS, main_metric, task_columns, task_entry


def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the standard error of the mean (sample sd / sqrt(n); None for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def difference(
    arm: Mapping[int, float], base: Mapping[int, float], item_stderr: tuple[float | None, ...]
) -> dict[str, Any]:
    """arm minus base (seed -> value each): paired by seed where the seeds match."""
    a_mean, a_se = mean_stderr(list(arm.values()))
    b_mean, b_se = mean_stderr(list(base.values()))
    if set(arm) == set(base) and len(arm) >= 2:
        _, se = mean_stderr([arm[s] - base[s] for s in sorted(arm)])
        return {"value": a_mean - b_mean, "stderr": se, "stderr_from": "paired seeds"}
    if a_se is not None and b_se is not None:
        return {"value": a_mean - b_mean, "stderr": math.hypot(a_se, b_se), "stderr_from": "seeds"}
    known = [e for e in item_stderr if e is not None]
    if known and len(known) == len(item_stderr):
        se = math.sqrt(sum(e * e for e in known))
        return {"value": a_mean - b_mean, "stderr": se, "stderr_from": "items"}
    return {"value": a_mean - b_mean, "stderr": None, "stderr_from": None}


def tabulate(
    runs: Mapping[str, tuple[str, int]],
    loaded: Mapping[str, Mapping[str, Any]],
    baseline: str,
    order: Sequence[str] = (),
) -> dict[str, Any]:
    """Per arm: its seeds, tokens, and per metric column the per-seed values, mean, stderr and
    the difference from the baseline. ``runs``: run name -> (arm, seed); ``loaded``: run name ->
    {"tasks": an evaluation's tasks section, "train": its train result}; the task columns in
    ``order`` first."""
    by_arm: dict[str, dict[int, str]] = {}
    for name, (arm, seed) in runs.items():
        by_arm.setdefault(arm, {})[seed] = name
    tasks = {name: run["tasks"] for name, run in loaded.items()}
    found = task_columns(tasks)
    columns = [t for t in order if t in found] + [t for t in found if t not in order]
    metric_of = {}
    for task in columns:
        first = next(e for t in tasks.values() if (e := task_entry(t, task)))
        metric_of[task] = main_metric(first)
    keys = [f"{task}/{metric_of[task]}" for task in columns]

    def cell(run: str, task: str) -> tuple[float | None, float | None]:
        value = (task_entry(tasks[run], task) or {"metrics": {}})["metrics"].get(metric_of[task])
        if not value or value.get("value") is None:
            return None, None
        return float(value["value"]), value.get("stderr")

    arms: dict[str, Any] = {}
    for arm, seeds in by_arm.items():
        entry: dict[str, Any] = {
            "seeds": sorted(seeds),
            "tokens": [loaded[seeds[s]]["train"].get("tokens_seen") for s in sorted(seeds)],
            "metrics": {},
        }
        for task, key in zip(columns, keys, strict=True):
            values = {s: cell(run, task) for s, run in seeds.items()}
            got = {s: v for s, (v, _) in values.items() if v is not None}
            if not got:
                continue
            mean, se = mean_stderr(list(got.values()))
            item_se = values[min(got)][1] if len(got) == 1 else None
            entry["metrics"][key] = {
                "values": {str(s): v for s, v in sorted(got.items())},
                "mean": mean,
                "stderr": se if se is not None else item_se,
                "stderr_from": "seeds" if se is not None else ("items" if item_se else None),
            }
        arms[arm] = entry
    base = arms[baseline]
    for arm, entry in arms.items():
        for key, m in entry["metrics"].items():
            if arm == baseline or key not in base["metrics"]:
                continue
            b = base["metrics"][key]
            a_values = {int(s): v for s, v in m["values"].items()}
            b_values = {int(s): v for s, v in b["values"].items()}
            items = (m["stderr"], b["stderr"]) if len(a_values) == len(b_values) == 1 else (None,)
            m["difference"] = difference(a_values, b_values, items)
    return {"baseline": baseline, "arms": arms, "metrics": keys}


def _fmt(metric: str, value: float | None, stderr: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    scale, digits = (100.0, 2) if metric.rsplit("/", 1)[-1] in PERCENT_METRICS else (1.0, 4)
    text = f"{value * scale:+.{digits}f}" if signed else f"{value * scale:.{digits}f}"
    return text + (f" ± {stderr * scale:.{digits}f}" if stderr is not None else "")


def markdown(table: Mapping[str, Any]) -> str:
    """One row per arm: each metric's mean ± stderr, then its difference from the baseline."""
    keys = table["metrics"]
    header = ["arm", "seeds", *keys, *[f"Δ {k} vs {table['baseline']}" for k in keys]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, entry in table["arms"].items():
        means, diffs = [], []
        for key in keys:
            m = entry["metrics"].get(key)
            means.append(_fmt(key, m["mean"], m["stderr"]) if m else "—")
            d = (m or {}).get("difference")
            diffs.append(_fmt(key, d["value"], d["stderr"], signed=True) if d else "—")
        seeds = ", ".join(str(s) for s in entry["seeds"])
        lines.append("| " + " | ".join([arm, seeds, *means, *diffs]) + " |")
    froms = {
        str(d["stderr_from"])
        for e in table["arms"].values()
        for m in e["metrics"].values()
        for d in (m, m.get("difference") or {})
        if d.get("stderr_from")
    }
    note = f"\nStandard errors from: {', '.join(sorted(froms))}.\n" if froms else "\n"
    return "\n".join(lines) + "\n" + note


def chart(
    runs: Mapping[str, tuple[str, int]], curves: Mapping[str, Sequence[tuple[int, float]]]
) -> bytes | None:
    """Every run's validation-loss curve on one chart, one colour per arm (PNG bytes); None
    when no run logged one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {name: points for name, points in curves.items() if points}
    if not curves:
        return None
    arms = sorted({runs[name][0] for name in curves})
    colours = {arm: plt.get_cmap("tab10")(i % 10) for i, arm in enumerate(arms)}
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    labelled: set[str] = set()
    for name, points in sorted(curves.items()):
        arm = runs[name][0]
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, color=colours[arm], marker="o", markersize=3,
                label=None if arm in labelled else arm)  # fmt: skip
        labelled.add(arm)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (each arm's own held-out split)")
    ax.set_title("validation curves by arm (one line per seed)")
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
