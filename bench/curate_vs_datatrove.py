"""Heuristic filters: llmforge's batch blocks against datatrove 0.10.1's own filter classes.

    .venv/bin/python -m bench.curate_vs_datatrove [--docs 2000]

The chain, with default parameters on both sides: Gopher quality → Gopher repetition → C4
quality (which also edits the text) → FineWeb quality. Both sides run in a pool of 2 worker
processes (one per core), each worker taking every other document; the pool is forked from a
parent that has built and run both chains once (imports, spaCy's blank English pipeline), so
start-up is not timed. Each side's wall seconds and its workers' CPU seconds are reported (the
speedup on both; CPU seconds hold steadier when other work shares the cores). llmforge's side
builds Arrow batches of ``BATCH_ROWS`` and calls each block's ``apply``; datatrove's side builds
``Document``s and calls each filter's ``filter()`` until one rejects. datatrove 0.10.1 splits
English words with spaCy (``spacy.blank("en")``, nothing to download); llmforge's
``split_words`` (llm/data/words.py) ports spaCy's English rules, and its Gopher quality rule
counts distinct stop words and datatrove's punctuation set, as datatrove does.

Agreement is per document: both sides keep it, or both drop it (any reason). Per filter, it is
over the documents both chains handed to that filter. Needs the `bench` extra (datatrove
[processing], spacy, orjson).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections import Counter
from typing import Any

import pyarrow as pa

from bench._common import load_corpus
from llm.data.c4 import C4QualityFilter
from llm.data.filters import GopherQualityFilter
from llm.data.fineweb import FineWebQualityFilter
from llm.data.repetition import GopherRepetitionFilter
from llm.data.schema import DOC_SCHEMA, REASON

FILTERS = ("gopher_quality", "gopher_repetition", "c4_quality", "fineweb_quality")
BATCH_ROWS = 512
WORKERS = 2

_TEXTS: list[str] = []  # the corpus, inherited by the forked workers
_CHAIN: dict[str, list[Any]] = {}


def _ours_chain() -> list[Any]:
    return [
        GopherQualityFilter(), GopherRepetitionFilter(), C4QualityFilter(), FineWebQualityFilter()
    ]  # fmt: skip


def _datatrove_chain() -> list[Any]:
    from datatrove.pipeline import filters

    return [
        filters.GopherQualityFilter(),
        filters.GopherRepetitionFilter(),
        filters.C4QualityFilter(),
        filters.FineWebQualityFilter(),
    ]


def _warm_up() -> None:
    # Built and run once in the parent before the pool forks, so the workers inherit both
    # chains ready (spaCy's pipeline loaded) and start-up is not timed.
    _CHAIN["ours"], _CHAIN["datatrove"] = _ours_chain(), _datatrove_chain()
    warm = "The cat sat on the mat and looked at the dog. " * 20
    _run_ours([warm])
    _run_datatrove([warm])


def _run_ours(texts: list[str]) -> list[str | None]:
    reasons: list[str | None] = []
    for start in range(0, len(texts), BATCH_ROWS):
        part = texts[start : start + BATCH_ROWS]
        batch = pa.table(
            {
                "id": [str(start + i) for i in range(len(part))],
                "text": part,
                "source": ["bench"] * len(part),
                "position": [""] * len(part),
                "reason": pa.nulls(len(part), pa.string()),
            },
            schema=DOC_SCHEMA,
        )
        for block in _CHAIN["ours"]:
            batch = block.apply(batch)
        reasons.extend(batch.column(REASON).to_pylist())
    return reasons


def _run_datatrove(texts: list[str]) -> list[str | None]:
    from datatrove.data import Document

    reasons: list[str | None] = []
    for index, text in enumerate(texts):
        doc = Document(text=text, id=str(index))
        reason = None
        for name, block in zip(FILTERS, _CHAIN["datatrove"], strict=True):
            verdict = block.filter(doc)
            if verdict is not True:
                reason = f"{name}:{verdict[1] if isinstance(verdict, tuple) else 'dropped'}"
                break
        reasons.append(reason)
    return reasons


def _shard(side_and_index: tuple[str, int]) -> tuple[list[str | None], float]:
    """One worker's reasons, and the CPU seconds its process spent on them (all threads)."""
    side, index = side_and_index
    texts = _TEXTS[index::WORKERS]
    started = time.process_time()
    reasons = _run_ours(texts) if side == "ours" else _run_datatrove(texts)
    return reasons, time.process_time() - started


