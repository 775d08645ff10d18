"""A leaderboard-style Markdown table across models, from evaluate_tasks/merge results.

One row per model; per task (a group counts as one task) its main metric raw, in percent with
its standard error, and Open LLM Leaderboard v2-normalised (0 = random guessing, 100 =
perfect) where a random baseline exists; the average of the normalised scores first.
Perplexity tasks show bits per byte (lower is better) and take no part in the average.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PERCENT_METRICS = ("acc", "acc_norm", "acc_bytes", "exact_match", "f1", "rouge_l")


def task_columns(runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Groups, then tasks that belong to no group, in the order they first appear."""
    names: list[str] = []
    for run in runs.values():
        grouped = {t for members in run.get("group_members", {}).values() for t in members}
        names += [g for g in run.get("groups", {}) if g not in names]
        names += [t for t in run["results"] if t not in grouped and t not in names]
    return names


def task_entry(run: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    return run.get("groups", {}).get(name) or run["results"].get(name)


def main_metric(entry: Mapping[str, Any]) -> str:
    metrics = entry["metrics"]
    for name in ("acc_norm", "acc", "bits_per_byte"):
        if name in metrics:
            return name
    return str(entry.get("primary_metric") or next(iter(metrics)))


def _fmt(cell: Mapping[str, Any] | None, scale: float, digits: int) -> str:
    if cell is None or cell.get("value") is None:
        return "—"
    text = f"{cell['value'] * scale:.{digits}f}"
    if cell.get("stderr") is not None:
        text += f" ± {cell['stderr'] * scale:.{digits}f}"
    return text


def _fmt_raw(metric: str, cell: Mapping[str, Any] | None) -> str:
    if metric in PERCENT_METRICS:
        return _fmt(cell, 100.0, 2)
    return _fmt(cell, 1.0, 2 if metric in ("bleu", "chrf") else 4)


def leaderboard_markdown(
    runs: Mapping[str, Mapping[str, Any]], tasks: Sequence[str] | None = None
) -> str:
    """Markdown table of several models' results ({model name: result})."""
    columns = list(tasks) if tasks is not None else task_columns(runs)
    metric_of = {}
    for name in columns:
        entry = next((e for run in runs.values() if (e := task_entry(run, name))), None)
        if entry is None:
            raise ValueError(f"no result holds task {name!r}")
        metric_of[name] = main_metric(entry)
    header = ["Model", "Average (normalised)"]
    for name in columns:
        header += [f"{name} {metric_of[name]}", f"{name} normalised"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, run in runs.items():
        cells, normalised = [], []
        for name in columns:
            entry = task_entry(run, name) or {"metrics": {}}
            metric = metric_of[name]
            norm = entry.get("normalised", {}).get(metric)
            if norm is not None and norm.get("value") is not None:
                normalised.append(norm["value"])
            cells += [_fmt_raw(metric, entry["metrics"].get(metric)), _fmt(norm, 1.0, 2)]
        average = f"{sum(normalised) / len(normalised):.2f}" if normalised else "—"
        lines.append("| " + " | ".join([model, average, *cells]) + " |")
    return "\n".join(lines) + "\n"
