"""Task files: YAML describing a data source, prompt templates, few-shot settings and metrics.

A task file holds one task, or a group (``group:``) of subtasks that share ``defaults``. Field
names follow lm-evaluation-harness (doc_to_text, doc_to_choice, doc_to_target,
target_delimiter, fewshot_delimiter, num_fewshot, output_type), so its task files read alike.
Built-in tasks live in llm/eval/tasks/ and are found by name.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llm.eval.filters import FUNCTIONS, FilterSpec, FilterStep

BUILTIN_DIR = Path(__file__).parent / "tasks"

MULTIPLE_CHOICE = "multiple_choice"
ROLLING = "loglikelihood_rolling"
GENERATE = "generate_until"
LOGLIKELIHOOD = "loglikelihood"
OUTPUT_TYPES = (MULTIPLE_CHOICE, ROLLING, GENERATE, LOGLIKELIHOOD)
METRICS: dict[str, tuple[str, ...]] = {
    LOGLIKELIHOOD: ("acc", "perplexity"),
    MULTIPLE_CHOICE: ("acc", "acc_norm", "acc_bytes"),
    ROLLING: ("word_perplexity", "byte_perplexity", "bits_per_byte"),
    GENERATE: ("exact_match", "f1", "bleu", "chrf", "rouge_l"),
}
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    LOGLIKELIHOOD: METRICS[LOGLIKELIHOOD],
    MULTIPLE_CHOICE: ("acc", "acc_norm"),
    ROLLING: METRICS[ROLLING],
    GENERATE: ("exact_match",),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    LOGLIKELIHOOD: ("doc_to_text", "doc_to_target"),
    MULTIPLE_CHOICE: ("doc_to_text", "doc_to_choice", "doc_to_target"),
    ROLLING: ("doc_to_target",),
    GENERATE: ("doc_to_text", "doc_to_target"),
}


class TaskError(ValueError):
    """A task file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class GenerationConfig:
    until: tuple[str, ...] = ("\n\n",)
    max_gen_toks: int = 128
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 1234


@dataclass(frozen=True)
class TaskConfig:
    task: str
    data: str  # local path (relative to the data root), glob, or s3:// URI
    output_type: str
    source: str = "<dict>"  # the task file, for error messages
    doc_to_text: str = ""
    doc_to_choice: Any = None
    doc_to_target: Any = None
    # perplexity: the text whose words and bytes are counted (lm-eval's wikitext counts the
    # page before detokenising); default: the scored text itself
    doc_to_count: str | None = None
    description: str = ""
    data_format: str | None = None
    document_start: str | None = None  # plain text: regex (multi-line) where documents begin
    fewshot_data: str | None = None  # a separate few-shot split; default: the other items
    split: str = "test"
    num_fewshot: int = 0
    fewshot_seed: int = 1234
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    metrics: tuple[str, ...] = ()
    rolling_context_len: int = 1  # lm-eval's loglikelihood_rolling uses 1 (disjoint windows)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # lm-eval's fewshot_config.sampler: "default" (random) or "first_n" (the first n, MMLU)
    fewshot_sampler: str = "default"
    # generation: lm-eval's filter_list (named pipelines over the responses) and repeats
    filter_list: tuple[FilterSpec, ...] = ()
    repeats: int = 1
    # options of a metric from metric_list (exact_match: ignore_case, regexes_to_ignore, ...)
    metric_args: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    group: str | None = None
    # the group's aggregate_metric_list as (metric, weight_by_size); set by the loader
    group_aggregate: tuple[tuple[str, bool], ...] = ()

    def __post_init__(self) -> None:
        if not self.metrics:
            object.__setattr__(self, "metrics", DEFAULT_METRICS.get(self.output_type, ()))

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """The reported metrics: with a filter_list "metric,filter" for each pair, as lm-eval
        names them; otherwise the metric names."""
        if not self.filter_list:
            return self.metrics
        return tuple(f"{m},{f.name}" for f in self.filter_list for m in self.metrics)

    def metric_options(self, metric: str) -> dict[str, Any]:
        return dict(dict(self.metric_args).get(metric, ()))

    @property
    def primary_metric(self) -> str:
        """The leaderboard column: acc_norm when computed, else the first metric."""
        return "acc_norm" if "acc_norm" in self.metrics else self.metric_keys[0]


@dataclass(frozen=True)
class TaskGroup:
    group: str
    tasks: tuple[TaskConfig, ...]
    source: str


