"""lm-evaluation-harness's response filters for generation tasks, step for step.

A task's ``filter_list`` names pipelines; each turns an item's responses (one per repeat) into
the string its metrics score. The steps are lm-eval's (lm_eval/filters/extraction.py and
selection.py): ``regex`` (findall; the ``group_select``-th match, of a tuple match its first
non-empty group, stripped; ``fallback`` when nothing matches), ``remove_whitespace`` (strip),
``take_first_k`` (the first k responses), ``majority_vote`` (the most frequent response, ties to
the one seen first, as ``Counter.most_common``) and ``take_first`` (the first response, which
ends every pipeline).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# function -> {argument: default}; lm-eval's defaults
FUNCTIONS: dict[str, dict[str, Any]] = {
    "regex": {
        "regex_pattern": r"#### (\-?[0-9\.\,]+)",
        "group_select": 0,
        "fallback": "[invalid]",
    },
    "remove_whitespace": {},
    "take_first_k": {"k": None},
    "majority_vote": {},
    "take_first": {},
}


@dataclass(frozen=True)
class FilterStep:
    function: str
    args: tuple[tuple[str, Any], ...] = ()

    def arg(self, name: str) -> Any:
        return dict(self.args).get(name, FUNCTIONS[self.function][name])


@dataclass(frozen=True)
class FilterSpec:
    """One named pipeline of a task's filter_list."""

    name: str
    steps: tuple[FilterStep, ...]


def _regex(step: FilterStep, responses: list[str]) -> list[str]:
    pattern = re.compile(step.arg("regex_pattern"))
    select, fallback = step.arg("group_select"), step.arg("fallback")
    out = []
    for resp in responses:
        found = pattern.findall(resp if isinstance(resp, str) else "")
        if not found:
            out.append(fallback)
            continue
        match = found[select]
        if isinstance(match, tuple):
            groups = [m for m in match if m]
            match = groups[0] if groups else fallback
        out.append(match.strip())
    return out


def apply_filter(spec: FilterSpec, responses: Sequence[str]) -> str:
    """The filtered answer of one item from its responses (in repeat order)."""
    current: list[str] | str = list(responses)
    for step in spec.steps:
        assert isinstance(current, list), "take_first ends a pipeline"
        if step.function == "regex":
            current = _regex(step, current)
        elif step.function == "remove_whitespace":
            current = [r.strip() for r in current]
        elif step.function == "take_first_k":
            k = int(step.arg("k"))
            if len(current) < k:
                raise ValueError(
                    f"filter {spec.name}: take_first_k needs {k} responses per item, got "
                    f"{len(current)} (raise repeats)"
                )
            current = current[:k]
        elif step.function == "majority_vote":
            current = [Counter(current).most_common(1)[0][0]]
        else:  # take_first
            current = current[0]
    assert isinstance(current, str)
    return current
