"""Scoring one task's items by output type, adding to the task's metric statistics.

Each function returns one record per scored item (the optional per-item log); items that
cannot be scored (a continuation that encodes to no tokens) are added to `malformed` with the
reason, and the run goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llm.eval.data import Malformed
from llm.eval.generation import generate_until
from llm.eval.judge import Judge
from llm.eval.lm import EvalModel
from llm.eval.loglik import Request, encode_or_explain, loglikelihood_rolling
from llm.eval.metrics import (
    SACREBLEU_METRICS,
    add_counts,
    add_mean,
    add_ratio,
    exact_match,
    multiple_choice,
    rouge_l,
    sacrebleu_counts,
    token_f1,
)
from llm.eval.scoring import TokenRequest, score_tokens
from llm.eval.task import Item, LoadedTask

Stats = dict[str, dict[str, Any]]


def run_multiple_choice(
    lm: EvalModel,
    task: LoadedTask,
    items: Sequence[Item],
    stats: Stats,
    malformed: list[Malformed],
    batch_size: int,
    share_prefix: bool,
) -> list[dict[str, Any]]:
    requests = [
        Request(item.context, cont, f"{item.task} row {item.row} choice {j}")
        for item in items
        for j, cont in enumerate(task.continuations(item))
    ]
    encoded = encode_or_explain(lm, requests)
    usable: list[Item] = []
    tokens: list[TokenRequest] = []
    position = 0
    for item in items:
        mine = encoded[position : position + len(item.choices)]
        position += len(item.choices)
        problems = [e for e in mine if isinstance(e, ValueError)]
        if problems:
            malformed.append(Malformed(item.row, item.line, item.file, str(problems[0])))
            continue
        usable.append(item)
        tokens.extend(e for e in mine if isinstance(e, TokenRequest))
    scores = iter(score_tokens(lm, tokens, batch_size=batch_size, share_prefix=share_prefix))
    samples = []
    for item in usable:
        got = [next(scores) for _ in item.choices]
        lls = [s.logprob for s in got]
        outcome = multiple_choice(lls, item.choices, item.gold)
        for name in stats:
            if name in outcome:
                add_mean(stats[name], outcome[name])
        add_mean(stats["random_baseline"], 1.0 / len(item.choices))
        samples.append(
            {
                "row": item.row,
                "line": item.line,
                "context": item.context,
                "choices": list(item.choices),
                "gold": list(item.gold),
                "loglikelihoods": lls,
                "is_greedy": [s.is_greedy for s in got],
                **outcome,
            }
        )
    return samples


def run_rolling(
    lm: EvalModel, task: LoadedTask, items: Sequence[Item], stats: Stats, batch_size: int
) -> list[dict[str, Any]]:
    totals = loglikelihood_rolling(
        lm,
        [item.text for item in items],
        batch_size=batch_size,
        context_len=task.config.rolling_context_len,
    )
    samples = []
    for item, ll in zip(items, totals, strict=True):
        units = {"word_perplexity": item.words, "byte_perplexity": item.n_bytes}
        units["bits_per_byte"] = item.n_bytes
        for name, stat in stats.items():
            add_ratio(stat, ll, units[name])
        samples.append(
            {
                "row": item.row,
                "line": item.line,
                "loglikelihood": ll,
                "words": item.words,
                "bytes": item.n_bytes,
            }
        )
    return samples


def run_generate(
    lm: EvalModel,
    task: LoadedTask,
    items: Sequence[Item],
    stats: Stats,
    judges: Sequence[Judge],
    batch_size: int,
) -> list[dict[str, Any]]:
    completions = generate_until(
        lm, [item.context for item in items], task.config.generation, batch_size=batch_size
    )
    judged = {j.name: j.score([i.context for i in items], completions) for j in judges}
    samples = []
    for n, (item, completion) in enumerate(zip(items, completions, strict=True)):
        refs = item.references
        scores: dict[str, float | None] = {}
        for name in task.config.metrics:
            if name in SACREBLEU_METRICS:
                add_counts(stats[name], sacrebleu_counts(name, completion, refs))
                continue
            scores[name] = _item_metric(name, completion, refs)
        scores |= {f"judge_{name}": values[n] for name, values in judged.items()}
        for name, value in scores.items():
            if value is not None:  # a judge may leave an item unscored
                add_mean(stats[name], value)
        samples.append(
            {
                "row": item.row,
                "line": item.line,
                "context": item.context,
                "references": list(refs),
                "completion": completion,
                **scores,
            }
        )
    return samples


def _item_metric(name: str, completion: str, refs: Sequence[str]) -> float:
    if name == "exact_match":
        return exact_match(completion, refs)
    if name == "f1":
        return max(token_f1(completion, r) for r in refs)
    return rouge_l(completion, refs)
