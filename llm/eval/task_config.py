"""Task files: YAML describing a data source, prompt templates, few-shot settings and metrics.

A task file holds one task, or a group (``group:``) of subtasks that share ``defaults``. Field
names follow lm-evaluation-harness (doc_to_text, doc_to_choice, doc_to_target,
target_delimiter, fewshot_delimiter, num_fewshot, output_type), so its task files read alike.
Built-in tasks live in llm/eval/tasks/ and are found by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BUILTIN_DIR = Path(__file__).parent / "tasks"

MULTIPLE_CHOICE = "multiple_choice"
ROLLING = "loglikelihood_rolling"
GENERATE = "generate_until"
OUTPUT_TYPES = (MULTIPLE_CHOICE, ROLLING, GENERATE)
METRICS: dict[str, tuple[str, ...]] = {
    MULTIPLE_CHOICE: ("acc", "acc_norm", "acc_bytes"),
    ROLLING: ("word_perplexity", "byte_perplexity", "bits_per_byte"),
    GENERATE: ("exact_match", "f1", "bleu", "chrf", "rouge_l"),
}
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    MULTIPLE_CHOICE: ("acc", "acc_norm"),
    ROLLING: METRICS[ROLLING],
    GENERATE: ("exact_match",),
}
REQUIRED: dict[str, tuple[str, ...]] = {
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
    group: str | None = None

    def __post_init__(self) -> None:
        if not self.metrics:
            object.__setattr__(self, "metrics", DEFAULT_METRICS.get(self.output_type, ()))

    @property
    def primary_metric(self) -> str:
        """The leaderboard column: acc_norm when computed, else the first metric."""
        return "acc_norm" if "acc_norm" in self.metrics else self.metrics[0]


@dataclass(frozen=True)
class TaskGroup:
    group: str
    tasks: tuple[TaskConfig, ...]
    source: str


# source and group are set by the loader, never by the file
_FIELDS = {f.name for f in dataclasses.fields(TaskConfig)} - {"source", "group"}
_STR_FIELDS = (
    "task",
    "data",
    "doc_to_text",
    "description",
    "split",
    "target_delimiter",
    "fewshot_delimiter",
)
_INT_FIELDS = ("num_fewshot", "fewshot_seed", "rolling_context_len")


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
    if d.get("rolling_context_len", 1) < 1:
        raise _fail(source, task, "field 'rolling_context_len' must be >= 1")


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


def parse_task(d: dict[str, Any], source: str, group: str | None = None) -> TaskConfig:
    """A TaskConfig from one task's mapping; every problem names the file and the field."""
    task = d.get("task")
    if not isinstance(task, str) or not task:
        raise _fail(source, None, "missing field 'task' (the task's name)")
    unknown = sorted(set(d) - set(_FIELDS) - {"metric_list"})
    if unknown:
        raise _fail(source, task, f"unknown fields {unknown}; allowed {sorted(_FIELDS)}")
    for name in ("data", "output_type"):
        if name not in d:
            raise _fail(source, task, f"missing field {name!r}")
    if d["output_type"] not in OUTPUT_TYPES:
        allowed = list(OUTPUT_TYPES)
        raise _fail(source, task, f"output_type must be one of {allowed}, got {d['output_type']!r}")
    _check_types(d, source, task)
    values = {k: v for k, v in d.items() if k not in ("generation", "metrics", "metric_list")}
    metrics = d.get("metrics") or [m["metric"] for m in d.get("metric_list") or []]
    if isinstance(metrics, str):
        metrics = [metrics]
    cfg = TaskConfig(
        **values,
        source=source,
        group=group,
        metrics=tuple(metrics),
        generation=_generation(d.get("generation"), source, task),
    )
    _check_semantics(cfg)
    return cfg


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
    if not isinstance(subtasks, list) or not subtasks:
        raise TaskError(f"{path} (group {doc['group']}): missing field 'subtasks' (a list)")
    tasks = tuple(parse_task({**defaults, **sub}, str(path), doc["group"]) for sub in subtasks)
    return TaskGroup(group=str(doc["group"]), tasks=tasks, source=str(path))


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
