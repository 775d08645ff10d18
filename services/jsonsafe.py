"""Job outputs as values every store keeps: NaN and Infinity (a diverged loss, which Python's
json writes and reads) are not JSON, and PostgreSQL's JSON columns refuse them."""

from __future__ import annotations

import math
from typing import Any


def finite(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """``value`` with every non-finite float replaced by None, and the paths replaced."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [f"{path or '.'}: {value}"]
    replaced: list[str] = []
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out[key], found = finite(item, f"{path}.{key}")
            replaced += found
        return out, replaced
    if isinstance(value, list | tuple):
        items = []
        for index, item in enumerate(value):
            clean, found = finite(item, f"{path}[{index}]")
            items.append(clean)
            replaced += found
        return items, replaced
    return value, replaced


def finite_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record made finite; what was replaced is listed under ``non_finite``, not lost."""
    clean, replaced = finite(record)
    if replaced:
        clean["non_finite"] = replaced
    return dict(clean)
