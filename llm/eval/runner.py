"""evaluate_tasks: run tasks on a model and return JSON-ready results; merge: combine results
computed on item shards (for example on Ray workers) into the result of the whole run.

A result holds, per task, the metric statistics (see metrics.py), the counts, the malformed
records with line and reason, how the model scored it (``scoring``: "loglik" for a decoder's
causal log-likelihood and generation, "pll" for an encoder's pseudo-log-likelihood, "seq2seq"
for an encoder-decoder's; see llm.eval.lm) and optionally one record per item. Metrics are
always computed from the statistics, so ``merge(shard results)`` equals the unsharded result
exactly (up to float summation order).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from llm.eval.data import Malformed
from llm.eval.judge import Judge
from llm.eval.lm import PLL, EvalModel, GenerationUnsupportedError, as_eval_model
from llm.eval.metrics import finish, leaderboard_normalise, merge_stat, new_stat
from llm.eval.run_types import run_generate, run_loglikelihood, run_multiple_choice, run_rolling
from llm.eval.task import LoadedTask
from llm.eval.task_config import (
    GENERATE,
    LOGLIKELIHOOD,
    MULTIPLE_CHOICE,
    TaskConfig,
    TaskGroup,
    resolve_tasks,
)

NORMALISED = ("acc", "acc_norm", "acc_bytes")
RESULT_FORMAT = "llmforge.eval/1"


def _row_range(rows: slice | None, total: int) -> list[int]:
    start, stop, step = (rows or slice(None)).indices(total)
    if step != 1:
        raise ValueError(f"items must be a contiguous slice (step 1), got step {step}")
    return [start, max(start, stop)]


def _run_task(
    lm: EvalModel,
    cfg: TaskConfig,
    *,
    num_fewshot: int | None,
    limit: int | None,
    items: slice | None,
    batch_size: int,
    share_prefix: bool,
    judges: Sequence[Judge],
    log_samples: bool,
    data_root: str | Path | None,
) -> dict[str, Any]:
    task = LoadedTask.load(cfg, data_root)
    started = time.perf_counter()
    todo, malformed = task.items(num_fewshot=num_fewshot, limit=limit, rows=items)
    stats: dict[str, dict[str, Any]] = {m: new_stat(m) for m in cfg.metric_keys}
    if cfg.output_type == MULTIPLE_CHOICE:
        stats["random_baseline"] = new_stat("random_baseline")
        samples = run_multiple_choice(lm, task, todo, stats, malformed, batch_size, share_prefix)
    elif cfg.output_type == LOGLIKELIHOOD:
        samples = run_loglikelihood(lm, todo, stats, malformed, batch_size, share_prefix)
    elif cfg.output_type == GENERATE:
        stats.update({f"judge_{j.name}": new_stat("judge") for j in judges})
        samples = run_generate(lm, task, todo, stats, judges, batch_size)
    else:
        samples = run_rolling(lm, task, todo, stats, batch_size)
    seconds = time.perf_counter() - started
    total = min(task.records.total, limit) if limit is not None else task.records.total
    shots = cfg.num_fewshot if num_fewshot is None else num_fewshot
    result: dict[str, Any] = {
        "task": cfg.task,
        "group": cfg.group,
        "group_aggregate": [list(a) for a in cfg.group_aggregate],
        "output_type": cfg.output_type,
        # the leaderboard column; with a filter_list a "metric,filter" key (exact_match,flexible)
        "primary_metric": cfg.primary_metric,
        "split": cfg.split,
        "scoring": lm.scoring,
        "num_fewshot": shots,
        "fewshot_pool": task.fewshot_pool_size() if shots else 0,
        "rows": _row_range(items, total),
        "n": len(samples),
        "malformed": _malformed(malformed),
        "seconds": seconds,
        "stats": stats,
    }
    if log_samples:
        result["samples"] = samples
    return result


def _malformed(records: Iterable[Malformed | dict[str, Any]]) -> dict[str, Any]:
    rows = [r.to_dict() if isinstance(r, Malformed) else r for r in records]
    rows.sort(key=lambda r: r["row"])
    return {"count": len(rows), "records": rows}


def check_generation(scoring: str, configs: Sequence[TaskConfig], model: str) -> None:
    """Fail before anything runs when a task needs generation the model (scoring as
    ``scoring``) cannot do."""
    generating = [cfg.task for cfg in configs if cfg.output_type == GENERATE]
    if scoring == PLL and generating:
        raise GenerationUnsupportedError(
            f"{model} is an encoder (masked LM): it cannot generate text, so the "
            f"{GENERATE} tasks {', '.join(generating)} cannot run on it; drop them (its "
            "log-likelihood tasks are scored by pseudo-log-likelihood)"
        )


def finalize(result: dict[str, Any]) -> dict[str, Any]:
    """Fill in metrics (value, stderr) and, for multiple choice, the leaderboard-normalised
    scores from the statistics; also items per second."""
    stats = result["stats"]
    metrics = {k: finish(k, s) for k, s in stats.items() if k != "random_baseline"}
    result["metrics"] = metrics
    if "random_baseline" in stats and stats["random_baseline"]["n"]:
        baseline = stats["random_baseline"]["sum"] / stats["random_baseline"]["n"]
        result["random_baseline"] = baseline
        result["normalised"] = {
            k: _normalise(metrics[k], baseline) for k in NORMALISED if k in metrics
        }
    result["items_per_second"] = result["n"] / result["seconds"] if result["seconds"] else None
    return result


def _normalise(metric: Mapping[str, float | None], baseline: float) -> dict[str, float | None]:
    value, stderr = metric["value"], metric["stderr"]
    if value is None:
        return {"value": None, "stderr": None}
    scale = 100.0 / (1.0 - baseline)
    return {
        "value": leaderboard_normalise(value, baseline),
        "stderr": None if stderr is None else stderr * scale,
    }


def _pooled_stderr(stderrs: Sequence[float], sizes: Sequence[int]) -> float | None:
    """lm-eval's pooled_sample_stderr: the stderr of the size-weighted mean of subtasks."""
    if sum(sizes) <= len(sizes):
        return None
    pooled = sum((n - 1) * e * e * n for n, e in zip(sizes, stderrs, strict=True)) / (
        sum(sizes) - len(sizes)
    )
    return math.sqrt(pooled / sum(sizes))


