"""A task's items: records rendered through its templates, with few-shot examples prepended.

Prompts are assembled as lm-evaluation-harness assembles them: the description (a template
rendered with the item), then per example ``text + target_delimiter + answer +
fewshot_delimiter``, then the item's text; each choice is scored as the continuation
``target_delimiter + choice``, a loglikelihood item's target as it is. When a multiple-choice
doc_to_text gives an integer (WinoGrande), each choice is a context of its own after the same
prefix, the integer is the correct one and every context is scored with the shared
continuation ``target_delimiter + doc_to_target``; a few-shot example then shows its correct
context.

Few-shot examples come from the few-shot split, or else from the task's other items, never the
item itself (nor a record equal to it). ``fewshot_config: {sampler: first_n}`` takes the first
n in order (lm-eval's FirstNSampler, MMLU's). Otherwise they are drawn with ``random.Random``
like lm-eval's sampler, but seeded per item (seed and row), not from one stream in document
order: an item's examples then do not depend on which items ran before it, so a shard of the
items gets exactly the prompts the whole run would.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2

from llm.eval.data import Malformed, Record, Records, read_records, resolve
from llm.eval.task_config import (
    GENERATE,
    LOGLIKELIHOOD,
    MULTIPLE_CHOICE,
    ROLLING,
    TaskConfig,
    TaskError,
)
from llm.eval.templates import referenced_columns, render_text, render_value

TEMPLATE_FIELDS = ("doc_to_text", "doc_to_choice", "doc_to_target", "doc_to_count", "description")


class RowError(ValueError):
    """One record cannot be rendered; it is counted as malformed, the run goes on."""


@dataclass(frozen=True)
class Item:
    """One evaluation item, ready for the model."""

    task: str
    row: int
    line: int
    file: str
    context: str = ""  # the prompt (multiple choice, generation, loglikelihood)
    choices: tuple[str, ...] = ()
    gold: tuple[int, ...] = ()  # indices of the correct choices
    # generation targets; loglikelihood: the continuation; multiple contexts: the shared one
    references: tuple[str, ...] = ()
    # multiple choice with one context per choice (WinoGrande): the contexts, choices in order
    contexts: tuple[str, ...] = ()
    text: str = ""  # perplexity: the scored text
    words: int = 0
    n_bytes: int = 0


@dataclass(frozen=True)
class _Pieces:
    """A record rendered without few-shot: what an item and a few-shot example are made of."""

    text: str
    choices: tuple[str, ...] = ()
    gold: tuple[int, ...] = ()
    references: tuple[str, ...] = ()
    counted: str = ""  # perplexity: the text whose words and bytes are counted
    # multiple choice whose choices are contexts and whose target is the shared continuation
    multi_input: bool = False

    def question(self) -> str:
        """The prompt of a few-shot example: a multiple-input item's correct context."""
        return self.choices[self.gold[0]] if self.multi_input else self.text

    def answer(self) -> str:
        if self.choices and not self.multi_input:
            return self.choices[self.gold[0]]
        return self.references[0]


def _gold_indices(target: Any, choices: tuple[str, ...]) -> tuple[int, ...]:
    targets = target if isinstance(target, list) else [target]
    gold = []
    for t in targets:
        if isinstance(t, str) and t in choices:
            gold.append(choices.index(t))
        elif isinstance(t, int) and not isinstance(t, bool) and 0 <= t < len(choices):
            gold.append(t)
        else:
            raise RowError(f"target {t!r} is not a choice index (0..{len(choices) - 1}) or choice")
    if not gold:
        raise RowError("target is an empty list")
    return tuple(gold)


def _choice_text(spec: str, data: dict[str, Any]) -> str | int:
    """lm-eval's doc_to_text when the task has choices: a column's value as it is, or the
    rendered template, an integer when it is all digits (then the item has one context per
    choice and the integer is the correct one)."""
    if spec in data:
        value = data[spec]
        return value if isinstance(value, int) and not isinstance(value, bool) else str(value)
    text = render_text(spec, data)
    return int(text) if text.isdigit() else text


def _render_multiple_choice(cfg: TaskConfig, data: dict[str, Any]) -> _Pieces:
    choices = render_value(cfg.doc_to_choice, data, digits_as_index=False)
    if not isinstance(choices, list | tuple) or not choices:
        raise RowError(f"doc_to_choice gave {type(choices).__name__}, not a non-empty list")
    if not all(isinstance(c, str) for c in choices):
        raise RowError("doc_to_choice gave a list with non-string entries")
    text = _choice_text(cfg.doc_to_text, data)
    target = render_value(cfg.doc_to_target, data, digits_as_index=True)
    if isinstance(text, str):
        return _Pieces(text, tuple(choices), _gold_indices(target, tuple(choices)))
    # WinoGrande: the choices are the contexts, doc_to_text the correct one's index and
    # doc_to_target the continuation they share
    if not 0 <= text < len(choices):
        raise RowError(f"doc_to_text gave {text}, not a choice index (0..{len(choices) - 1})")
    if not isinstance(target, str):
        raise RowError(
            f"doc_to_target gave {target!r}; with one context per choice it must be the "
            "shared continuation (a string)"
        )
    return _Pieces("", tuple(choices), (text,), references=(target,), multi_input=True)