# set by the loader or parsed from lm-eval's spelling, never given as such by the file
_FIELDS = {f.name for f in dataclasses.fields(TaskConfig)} - {
    "source",
    "group",
    "group_aggregate",
    "fewshot_sampler",
    "metric_args",
}
_RAW_FIELDS = {"metric_list", "fewshot_config"}
SAMPLERS = ("default", "first_n")
# lm-eval's exact_match options (its exact_match_hf_evaluate)
EXACT_MATCH_OPTIONS = ("ignore_case", "ignore_punctuation", "ignore_numbers", "regexes_to_ignore")
_STR_FIELDS = (
    "task",
    "data",
    "doc_to_text",
    "description",
    "split",
    "target_delimiter",
    "fewshot_delimiter",
)
_INT_FIELDS = ("num_fewshot", "fewshot_seed", "rolling_context_len", "repeats")


def _fail(source: str, task: str | None, message: str) -> TaskError:
    where = f"{source} (task {task})" if task else source
    return TaskError(f"{where}: {message}")


def _generation(raw: Any, source: str, task: str) -> GenerationConfig:
    if raw is None:
        return GenerationConfig()
    if not isinstance(raw, dict):
        raise _fail(source, task, f"field 'generation' must be a mapping, got {raw!r}")
    allowed = {f.name for f in dataclasses.fields(GenerationConfig)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise _fail(source, task, f"unknown generation keys {unknown}; allowed {sorted(allowed)}")
    values = dict(raw)
    if "until" in values:
        until = values["until"]
        values["until"] = (until,) if isinstance(until, str) else tuple(until)
    return GenerationConfig(**values)


def _check_types(d: dict[str, Any], source: str, task: str) -> None:
    for name in _STR_FIELDS:
        if name in d and not isinstance(d[name], str):
            raise _fail(source, task, f"field {name!r} must be a string, got {d[name]!r}")
    for name in _INT_FIELDS:
        value = d.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _fail(source, task, f"field {name!r} must be an integer >= 0, got {value!r}")
    for name in ("rolling_context_len", "repeats"):
        if d.get(name, 1) < 1:
            raise _fail(source, task, f"field {name!r} must be >= 1")


def _check_semantics(cfg: TaskConfig) -> None:
    for name in REQUIRED[cfg.output_type]:
        if getattr(cfg, name) is None:
            raise _fail(cfg.source, cfg.task, f"missing field {name!r} ({cfg.output_type})")
    bad = [m for m in cfg.metrics if m not in METRICS[cfg.output_type]]
    if bad:
        raise _fail(
            cfg.source,
            cfg.task,
            f"metrics {bad} do not apply to {cfg.output_type}; "
            f"choose from {list(METRICS[cfg.output_type])}",
        )
    if cfg.output_type == ROLLING and cfg.num_fewshot:
        raise _fail(cfg.source, cfg.task, "a loglikelihood_rolling task takes no few-shot")
    for name, given in (("filter_list", bool(cfg.filter_list)), ("repeats", cfg.repeats != 1)):
        if given and cfg.output_type != GENERATE:
            raise _fail(cfg.source, cfg.task, f"field {name!r} applies to {GENERATE} only")
    if cfg.repeats > 1 and not cfg.filter_list:
        raise _fail(
            cfg.source, cfg.task, "repeats > 1 needs a filter_list that says how to use them"
        )


def parse_task(d: dict[str, Any], source: str, group: str | None = None) -> TaskConfig:
    """A TaskConfig from one task's mapping; every problem names the file and the field."""
    task = d.get("task")
    if not isinstance(task, str) or not task:
        raise _fail(source, None, "missing field 'task' (the task's name)")
    unknown = sorted(set(d) - set(_FIELDS) - _RAW_FIELDS)
    if unknown:
        allowed = sorted(_FIELDS | _RAW_FIELDS)
        raise _fail(source, task, f"unknown fields {unknown}; allowed {allowed}")
    for name in ("data", "output_type"):
        if name not in d:
            raise _fail(source, task, f"missing field {name!r}")
    if d["output_type"] not in OUTPUT_TYPES:
        allowed = list(OUTPUT_TYPES)
        raise _fail(source, task, f"output_type must be one of {allowed}, got {d['output_type']!r}")
    _check_types(d, source, task)
    special = ("generation", "metrics", "metric_list", "fewshot_config", "filter_list")
    values = {k: v for k, v in d.items() if k not in special}
    metrics, metric_args = _metric_list(d, source, task)
    cfg = TaskConfig(
        **values,
        source=source,
        group=group,
        metrics=tuple(metrics),
        metric_args=metric_args,
        fewshot_sampler=_sampler(d.get("fewshot_config"), source, task),
        filter_list=_filter_list(d.get("filter_list"), source, task),
        generation=_generation(d.get("generation"), source, task),
    )
    _check_semantics(cfg)
    return cfg


def _metric_list(
    d: dict[str, Any], source: str, task: str
) -> tuple[list[str], tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]]:
    """Metric names from ``metrics`` or lm-eval's ``metric_list`` (entries {metric, aggregation,
    higher_is_better, options}); exact_match takes lm-eval's options."""
    if "metrics" in d:
        metrics = d["metrics"]
        return ([metrics] if isinstance(metrics, str) else list(metrics or [])), ()
    entries = d.get("metric_list") or []
    if not isinstance(entries, list):
        raise _fail(source, task, f"field 'metric_list' must be a list, got {entries!r}")
    names, options = [], []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("metric"), str):
            raise _fail(source, task, f"field 'metric_list': {entry!r} names no metric")
        name = entry["metric"]
        extra = {k: v for k, v in entry.items() if k not in ("metric", "aggregation")}
        extra.pop("higher_is_better", None)
        allowed = EXACT_MATCH_OPTIONS if name == "exact_match" else ()
        bad = sorted(set(extra) - set(allowed))
        if bad:
            raise _fail(
                source,
                task,
                f"field 'metric_list': metric {name!r} takes no options {bad}"
                + (f"; allowed {list(allowed)}" if allowed else ""),
            )
        regexes = extra.get("regexes_to_ignore")
        if regexes is not None:
            if not isinstance(regexes, list) or not all(isinstance(r, str) for r in regexes):
                raise _fail(
                    source, task, "field 'metric_list': regexes_to_ignore must be a list of strings"
                )
            extra["regexes_to_ignore"] = tuple(regexes)
        names.append(name)
        if extra:
            options.append((name, tuple(sorted(extra.items()))))
    return names, tuple(options)


