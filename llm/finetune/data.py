"""Instruction records -> token ids with a per-token "trained" mask, split into train and val.

Each record is rendered into segments: prompt text (not trained on, unless train_on_prompt) and
response text followed by EOS (trained on). Segments are tokenized separately, so the prompt's
tokens are exactly those a user's prompt gets at generation time and the mask falls on a token
boundary. A sequence longer than block_size + 1 tokens (the model sees block_size inputs and
predicts the next token of each) is cut at the end; if no trained token survives the cut, the
record is rejected rather than trained on as pure prompt.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import tokenizers

from llm.finetune.records import (
    Chat,
    Instruction,
    Record,
    Rejection,
    field_map,
    parse_record,
    read_json_records,
)
from llm.finetune.templates import Template, chat_template, instruction_template

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index, which llm.model's loss uses


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


def render(record: Record, prompt: Template, chat: Template) -> list[Segment]:
    """The record as prompt and response segments; assistant / output text is used verbatim."""
    if isinstance(record, Instruction):
        text = prompt.render({"instruction": record.instruction, "input": record.input})
        return [Segment(text, False), Segment(record.output, True)]
    segments = []
    for message in record.messages:
        if message.role == "assistant":
            segments.append(Segment(message.content, True))
        else:
            segments.append(
                Segment(chat.render({"role": message.role, "content": message.content}), False)
            )
    return segments


@dataclass(frozen=True)
class Example:
    ids: list[int]
    trained: list[bool]  # per token: is it a target of the loss
    prompt_len: int  # tokens before the last response: what a sample completion is given
    truncated: bool

    @property
    def labels(self) -> list[int]:
        """Hugging Face style, aligned with ids: the token where trained, else IGNORE_INDEX."""
        return [t if keep else IGNORE_INDEX for t, keep in zip(self.ids, self.trained, strict=True)]


def assemble(
    segments: list[Segment],
    pieces: Sequence[Sequence[int]],
    eos: int,
    *,
    max_tokens: int,
    train_on_prompt: bool = False,
) -> Example:
    """Each segment's token ids (EOS after every response) and their mask, cut to max_tokens."""
    ids: list[int] = []
    trained: list[bool] = []
    prompt_len = 0
    for segment, piece in zip(segments, pieces, strict=True):
        if segment.trained:
            prompt_len = len(ids)
        piece = [*piece, eos] if segment.trained else list(piece)
        ids.extend(piece)
        trained.extend([segment.trained or train_on_prompt] * len(piece))
    truncated = len(ids) > max_tokens
    return Example(ids[:max_tokens], trained[:max_tokens], min(prompt_len, max_tokens), truncated)


def tokenize_segments(
    tok: tokenizers.Tokenizer,
    segments: list[Segment],
    eos: int,
    *,
    max_tokens: int,
    train_on_prompt: bool = False,
) -> Example:
    """One record's segments, tokenized each on its own (no special tokens added)."""
    pieces = [tok.encode(s.text, add_special_tokens=False).ids for s in segments]
    return assemble(segments, pieces, eos, max_tokens=max_tokens, train_on_prompt=train_on_prompt)


@dataclass
class TokenizedSet:
    """Examples as three flat arrays, cheap to ship to Ray workers and to slice."""

    tokens: np.ndarray  # int32, every example's ids back to back
    trained: np.ndarray  # bool, aligned with tokens
    offsets: np.ndarray  # int64, example i is tokens[offsets[i]:offsets[i + 1]]
    prompt_lens: np.ndarray  # int64

    @classmethod
    def from_examples(cls, examples: list[Example]) -> TokenizedSet:
        lengths = [len(e.ids) for e in examples]
        return cls(
            tokens=np.array([t for e in examples for t in e.ids], dtype=np.int32),
            trained=np.array([m for e in examples for m in e.trained], dtype=bool),
            offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64),
            prompt_lens=np.array([e.prompt_len for e in examples], dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.offsets[i], self.offsets[i + 1]
        return self.tokens[start:end], self.trained[start:end]

    def subset(self, indices: Iterable[int]) -> TokenizedSet:
        chosen = np.asarray(list(indices), dtype=np.int64)
        rows = [self[int(i)] for i in chosen]
        prompt_lens = self.prompt_lens[chosen]
        lengths = [len(ids) for ids, _ in rows]
        return TokenizedSet(
            tokens=np.concatenate([ids for ids, _ in rows] or [np.zeros(0, np.int32)]),
            trained=np.concatenate([m for _, m in rows] or [np.zeros(0, bool)]),
            offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64),
            prompt_lens=prompt_lens,
        )

    def prompt(self, i: int) -> list[int]:
        ids, _ = self[i]
        return [int(t) for t in ids[: self.prompt_lens[i]]]

    def response(self, i: int) -> list[int]:
        ids, _ = self[i]
        return [int(t) for t in ids[self.prompt_lens[i] :]]

    def target_tokens(self) -> int:
        """Tokens the loss is on: trained ones, less each example's first (never a target)."""
        if len(self) == 0:
            return 0
        return int(self.trained.sum()) - int(self.trained[self.offsets[:-1]].sum())

    def fingerprint(self) -> str:
        """Changes with any token, mask bit or boundary: a resume must see the same data."""
        digest = hashlib.blake2b(digest_size=16)
        for array in (self.tokens, self.trained, self.offsets):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation's first round(n * val_fraction) items (at least one when
    val_fraction > 0 and n > 1) are val; the rest, in file order, train."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = 0 if val_fraction == 0 or n < 2 else max(1, round(n * val_fraction))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@dataclass