def _render(cfg: TaskConfig, data: dict[str, Any]) -> _Pieces:
    if cfg.output_type == MULTIPLE_CHOICE:
        return _render_multiple_choice(cfg, data)
    text = render_text(cfg.doc_to_text, data)
    target = render_value(cfg.doc_to_target, data, digits_as_index=False)
    if cfg.output_type == LOGLIKELIHOOD:
        if not isinstance(target, str | int | float) or isinstance(target, bool):
            raise RowError(f"doc_to_target gave {target!r}, not one continuation (a string)")
        return _Pieces(text, references=(str(target),))
    refs = target if isinstance(target, list) else [target]
    if not refs or not all(isinstance(r, str | int | float) for r in refs):
        raise RowError(f"doc_to_target gave {target!r}, not a string or a list of strings")
    references = tuple(str(r) for r in refs)
    if cfg.output_type != ROLLING:
        return _Pieces(text, references=references)
    counted = render_text(cfg.doc_to_count, data) if cfg.doc_to_count else references[0]
    return _Pieces(text, references=references, counted=counted)


def _render_record(cfg: TaskConfig, record: Record) -> _Pieces:
    try:
        return _render(cfg, record.data)
    except RowError:
        raise
    except (jinja2.TemplateError, KeyError, TypeError, ValueError, IndexError) as e:
        raise RowError(f"{type(e).__name__}: {e}") from e