def _sampler(raw: Any, source: str, task: str) -> str:
    if raw is None:
        return "default"
    if not isinstance(raw, dict) or set(raw) - {"sampler"}:
        raise _fail(
            source, task, f"field 'fewshot_config' must be a mapping with 'sampler', got {raw!r}"
        )
    sampler = raw.get("sampler", "default")
    if sampler not in SAMPLERS:
        raise _fail(
            source,
            task,
            f"field 'fewshot_config': sampler must be one of {list(SAMPLERS)}, got {sampler!r}",
        )
    return str(sampler)


def _filter_list(raw: Any, source: str, task: str) -> tuple[FilterSpec, ...]:
    """lm-eval's filter_list: [{name, filter: [{function, ...arguments}, ...]}, ...]."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise _fail(source, task, f"field 'filter_list' must be a non-empty list, got {raw!r}")
    specs, names = [], set()
    for entry in raw:
        where = "field 'filter_list'"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise _fail(source, task, f"{where}: {entry!r} has no 'name'")
        name = entry["name"]
        where = f"field 'filter_list' (filter {name})"
        if name in names or "," in name:
            raise _fail(source, task, f"{where}: names must be unique and hold no comma")
        names.add(name)
        steps_raw = entry.get("filter")
        if set(entry) - {"name", "filter"} or not isinstance(steps_raw, list) or not steps_raw:
            raise _fail(source, task, f"{where}: needs 'filter', a list of steps, and no more")
        steps = []
        for raw_step in steps_raw:
            function = raw_step.get("function") if isinstance(raw_step, dict) else None
            if function not in FUNCTIONS:
                raise _fail(
                    source,
                    task,
                    f"{where}: step {raw_step!r}: function must be one of {list(FUNCTIONS)}",
                )
            args = {k: v for k, v in raw_step.items() if k != "function"}
            bad = sorted(set(args) - set(FUNCTIONS[function]))
            if bad:
                raise _fail(
                    source,
                    task,
                    f"{where}: {function} takes {sorted(FUNCTIONS[function])}, not {bad}",
                )
            if function == "take_first_k" and not isinstance(args.get("k"), int):
                raise _fail(source, task, f"{where}: take_first_k needs an integer k")
            if function == "regex":
                try:
                    re.compile(str(args.get("regex_pattern", FUNCTIONS["regex"]["regex_pattern"])))
                except re.error as e:
                    raise _fail(
                        source, task, f"{where}: regex_pattern does not compile: {e}"
                    ) from e
            steps.append(FilterStep(function, tuple(sorted(args.items()))))
        if steps[-1].function != "take_first" or any(
            s.function == "take_first" for s in steps[:-1]
        ):
            raise _fail(source, task, f"{where}: the last step, and only it, must be take_first")
        specs.append(FilterSpec(name, tuple(steps)))
    return tuple(specs)


def parse_file(path: str | Path) -> TaskConfig | TaskGroup:
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {path} not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise TaskError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise TaskError(f"{path}: a task file must hold a mapping, got {type(doc).__name__}")
    if "group" not in doc:
        return parse_task(doc, str(path))
    subtasks, defaults = doc.get("subtasks"), doc.get("defaults") or {}
    where = f"{path} (group {doc['group']})"
    if not isinstance(subtasks, list) or not subtasks:
        raise TaskError(f"{where}: missing field 'subtasks' (a list)")
    unknown = sorted(set(doc) - {"group", "subtasks", "defaults", "aggregate_metric_list"})
    if unknown:
        raise TaskError(f"{where}: unknown fields {unknown}")
    aggregate = _aggregate_metric_list(doc.get("aggregate_metric_list"), where)
    tasks = tuple(
        dataclasses.replace(
            parse_task({**defaults, **sub}, str(path), doc["group"]), group_aggregate=aggregate
        )
        for sub in subtasks
    )
    return TaskGroup(group=str(doc["group"]), tasks=tasks, source=str(path))


def _aggregate_metric_list(raw: Any, where: str) -> tuple[tuple[str, bool], ...]:
    """lm-eval's aggregate_metric_list: [{metric, weight_by_size (default true), aggregation:
    mean}]; absent: every metric, unweighted (this harness's default)."""
    if raw is None:
        return ()
    entries = [raw] if isinstance(raw, dict) else raw
    if not isinstance(entries, list) or not entries:
        raise TaskError(f"{where}: field 'aggregate_metric_list' must be a non-empty list")
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("metric"), str):
            raise TaskError(f"{where}: field 'aggregate_metric_list': {entry!r} names no metric")
        unknown = sorted(set(entry) - {"metric", "weight_by_size", "aggregation", "filter_list"})
        weight = entry.get("weight_by_size", True)
        if unknown or not isinstance(weight, bool) or entry.get("aggregation", "mean") != "mean":
            raise TaskError(
                f"{where}: field 'aggregate_metric_list': {entry!r}: allowed keys metric, "
                "weight_by_size (true or false), aggregation (mean), filter_list"
            )
        out.append((entry["metric"], weight))
    return tuple(out)