def _aggregate(
    present: list[dict[str, Any]], section: str, name: str, weighted: bool
) -> dict[str, float | None] | None:
    values = [r[section][name]["value"] for r in present]
    errors = [r[section][name]["stderr"] for r in present]
    if any(v is None for v in values):
        return None
    sizes = [r["n"] for r in present] if weighted else [1] * len(present)
    if not sum(sizes):
        return None
    value = sum(v * n for v, n in zip(values, sizes, strict=True)) / sum(sizes)
    stderr = None
    if all(e is not None for e in errors):
        if weighted:
            stderr = _pooled_stderr(errors, sizes)
        else:
            stderr = math.sqrt(sum(e * e for e in errors)) / len(errors)
    return {"value": value, "stderr": stderr}


def _group_results(results: dict[str, Any], groups: Mapping[str, list[str]]) -> dict[str, Any]:
    """Group scores from subtask scores. With the group's aggregate_metric_list (lm-eval's):
    those metrics only, the mean weighted by each subtask's item count when weight_by_size
    (stderr: lm-eval's pooled_sample_stderr) or else unweighted. Without one: every metric the
    subtasks share, unweighted (lm-eval's blimp, weight_by_size false). The stderr of an
    unweighted mean of independent subtasks is sqrt(sum of squared stderrs) / k."""
    out = {}
    for group, members in groups.items():
        present = [results[m] for m in members if m in results]
        entry: dict[str, Any] = {"tasks": members, "metrics": {}, "normalised": {}}
        spec = next((r["group_aggregate"] for r in present if r.get("group_aggregate")), None)
        for section in ("metrics", "normalised"):
            names = set.intersection(*(set(r.get(section, {})) for r in present))
            wanted = {m: bool(w) for m, w in spec} if spec else dict.fromkeys(names, False)
            for name in sorted(set(wanted) & names):
                found = _aggregate(present, section, name, wanted[name])
                if found is not None:
                    entry[section][name] = found
        if spec:
            entry["weight_by_size"] = {m: bool(w) for m, w in spec}
        entry["n"] = sum(r["n"] for r in present)
        primaries = {r.get("primary_metric") for r in present}
        if len(primaries) == 1 and (primary := primaries.pop()) in entry["metrics"]:
            entry["primary_metric"] = primary
        scorings = {r["scoring"] for r in present if "scoring" in r}
        if len(scorings) == 1:
            entry["scoring"] = scorings.pop()
        out[group] = entry
    return out