@dataclass
class LoadedTask:
    """A task with its records read; items are rendered on demand and cached."""

    config: TaskConfig
    records: Records
    fewshot_records: Records | None = None
    _pieces: dict[tuple[bool, int], _Pieces | RowError] = field(default_factory=dict)
    _pool_cache: list[tuple[Record, _Pieces]] | None = None

    @classmethod
    def load(cls, config: TaskConfig, data_root: str | Path | None = None) -> LoadedTask:
        path = resolve(config.data, task_file=config.source, data_root=data_root)
        records = read_records(path, config.data_format, config.document_start)
        if not records.good:
            first = records.malformed[0] if records.malformed else None
            detail = f"; first: line {first.line}: {first.reason}" if first else ""
            raise TaskError(
                f"{config.source} (task {config.task}): {path} has no usable records "
                f"({len(records.malformed)} malformed{detail})"
            )
        fewshot = None
        if config.fewshot_data:
            fs_path = resolve(config.fewshot_data, task_file=config.source, data_root=data_root)
            fewshot = read_records(fs_path, config.data_format, config.document_start)
        task = cls(config, records, fewshot)
        task._check_columns(records.good[0])
        return task

    def _check_columns(self, first: Record) -> None:
        """A template that names a column the data does not have is the task file's fault."""
        for name in TEMPLATE_FIELDS:
            spec = getattr(self.config, name)
            if not isinstance(spec, str) or spec in first.data:
                continue
            try:
                missing = sorted(referenced_columns(spec) - set(first.data))
            except jinja2.TemplateSyntaxError as e:
                raise TaskError(
                    f"{self.config.source} (task {self.config.task}): field {name!r} is not a "
                    f"valid Jinja2 template: {e}"
                ) from e
            if missing:
                raise TaskError(
                    f"{self.config.source} (task {self.config.task}): field {name!r} references "
                    f"unknown column(s) {missing} (item row {first.row}, {first.file} line "
                    f"{first.line}; columns: {sorted(first.data)})"
                )

    def _pieces_of(self, record: Record, fewshot_split: bool) -> _Pieces:
        key = (fewshot_split, record.row)
        if key not in self._pieces:
            try:
                self._pieces[key] = _render_record(self.config, record)
            except RowError as e:
                self._pieces[key] = e
        found = self._pieces[key]
        if isinstance(found, RowError):
            raise found
        return found

    def _pool(self) -> list[tuple[Record, _Pieces]]:
        """Few-shot candidates: the few-shot split, else the task's own records that render."""
        if self._pool_cache is None:
            source = self.fewshot_records or self.records
            split = self.fewshot_records is not None
            self._pool_cache = []
            for record in source.good:
                try:
                    self._pool_cache.append((record, self._pieces_of(record, split)))
                except RowError:
                    continue  # no example; as an eval row it is reported malformed
        return self._pool_cache

    def fewshot_pool_size(self) -> int:
        return len(self._pool())

    def sample_fewshot(self, record: Record, n: int) -> list[_Pieces]:
        """n examples for record, the same for the same (fewshot_seed, row)."""
        if n == 0:
            return []
        pool = self._pool()
        if self.config.fewshot_sampler == "first_n":
            # lm-eval's FirstNSampler: the first n of the split, in order (without the item)
            if self.fewshot_records is None:
                pool = [(r, p) for r, p in pool if r.row != record.row and r.data != record.data]
            return [p for _, p in pool[: self._check_enough(n, len(pool), record)]]
        rnd = random.Random(f"{self.config.fewshot_seed}/{record.row}")
        if self.fewshot_records is not None:
            return [p for _, p in rnd.sample(pool, self._check_enough(n, len(pool), record))]

        # lm-eval's way: draw n + 1, drop the item itself (and here any duplicate of it, which
        # would leak the answer); only if too few remain, draw from the pool without them
        def other(r: Record) -> bool:
            return r.row != record.row and r.data != record.data

        drawn = [(r, p) for r, p in rnd.sample(pool, min(n + 1, len(pool))) if other(r)]
        if len(drawn) < n:
            candidates = [(r, p) for r, p in pool if other(r)]
            drawn = rnd.sample(candidates, self._check_enough(n, len(candidates), record))
        return [p for _, p in drawn[:n]]

    def _check_enough(self, n: int, available: int, record: Record) -> int:
        if available < n:
            raise TaskError(
                f"{self.config.source} (task {self.config.task}): {n} few-shot examples asked, "
                f"only {available} available for row {record.row}"
            )
        return n

    def prefix(self, record: Record, num_fewshot: int) -> str:
        """The description (a template, rendered with the item's record) and the few-shot
        examples, each ``question + target_delimiter + answer + fewshot_delimiter``."""
        cfg = self.config
        try:
            parts = [render_text(cfg.description, record.data)] if cfg.description else []
        except (jinja2.TemplateError, KeyError, TypeError, ValueError, IndexError) as e:
            raise RowError(f"description: {type(e).__name__}: {e}") from e
        for example in self.sample_fewshot(record, num_fewshot):
            parts.append(
                example.question() + cfg.target_delimiter + example.answer() + cfg.fewshot_delimiter
            )
        return "".join(parts)

    def context(self, record: Record, pieces: _Pieces, num_fewshot: int) -> str:
        return self.prefix(record, num_fewshot) + pieces.text

    def continuations(self, item: Item) -> list[str]:
        """Multiple choice: one continuation per choice; with one context per choice, the
        shared continuation after each (lm-eval's multiple_input)."""
        if item.contexts:
            return [self.config.target_delimiter + item.references[0]] * len(item.contexts)
        return [self.config.target_delimiter + c for c in item.choices]

    def request_contexts(self, item: Item) -> list[str]:
        """The context of each choice's request."""
        return list(item.contexts) if item.contexts else [item.context] * len(item.choices)

    def _item(self, record: Record, num_fewshot: int) -> Item:
        cfg = self.config
        pieces = self._pieces_of(record, False)
        item = Item(task=cfg.task, row=record.row, line=record.line, file=record.file)
        if cfg.output_type == ROLLING:
            counted = pieces.counted
            words = len(re.split(r"\s+", counted))  # lm-eval's count_words
            n_bytes = len(counted.encode())
            return replace(item, text=pieces.references[0], words=words, n_bytes=n_bytes)
        if pieces.multi_input:
            prefix = self.prefix(record, num_fewshot)
            contexts = tuple(prefix + c for c in pieces.choices)
            return replace(
                item,
                contexts=contexts,
                choices=pieces.choices,
                gold=pieces.gold,
                references=pieces.references,
            )
        context = self.context(record, pieces, num_fewshot)
        if cfg.output_type in (GENERATE, LOGLIKELIHOOD):
            return replace(item, context=context, references=pieces.references)
        return replace(item, context=context, choices=pieces.choices, gold=pieces.gold)

    def items(
        self, *, num_fewshot: int | None = None, limit: int | None = None, rows: slice | None = None
    ) -> tuple[list[Item], list[Malformed]]:
        """The items of the first `limit` records, then the `rows` slice of those (a shard);
        malformed records in that range are returned beside them, with line and reason."""
        shots = self.config.num_fewshot if num_fewshot is None else num_fewshot
        if shots and self.config.output_type == ROLLING:
            raise TaskError(f"{self.config.source}: {self.config.task} takes no few-shot")
        everything: list[Record | Malformed] = sorted(
            [*self.records.good, *self.records.malformed], key=lambda r: r.row
        )
        chosen = everything[:limit][rows or slice(None)]
        items, malformed = [], []
        for entry in chosen:
            if isinstance(entry, Malformed):
                malformed.append(entry)
                continue
            try:
                items.append(self._item(entry, shots))
            except RowError as e:
                malformed.append(Malformed(entry.row, entry.line, entry.file, str(e)))
        return items, malformed