def builtin_tasks() -> dict[str, TaskConfig | TaskGroup]:
    """Every built-in task and group by name (a group's subtasks are found by name too)."""
    index: dict[str, TaskConfig | TaskGroup] = {}
    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        parsed = parse_file(path)
        if isinstance(parsed, TaskGroup):
            index[parsed.group] = parsed
            index.update({t.task: t for t in parsed.tasks})
        else:
            index[parsed.task] = parsed
    return index


def resolve_tasks(
    specs: list[str | Path | TaskConfig | TaskGroup],
) -> tuple[list[TaskConfig], dict[str, list[str]]]:
    """Task configs for names of built-in tasks, task-file paths or configs; groups expand to
    their subtasks and are returned as {group: [subtask names]}."""
    index: dict[str, TaskConfig | TaskGroup] | None = None
    tasks: list[TaskConfig] = []
    groups: dict[str, list[str]] = {}
    for spec in specs:
        item: TaskConfig | TaskGroup
        if isinstance(spec, TaskConfig | TaskGroup):
            item = spec
        elif str(spec).endswith((".yaml", ".yml")) or Path(spec).is_file():
            item = parse_file(spec)
        else:
            index = index if index is not None else builtin_tasks()
            if str(spec) not in index:
                raise TaskError(f"unknown task {spec!r}; built-in tasks: {sorted(index)}")
            item = index[str(spec)]
        if isinstance(item, TaskGroup):
            groups[item.group] = [t.task for t in item.tasks]
            tasks.extend(item.tasks)
        else:
            tasks.append(item)
    names = [t.task for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TaskError(f"tasks named more than once: {duplicates}")
    return tasks, groups
