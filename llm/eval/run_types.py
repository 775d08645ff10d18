"""Scoring one task's items by output type, adding to the task's metric statistics.

Each function returns one record per scored item (the optional per-item log); items that
cannot be scored (a continuation that encodes to no tokens) are added to `malformed` with the
reason, and the run goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llm.eval.data import Malformed
from llm.eval.filters import apply_filter
from llm.eval.generation import generate_until
from llm.eval.judge import Judge
from llm.eval.lm import EvalModel
from llm.eval.loglik import Request, encode_or_explain, loglikelihood_rolling
from llm.eval.metrics import (
    SACREBLEU_METRICS,
    add_counts,
    add_mean,
    add_ratio,
    base_metric,
    exact_match,
    exact_match_lm_eval,
    multiple_choice,
    rouge_l,
    sacrebleu_counts,
    token_f1,
)
from llm.eval.scoring import TokenRequest, score_tokens
from llm.eval.task import Item, LoadedTask
from llm.eval.task_config import TaskConfig

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
        Request(ctx, cont, f"{item.task} row {item.row} choice {j}")
        for item in items
        for j, (ctx, cont) in enumerate(
            zip(task.request_contexts(item), task.continuations(item), strict=True)
        )
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
                **({"contexts": list(item.contexts)} if item.contexts else {}),
                "choices": list(item.choices),
                "gold": list(item.gold),
                "loglikelihoods": lls,
                "is_greedy": [s.is_greedy for s in got],
                **outcome,
            }
        )
    return samples


def run_loglikelihood(
    lm: EvalModel,
    items: Sequence[Item],
    stats: Stats,
    malformed: list[Malformed],
    batch_size: int,
    share_prefix: bool,
) -> list[dict[str, Any]]:
    """lm-eval's loglikelihood: the target continuation after the context; acc is whether
    greedy decoding gives every token of it, perplexity exp(-mean log-likelihood)."""
    requests = [
        Request(item.context, item.references[0], f"{item.task} row {item.row}") for item in items
    ]
    usable: list[Item] = []
    tokens: list[TokenRequest] = []
    for item, encoded in zip(items, encode_or_explain(lm, requests), strict=True):
        if isinstance(encoded, ValueError):
            malformed.append(Malformed(item.row, item.line, item.file, str(encoded)))
            continue
        usable.append(item)
        tokens.append(encoded)
    scores = score_tokens(lm, tokens, batch_size=batch_size, share_prefix=share_prefix)
    samples = []
    for item, score in zip(usable, scores, strict=True):
        if "acc" in stats:
            add_mean(stats["acc"], float(score.is_greedy))
        if "perplexity" in stats:
            add_ratio(stats["perplexity"], score.logprob, 1)
        samples.append(
            {
                "row": item.row,
                "line": item.line,
                "context": item.context,
                "target": item.references[0],
                "loglikelihood": score.logprob,
                "is_greedy": score.is_greedy,
                "tokens": score.tokens,
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
    cfg = task.config
    responses = _responses(lm, [item.context for item in items], cfg, batch_size)
    completions = [r[0] for r in responses]
    judged = {j.name: j.score([i.context for i in items], completions) for j in judges}
    samples = []
    for n, (item, completion) in enumerate(zip(items, completions, strict=True)):
        refs = item.references
        scores: dict[str, float | None] = {}
        # lm-eval: each filter's answer is scored by every metric; no filter_list: the first
        # (only) completion, scored this harness's way
        answers = {f.name: apply_filter(f, responses[n]) for f in cfg.filter_list}
        for key in cfg.metric_keys:
            name = base_metric(key)
            answer = answers[key.split(",", 1)[1]] if cfg.filter_list else completion
            if name in SACREBLEU_METRICS:
                add_counts(stats[key], sacrebleu_counts(name, answer, refs))
                continue
            if name == "exact_match" and (cfg.filter_list or cfg.metric_options(name)):
                scores[key] = exact_match_lm_eval(answer, refs, **cfg.metric_options(name))
            else:
                scores[key] = _item_metric(name, answer, refs)
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
                **({"responses": responses[n]} if cfg.repeats > 1 else {}),
                **({"filtered": answers} if answers else {}),
                **scores,
            }
        )
    return samples


def _responses(
    lm: EvalModel, contexts: list[str], cfg: TaskConfig, batch_size: int
) -> list[list[str]]:
    """cfg.repeats completions per context (lm-eval's repeats). Greedy decoding gives the same
    completion every time, so it runs once; sampled repeats run as rows of their own."""
    gen = cfg.generation
    if cfg.repeats == 1 or gen.temperature == 0:
        return [[c] * cfg.repeats for c in generate_until(lm, contexts, gen, batch_size=batch_size)]
    flat = generate_until(
        lm, [c for c in contexts for _ in range(cfg.repeats)], gen, batch_size=batch_size
    )
    return [flat[i * cfg.repeats : (i + 1) * cfg.repeats] for i in range(len(contexts))]


def _item_metric(name: str, completion: str, refs: Sequence[str]) -> float:
    if name == "exact_match":
        return exact_match(completion, refs)
    if name == "f1":
        return max(token_f1(completion, r) for r in refs)
    return rouge_l(completion, refs)