def evaluate_tasks(
    model: Any,
    tokenizer: Any = None,
    tasks: Sequence[str | Path | TaskConfig | TaskGroup] = (),
    *,
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    items: slice | None = None,
    log_samples: bool = False,
    share_prefix: bool = True,
    judges: Sequence[Judge] = (),
    data_root: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Evaluate `model` on `tasks` (built-in names, task files or configs).

    limit keeps the first records of each task; items then takes a contiguous slice of those
    (a shard). The result is JSON-serialisable; merge() combines shard results.
    """
    lm = as_eval_model(model, tokenizer, device)
    configs, groups = resolve_tasks(list(tasks))
    check_generation(lm.scoring, configs, lm.name)
    root = data_root
    results = {}
    for cfg in configs:
        results[cfg.task] = finalize(
            _run_task(
                lm,
                cfg,
                num_fewshot=num_fewshot,
                limit=limit,
                items=items,
                batch_size=batch_size,
                share_prefix=share_prefix,
                judges=judges,
                log_samples=log_samples,
                data_root=root,
            )
        )
    return {
        "format": RESULT_FORMAT,
        "model": lm.name,
        "arch": lm.arch,
        "config": {"num_fewshot": num_fewshot, "limit": limit, "batch_size": batch_size},
        "results": results,
        "groups": _group_results(results, groups),
        "group_members": groups,
    }


def _merge_task(parts: list[dict[str, Any]]) -> dict[str, Any]:
    parts = sorted(parts, key=lambda p: p["rows"][0])
    for before, after in pairwise(parts):
        if after["rows"][0] != before["rows"][1]:
            problem = "overlap" if after["rows"][0] < before["rows"][1] else "leave a gap"
            raise ValueError(
                f"task {before['task']}: shards {problem} (rows {before['rows']} and "
                f"{after['rows']})"
            )
    merged = {k: v for k, v in parts[0].items() if k not in ("metrics", "normalised")}
    stats = dict(parts[0]["stats"])
    for part in parts[1:]:
        if set(part["stats"]) != set(stats):
            raise ValueError(f"task {part['task']}: shards computed different metrics")
        if part.get("scoring") != merged.get("scoring"):
            raise ValueError(
                f"task {part['task']}: shards were scored differently ({merged.get('scoring')} "
                f"and {part.get('scoring')})"
            )
        stats = {k: merge_stat(stats[k], part["stats"][k]) for k in stats}
    merged["stats"] = stats
    merged["rows"] = [parts[0]["rows"][0], parts[-1]["rows"][1]]
    merged["n"] = sum(p["n"] for p in parts)
    merged["seconds"] = sum(p["seconds"] for p in parts)
    merged["malformed"] = _malformed(r for p in parts for r in p["malformed"]["records"])
    if all("samples" in p for p in parts):
        merged["samples"] = [s for p in parts for s in p["samples"]]
    return finalize(merged)


def merge(shards: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine results computed on item shards: each task's shards must cover its rows
    without overlap or gap (a shard may hold any subset of the tasks)."""
    if not shards:
        raise ValueError("merge needs at least one result")
    names = list(dict.fromkeys(name for s in shards for name in s["results"]))
    results = {
        name: _merge_task([dict(s["results"][name]) for s in shards if name in s["results"]])
        for name in names
    }
    groups = {g: m for s in shards for g, m in s.get("group_members", {}).items()}
    return {
        **shards[0],
        "results": results,
        "groups": _group_results(results, groups),
        "group_members": groups,
    }


def task_rows(
    tasks: Sequence[str | Path | TaskConfig | TaskGroup],
    *,
    limit: int | None = None,
    data_root: str | Path | None = None,
) -> dict[str, int]:
    """Records per task (the first `limit`): the row count item shards divide."""
    configs, _ = resolve_tasks(list(tasks))
    root = data_root
    sizes = {cfg.task: LoadedTask.load(cfg, root).records.total for cfg in configs}
    return {name: min(n, limit) if limit is not None else n for name, n in sizes.items()}


def shard_slices(rows: int, shards: int) -> list[slice]:
    """`shards` contiguous slices covering range(rows), sizes differing by at most one."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    bounds = [rows * i // shards for i in range(shards + 1)]
    return [slice(a, b) for a, b in pairwise(bounds)]


def regroup(result: Mapping[str, Any], groups: Mapping[str, list[str]]) -> dict[str, Any]:
    """result with group entries (blimp, …) recomputed for groups, for results merged from
    shards that each ran single tasks."""
    members = dict(groups)
    grouped = _group_results(result["results"], members)
    return {**result, "groups": grouped, "group_members": members}