class SFTData:
    train: TokenizedSet
    val: TokenizedSet
    stats: dict[str, Any]
    rejected: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True)
class DataOptions:
    template: str = "alpaca"  # built-in name, Jinja2 or format string (llm.finetune.templates)
    chat_template: str = "alpaca"
    fields: Mapping[str, str] | None = None  # canonical field -> the file's key
    format: str = "auto"  # "auto", "instruction" or "chat"
    train_on_prompt: bool = False
    max_samples: int | None = None  # read only the first N records
    val_fraction: float = 0.05
    seed: int = 0


@dataclass(frozen=True)
class _Rendered:
    index: int
    record: Record
    segments: list[Segment]


def _render_all(
    path: str | Path, opts: DataOptions
) -> tuple[list[_Rendered], list[Rejection], Counter[str], int]:
    """Every record read, as rendered segments or a Rejection; the formats seen; the count."""
    templates = (instruction_template(opts.template), chat_template(opts.chat_template))
    fields = field_map(opts.fields)
    rendered: list[_Rendered] = []
    rejected: list[Rejection] = []
    kinds: Counter[str] = Counter()
    read = 0
    for index, raw in read_json_records(path, opts.max_samples):
        read += 1
        record = parse_record(index, raw, fields, opts.format)
        if isinstance(record, Rejection):
            rejected.append(record)
            continue
        kinds["chat" if isinstance(record, Chat) else "instruction"] += 1
        try:
            rendered.append(_Rendered(index, record, render(record, *templates)))
        except (jinja2.TemplateError, KeyError, ValueError, TypeError) as e:
            rejected.append(Rejection(index, "template_error", f"template failed: {e}", raw))
    return rendered, rejected, kinds, read


def _tokenize_all(
    rendered: list[_Rendered],
    tok: tokenizers.Tokenizer,
    eos: int,
    block_size: int,
    train_on_prompt: bool,
) -> tuple[list[Example], list[Rejection]]:
    # one encode_batch for the whole file: the Rust side parallelises it, and a call per
    # record costs more in thread hand-offs than in encoding
    texts = [s.text for r in rendered for s in r.segments]
    encoded = iter(tok.encode_batch(texts, add_special_tokens=False))
    examples: list[Example] = []
    rejected: list[Rejection] = []
    for r in rendered:
        pieces = [next(encoded).ids for _ in r.segments]
        example = assemble(
            r.segments, pieces, eos, max_tokens=block_size + 1, train_on_prompt=train_on_prompt
        )
        # position 0 is never a target (the model predicts token t+1 from tokens <= t)
        if any(example.trained[1:]):
            examples.append(example)
            continue
        rejected.append(
            Rejection(
                r.index,
                "no_response_after_truncation",
                f"the prompt fills all {block_size + 1} tokens the model sees (block_size "
                f"{block_size}), so no response token is left to learn from",
                _as_json(r.record),
            )
        )
    return examples, rejected


def _as_json(record: Record) -> dict[str, Any]:
    if isinstance(record, Chat):
        return {"messages": [{"role": m.role, "content": m.content} for m in record.messages]}
    return {"instruction": record.instruction, "input": record.input, "output": record.output}


def prepare(
    path: str | Path,
    tok: tokenizers.Tokenizer,
    eos: int,
    *,
    block_size: int,
    options: DataOptions | None = None,
) -> SFTData:
    """Read, check, render, tokenize and split an instruction file; counts go to stats."""
    opts = options or DataOptions()
    rendered, rejected, kinds, read = _render_all(path, opts)
    examples, too_long = _tokenize_all(rendered, tok, eos, block_size, opts.train_on_prompt)
    rejected = sorted(rejected + too_long, key=lambda r: r.index)
    train_idx, val_idx = split_indices(len(examples), opts.val_fraction, opts.seed)
    everything = TokenizedSet.from_examples(examples)
    train, val = everything.subset(train_idx), everything.subset(val_idx)
    stats = {
        "file": str(path),
        "records": read,
        "kept": len(examples),
        "rejected": len(rejected),
        "rejected_by_reason": dict(Counter(r.reason for r in rejected)),
        "truncated": sum(e.truncated for e in examples),
        "by_format": dict(kinds),
        "train_examples": len(train),
        "val_examples": len(val),
        "train_tokens": int(train.tokens.size),
        "train_target_tokens": train.target_tokens(),
        "max_samples": opts.max_samples,
        "train_on_prompt": opts.train_on_prompt,
    }
    return SFTData(train=train, val=val, stats=stats, rejected=rejected)