def run_side(pool: Any, side: str) -> tuple[list[str | None], float, float]:
    """(per-document reasons in corpus order, wall seconds, CPU seconds of the workers) for one
    side over the whole corpus. CPU seconds are the steadier figure on a shared machine."""
    started = time.perf_counter()
    shards = pool.map(_shard, [(side, index) for index in range(WORKERS)])
    seconds = time.perf_counter() - started
    reasons: list[str | None] = [None] * len(_TEXTS)
    for index, (shard, _) in enumerate(shards):
        reasons[index::WORKERS] = shard
    return reasons, seconds, sum(cpu for _, cpu in shards)


def _filter_of(reason: str | None) -> int:
    return len(FILTERS) if reason is None else FILTERS.index(reason.split(":", 1)[0])


def agreement(ours: list[str | None], theirs: list[str | None]) -> dict[str, Any]:
    """Whole-chain agreement, and per filter over the documents both chains gave that filter."""
    pairs = list(zip(map(_filter_of, ours), map(_filter_of, theirs), strict=True))
    result: dict[str, Any] = {
        "chain": sum((a == len(FILTERS)) == (b == len(FILTERS)) for a, b in pairs) / len(pairs)
    }
    for step, name in enumerate(FILTERS):
        reached = [(a, b) for a, b in pairs if a >= step and b >= step]
        same = sum((a == step) == (b == step) for a, b in reached)
        result[name] = {"docs": len(reached), "agreement": same / len(reached) if reached else 1.0}
    return result


def disagreements(
    sources: list[str], ours: list[str | None], theirs: list[str | None], top: int = 10
) -> list[tuple[tuple[str, str, str], int]]:
    """The most common (source, llmforge reason, datatrove reason) where keep/drop differ."""
    causes = Counter(
        (source, a or "kept", b or "kept")
        for source, a, b in zip(sources, ours, theirs, strict=True)
        if (a is None) != (b is None)
    )
    return causes.most_common(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=2000)
    args = parser.parse_args()
    corpus = load_corpus(args.docs)
    _TEXTS[:] = [text for _, text in corpus]
    megabytes = sum(len(text.encode("utf-8")) for text in _TEXTS) / 1e6
    _warm_up()
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        ours, ours_s, ours_cpu = run_side(pool, "ours")
        theirs, theirs_s, theirs_cpu = run_side(pool, "datatrove")
    agree = agreement(ours, theirs)

    print(f"{len(_TEXTS)} documents, {megabytes:.1f} MB, {WORKERS} worker processes per side")
    print(f"{'':12}{'seconds':>9}{'CPU s':>9}{'docs/s':>9}{'MB/s':>8}{'kept':>7}")
    for side, reasons, seconds, cpu in (
        ("llmforge", ours, ours_s, ours_cpu),
        ("datatrove", theirs, theirs_s, theirs_cpu),
    ):
        kept = sum(reason is None for reason in reasons)
        rate = len(reasons) / seconds
        print(f"{side:12}{seconds:9.2f}{cpu:9.2f}{rate:9.1f}{megabytes / seconds:8.2f}{kept:7}")
    print(f"decision agreement, whole chain: {agree['chain']:.4f}")
    for name in FILTERS:
        print(f"  {name:18} {agree[name]['agreement']:.4f} over {agree[name]['docs']} docs")
    print("top disagreements (source, llmforge, datatrove): count")
    for cause, count in disagreements([source for source, _ in corpus], ours, theirs):
        print(f"  {cause}: {count}")
    print(
        json.dumps(
            {
                "speedup_vs_datatrove": round(theirs_s / ours_s, 2),
                "cpu_speedup_vs_datatrove": round(theirs_cpu / ours_cpu, 2),
                "llmforge_seconds": round(ours_s, 2),
                "datatrove_seconds": round(theirs_s, 2),
                "llmforge_cpu_seconds": round(ours_cpu, 2),
                "datatrove_cpu_seconds": round(theirs_cpu, 2),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "decision_agreement": round(agree["chain"], 4),
                "agreement_per_filter": {n: round(agree[n]["agreement"], 4) for n in FILTERS},
                "docs": len(_TEXTS),
                "megabytes": round(megabytes, 2),
                "llmforge_docs_per_s": round(len(_TEXTS) / ours_s, 1),
                "datatrove_docs_per_s": round(len(_TEXTS) / theirs_s, 1),
                "llmforge_mb_per_s": round(megabytes / ours_s, 2),
                "datatrove_mb_per_s": round(megabytes / theirs_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
