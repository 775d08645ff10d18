"""Labelled records -> token ids and label ids, split into train and val.

A record is a JSON object (one per JSONL line, or the items of a JSON array) with a text field,
optionally a second text (a pair, for tasks such as entailment or judging a response to a
prompt) and a label field: a string, or an integer taken as its decimal string. Labels become
ids in the order given, or, by default, in sorted order of the labels found (integers in
numeric order); the mapping is saved with the checkpoint. A record that cannot be used is a
Rejection with a reason code, counted and written aside by the caller, never dropped silently.

A sequence is ``[BOS] text [EOS text_pair] EOS``: BOS only where the tokenizer has one, and
the closing EOS gives a decoder's last-token pooling the same end marker on every example.
A sequence longer than the model's block_size is cut, the longer text first (Hugging Face's
"longest_first"), and counted as truncated.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from llm.finetune.data import split_indices
from llm.finetune.records import Rejection, read_json_records
from llm.tokenizer.bpe import BOS_TOKEN, PAD_TOKEN, eos_id


@dataclass(frozen=True)
class LabelOptions:
    text_field: str = "text"
    text_pair_field: str | None = None  # a second text per record, or none
    label_field: str = "label"
    labels: tuple[str, ...] | None = None  # the label names in id order; None: sorted as found
    max_samples: int | None = None  # read only the first N records
    val_fraction: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class Labelled:
    index: int
    text: str
    pair: str | None
    label: str


class _Bad(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _text(record: dict[str, Any], key: str, what: str) -> str:
    if record.get(key) is None:
        raise _Bad(f"missing_{what}", f"missing field {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise _Bad("wrong_type", f"field {key!r} is {type(value).__name__}, expected a string")
    if not value.strip():
        raise _Bad(f"empty_{what}", f"field {key!r} is empty")
    return value


def _label(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if value is None:
        raise _Bad("missing_label", f"missing field {key!r}")
    # bool is an int subclass, but true/false labels are more likely a mistake than classes
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        found = type(value).__name__
        raise _Bad("wrong_type", f"label field {key!r} is {found}, expected a string or integer")
    if not value.strip():
        raise _Bad("empty_label", f"label field {key!r} is empty")
    return value


def parse_labelled(index: int, raw: Any, opts: LabelOptions) -> Labelled | Rejection:
    """One raw record as a Labelled example, or the Rejection saying why not."""
    if isinstance(raw, Rejection):
        return raw
    try:
        if not isinstance(raw, dict):
            raise _Bad("wrong_type", f"record is {type(raw).__name__}, expected an object")
        text = _text(raw, opts.text_field, "text")
        pair = None
        if opts.text_pair_field is not None:
            pair = _text(raw, opts.text_pair_field, "text_pair")
        label = _label(raw, opts.label_field)
    except _Bad as e:
        return Rejection(index, e.reason, e.detail, raw)
    if opts.labels is not None and label not in opts.labels:
        detail = f"label {label!r} is not one of the labels {list(opts.labels)}"
        return Rejection(index, "unknown_label", detail, raw)
    return Labelled(index, text, pair, label)


def label_order(found: Sequence[str]) -> tuple[str, ...]:
    """The distinct labels, integers in numeric order, then the rest in string order."""

    def key(label: str) -> tuple[int, int, str]:
        is_int = label.lstrip("-").isdecimal()
        return (0, int(label), "") if is_int else (1, 0, label)

    return tuple(sorted(set(found), key=key))


def pad_id(tok: tokenizers.Tokenizer) -> int:
    """The tokenizer's pad token, else EOS: padding is masked, so any id would do."""
    pad = tok.token_to_id(PAD_TOKEN)
    return pad if pad is not None else eos_id(tok)


