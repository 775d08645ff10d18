"""Preference records (``llm.finetune.preference_records``) -> pairs of tokenized examples
(chosen, rejected) for DPO, split into train and val.

Both examples of a pair share the prompt's tokens, rendered with SFT's templates, and differ in
the response (followed by EOS), the only tokens whose log-probabilities DPO compares: the prompt
is masked as SFT masks it. Earlier assistant turns of a chat prompt are context followed by EOS,
as SFT trains them. A record that cannot be used is counted and kept aside with its reason.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import tokenizers

from llm.finetune.data import DataOptions, Example, TokenizedSet, split_indices
from llm.finetune.preference_records import Preference, parse_preference, preference_field_map
from llm.finetune.records import Chat, Instruction, Rejection, read_json_records
from llm.finetune.templates import Template, chat_template, instruction_template


def prompt_texts(prompt: Instruction | Chat, instruction: Template, chat: Template) -> list[str]:
    """The prompt's text pieces: one per message (assistant context verbatim) or one."""
    if isinstance(prompt, Instruction):
        return [instruction.render({"instruction": prompt.instruction, "input": prompt.input})]
    return [
        m.content if m.role == "assistant" else chat.render({"role": m.role, "content": m.content})
        for m in prompt.messages
    ]


def _pair_examples(
    prompt: Instruction | Chat,
    pieces: list[list[int]],
    chosen: list[int],
    rejected: list[int],
    eos: int,
    max_tokens: int,
) -> tuple[Example, Example]:
    context: list[int] = []
    messages = prompt.messages if isinstance(prompt, Chat) else (None,)
    for message, piece in zip(messages, pieces, strict=True):
        # an earlier assistant turn ends with EOS, as SFT trains it and generation stops
        context.extend([*piece, eos] if message and message.role == "assistant" else piece)

    def example(response: list[int]) -> Example:
        ids = [*context, *response, eos]
        trained = [False] * len(context) + [True] * (len(response) + 1)
        n = min(len(context), max_tokens)
        return Example(ids[:max_tokens], trained[:max_tokens], n, len(ids) > max_tokens)

    return example(chosen), example(rejected)


@dataclass
class PreferenceSet:
    """Pairs as two aligned TokenizedSets: pair i is (chosen[i], rejected[i])."""

    chosen: TokenizedSet
    rejected: TokenizedSet

    def __post_init__(self) -> None:
        if len(self.chosen) != len(self.rejected):
            raise ValueError(f"{len(self.chosen)} chosen for {len(self.rejected)} rejected")

    def __len__(self) -> int:
        return len(self.chosen)

    def subset(self, indices: Iterable[int]) -> PreferenceSet:
        chosen = list(indices)
        return PreferenceSet(self.chosen.subset(chosen), self.rejected.subset(chosen))

    def fingerprint(self) -> str:
        digest = hashlib.blake2b(digest_size=16)
        digest.update(b"dpo")
        for part in (self.chosen, self.rejected):
            digest.update(part.fingerprint().encode())
        return digest.hexdigest()


@dataclass
class PreferenceData:
    train: PreferenceSet
    val: PreferenceSet
    stats: dict[str, Any]
    rejected: list[Rejection] = field(default_factory=list)


def _as_json(p: Preference) -> dict[str, Any]:
    if isinstance(p.prompt, Chat):
        prompt: Any = [{"role": m.role, "content": m.content} for m in p.prompt.messages]
        return {"prompt": prompt, "chosen": p.chosen, "rejected": p.rejected}
    return {
        "prompt": p.prompt.instruction,
        "input": p.prompt.input,
        "chosen": p.chosen,
        "rejected": p.rejected,
    }


def prepare_preferences(
    path: str | Path,
    tok: tokenizers.Tokenizer,
    eos: int,
    *,
    block_size: int,
    options: DataOptions | None = None,
) -> PreferenceData:
    """Read, check, render, tokenize and split a preference file; counts go to stats.

    ``options`` are SFT's (templates, format, field map, max_samples, split), so a DPO run
    formats its prompts exactly as an SFT run on the same templates did.
    """
    opts = options or DataOptions()
    if opts.train_on_prompt:
        raise ValueError("train_on_prompt: DPO compares the responses only")
    templates = (instruction_template(opts.template), chat_template(opts.chat_template))
    fields = preference_field_map(opts.fields)
    parsed: list[tuple[int, Preference, list[str]]] = []
    rejected: list[Rejection] = []
    kinds: Counter[str] = Counter()
    read = 0
    for index, raw in read_json_records(path, opts.max_samples):
        read += 1
        record = parse_preference(index, raw, fields, opts.format)
        if isinstance(record, Rejection):
            rejected.append(record)
            continue
        try:
            texts = prompt_texts(record.prompt, *templates)
        except (jinja2.TemplateError, KeyError, ValueError, TypeError) as e:
            rejected.append(Rejection(index, "template_error", f"template failed: {e}", raw))
            continue
        kinds["chat" if isinstance(record.prompt, Chat) else "instruction"] += 1
        parsed.append((index, record, texts))
    # one encode_batch for the whole file, as SFT's data does
    texts = [t for _, r, prompt in parsed for t in (*prompt, r.chosen, r.rejected)]
    encoded = iter(tok.encode_batch(texts, add_special_tokens=False))
    chosen: list[Example] = []
    rejected_examples: list[Example] = []
    for index, record, prompt in parsed:
        pieces = [next(encoded).ids for _ in prompt]
        good, bad = next(encoded).ids, next(encoded).ids
        pair = _pair_examples(record.prompt, pieces, good, bad, eos, block_size + 1)
        # position 0 is never a target: a response must keep a token after it
        if all(any(e.trained[1:]) for e in pair):
            chosen.append(pair[0])
            rejected_examples.append(pair[1])
            continue
        rejected.append(
            Rejection(
                index,
                "no_response_after_truncation",
                f"the prompt fills all {block_size + 1} tokens the model sees (block_size "
                f"{block_size}), so no response token is left to compare",
                _as_json(record),
            )
        )
    rejected.sort(key=lambda r: r.index)
    everything = PreferenceSet(
        TokenizedSet.from_examples(chosen), TokenizedSet.from_examples(rejected_examples)
    )
    train_idx, val_idx = split_indices(len(everything), opts.val_fraction, opts.seed)
    train, val = everything.subset(train_idx), everything.subset(val_idx)
    stats = {
        "file": str(path),
        "records": read,
        "kept": len(everything),
        "rejected": len(rejected),
        "rejected_by_reason": dict(Counter(r.reason for r in rejected)),
        "truncated": sum(e.truncated for e in (*chosen, *rejected_examples)),
        "by_format": dict(kinds),
        "train_pairs": len(train),
        "val_pairs": len(val),
        "train_tokens": int(train.chosen.tokens.size + train.rejected.tokens.size),
        "max_samples": opts.max_samples,
    }
    return PreferenceData(train=train, val=val, stats=stats, rejected=rejected)
