"""Curation funnel counts: documents and bytes in, kept, and removed for each reason.

Two shapes share one merge. ``Counts`` describe a batch or a corpus (documents, bytes, kept,
removed per reason); ``StepStats`` describe one step (its kind, what it got in, kept and removed,
its seconds, and whatever its block counts beyond that, such as the PII step's ``redacted``).
Both are plain dicts so they can travel between Ray tasks and be written as JSON; counts from
many batches and parts add up with ``merge_counts``.
"""

import copy
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from llm.data.schema import REASON, TEXT

Counts = dict[str, Any]
StepStats = dict[str, Any]
# The funnel every step has; any other key of a step's stats is an extra count of its block.
STEP_KEYS = frozenset({"step", "in", "kept", "removed", "seconds"})


def _zero() -> dict[str, int]:
    return {"documents": 0, "bytes": 0}


def empty_counts() -> Counts:
    """Counts of no documents: the identity for ``merge_counts``."""
    return {"documents": 0, "bytes": 0, "kept": _zero(), "removed": {}}


def reason_counts(batch: pa.Table) -> Counts:
    """Documents and UTF-8 text bytes in ``batch``: in total, kept, and per full removal reason."""
    sizes = pc.fill_null(pc.binary_length(batch.column(TEXT)), 0).to_pylist()
    reasons = batch.column(REASON).to_pylist()
    counts = empty_counts()
    counts["documents"] = len(sizes)
    counts["bytes"] = sum(sizes)
    for size, reason in zip(sizes, reasons, strict=True):
        bucket = counts["kept"] if reason is None else counts["removed"].setdefault(reason, _zero())
        bucket["documents"] += 1
        bucket["bytes"] += size
    return counts


def merge_counts(a: Any, b: Any) -> Any:
    """The sum of two counts or two funnels of one step; neither argument is modified.

    Numbers are added, dicts key by key (a key on one side only is kept as it is), and a step's
    kind stays what it is on both sides.
    """
    if isinstance(a, str):
        if a != b:
            raise ValueError(f"cannot add the funnels of different steps: {a!r} and {b!r}")
        return a
    if not isinstance(a, dict):
        return a + b
    return {
        key: merge_counts(a[key], b[key])
        if key in a and key in b
        else copy.deepcopy(a.get(key, b.get(key)))
        for key in sorted(a.keys() | b.keys())
    }


def empty_step_stats(kind: str) -> StepStats:
    """The funnel of a step that saw no documents: the identity for ``merge_counts``."""
    return {"step": kind, "in": _zero(), "kept": _zero(), "removed": {}, "seconds": 0.0}


def step_stats(kind: str, before: pa.Table, after: pa.Table, seconds: float) -> StepStats:
    """A step's funnel over one batch, measured on the rows still kept when it started.

    ``after`` is the step's output: the same rows in the same order (blocks mark rows, they
    never drop them), with text that an editing step may have changed; kept and removed bytes
    are those of the output.
    """
    came_in = pc.is_null(before.column(REASON))
    before_counts = reason_counts(before.filter(came_in))
    after_counts = reason_counts(after.filter(came_in))
    return {
        "step": kind,
        "in": {"documents": before_counts["documents"], "bytes": before_counts["bytes"]},
        "kept": after_counts["kept"],
        "removed": after_counts["removed"],
        "seconds": seconds,
    }


def corpus_step_stats(
    kept_before: Mapping[str, int],
    funnel: Counts,
    steps: list[tuple[str, str, float]],
    document_steps: list[StepStats],
) -> list[StepStats]:
    """The funnels of the corpus steps, given as (kind, the reason it removes with, seconds).

    A corpus step only marks rows, so its removals are the final count of its reason less what
    per-document steps removed for the same reason (a quality threshold and a top-fraction cut
    share one); its input is what the steps before it kept.
    """
    stats = []
    current = dict(kept_before)
    for kind, reason, seconds in steps:
        removed = dict(funnel["removed"].get(reason, _zero()))
        for earlier in document_steps:
            for key, value in earlier["removed"].get(reason, {}).items():
                removed[key] -= value
        step = empty_step_stats(kind)
        step["in"], step["seconds"] = dict(current), seconds
        step["removed"] = {reason: removed} if removed["documents"] else {}
        current = {key: current[key] - removed[key] for key in ("documents", "bytes")}
        step["kept"] = dict(current)
        stats.append(step)
    return stats


def extra_counts(steps: list[StepStats]) -> dict[str, Any]:
    """What blocks counted beyond the funnel (the PII step's ``redacted``), each under its own
    key: the job reports these beside the removals, the first step's where several share one."""
    extras: dict[str, Any] = {}
    for step in steps:
        for key, value in step.items():
            if key not in STEP_KEYS:
                extras.setdefault(key, value)
    return extras