def fit_pair(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int], list[int] | None]:
    """Cut a and b to budget tokens together, the longer one first."""
    if b is None:
        return a[:budget], None
    if len(a) + len(b) <= budget:
        return a, b
    keep_short = min(len(a), len(b), budget // 2)
    keep_long = budget - keep_short
    if len(a) >= len(b):
        return a[:keep_long], b[:keep_short]
    return a[:keep_short], b[:keep_long]


def assemble(
    text: list[int], pair: list[int] | None, tok: tokenizers.Tokenizer, block_size: int
) -> tuple[list[int], bool]:
    """The sequence ``[BOS] text [EOS pair] EOS`` within block_size, and whether it was cut."""
    eos, bos = eos_id(tok), tok.token_to_id(BOS_TOKEN)
    head = [] if bos is None else [bos]
    specials = len(head) + 1 + (0 if pair is None else 1)
    if block_size <= specials + (0 if pair is None else 1):
        raise ValueError(f"block_size {block_size} leaves no room for text")
    cut_text, cut_pair = fit_pair(text, pair, block_size - specials)
    ids = [*head, *cut_text]
    if cut_pair is not None:
        ids += [eos, *cut_pair]
    truncated = len(cut_text) < len(text) or (pair is not None and len(cut_pair or []) < len(pair))
    return [*ids, eos], truncated


def encode_texts(
    tok: tokenizers.Tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    block_size: int,
) -> list[tuple[list[int], bool]]:
    """Each text (and its pair) as a classifier's input ids, and whether it was cut."""
    # one encode_batch per column: the Rust side parallelises it
    first = [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]
    second: list[list[int] | None] = [None] * len(first)
    if pairs is not None:
        second = [e.ids for e in tok.encode_batch(list(pairs), add_special_tokens=False)]
    return [assemble(a, b, tok, block_size) for a, b in zip(first, second, strict=True)]


@dataclass
class LabelledSet:
    """Examples as flat arrays, cheap to ship to Ray workers and to slice."""

    tokens: np.ndarray  # int32, every example's ids back to back
    offsets: np.ndarray  # int64, example i is tokens[offsets[i]:offsets[i + 1]]
    labels: np.ndarray  # int64 label ids

    @classmethod
    def build(cls, rows: Sequence[list[int]], labels: Sequence[int]) -> LabelledSet:
        lengths = [len(r) for r in rows]
        return cls(
            tokens=np.array([t for r in rows for t in r], dtype=np.int32),
            offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64),
            labels=np.asarray(labels, dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]], int(self.labels[i])

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelledSet:
        rows = [[int(t) for t in self[int(i)][0]] for i in indices]
        return LabelledSet.build(rows, [int(self.labels[int(i)]) for i in indices])

    def fingerprint(self) -> str:
        """Changes with any token, label or boundary: a resume must see the same data."""
        digest = hashlib.blake2b(digest_size=16)
        for array in (self.tokens, self.offsets, self.labels):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


@dataclass
class ClassifyData:
    train: LabelledSet
    val: LabelledSet
    labels: tuple[str, ...]  # label names, by id
    stats: dict[str, Any]
    rejected: list[Rejection] = field(default_factory=list)


def prepare_labelled(
    path: str | Path,
    tok: tokenizers.Tokenizer,
    *,
    block_size: int,
    options: LabelOptions | None = None,
) -> ClassifyData:
    """Read, check, tokenize and split a labelled file; counts go to stats. Fewer than two
    labels is not an error here, so that the caller can still write the rejected records
    aside; a classifier refuses it."""
    opts = options or LabelOptions()
    kept: list[Labelled] = []
    rejected: list[Rejection] = []
    read = 0
    for index, raw in read_json_records(path, opts.max_samples):
        read += 1
        parsed = parse_labelled(index, raw, opts)
        if isinstance(parsed, Rejection):
            rejected.append(parsed)
        else:
            kept.append(parsed)
    labels = opts.labels if opts.labels is not None else label_order([r.label for r in kept])
    pairs = [r.pair or "" for r in kept] if opts.text_pair_field is not None else None
    encoded = encode_texts(tok, [r.text for r in kept], pairs, block_size)
    ids = {name: i for i, name in enumerate(labels)}
    everything = LabelledSet.build([e for e, _ in encoded], [ids[r.label] for r in kept])
    train_idx, val_idx = split_indices(len(kept), opts.val_fraction, opts.seed)
    train, val = everything.subset(train_idx), everything.subset(val_idx)
    counts = np.bincount(everything.labels, minlength=len(labels))
    stats = {
        "file": str(path),
        "records": read,
        "kept": len(kept),
        "rejected": len(rejected),
        "rejected_by_reason": dict(Counter(r.reason for r in rejected)),
        "truncated": sum(cut for _, cut in encoded),
        "labels": list(labels),
        "by_label": dict(zip(labels, counts.tolist(), strict=True)),
        "train_examples": len(train),
        "val_examples": len(val),
        "train_tokens": int(train.tokens.size),
        "max_samples": opts.max_samples,
    }
    return ClassifyData(train=train, val=val, labels=labels, stats=stats, rejected=rejected)
