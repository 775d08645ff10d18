"""The finetune job with a ``classification`` block: a classification head trained on an
encoder or decoder checkpoint (``llm.finetune.classify``) under Ray Train, like instruction
tuning (``ray_jobs.finetune``, whose checks and launcher it shares).

The driver checks the checkpoint and tokenizer, reads and tokenizes the labelled records
(the rejected ones to ``rejected.jsonl`` with their reasons, the counts and the label mapping to
``data_stats.json``) and hands the train and val sets to the workers. Rank 0 reports loss,
val_loss, val_accuracy and val_macro_f1, and writes ``finetune_summary.json``. The checkpoints
carry the labels and pooling, so an evaluate job can use one as a judge.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import tokenizers

from contracts.classification import ClassificationSpec
from contracts.specs import FinetuneSpec
from llm import storage
from llm.finetune.classify import train_classifier
from llm.finetune.classify_data import ClassifyData, LabelOptions, pad_id, prepare_labelled
from llm.model.classifier import pooling_for
from llm.model.config import ModelConfig
from llm.train.checkpoint.location import fetch
from ray_jobs.entrypoint import JobError
from ray_jobs.finetune import (
    REJECTED_FILE,
    STATS_FILE,
    SUMMARY_FILE,
    TOKENIZER_FILE,
    _config,
    checkpoint_config,
    find_tokenizer,
    open_tokenizer,
)
from ray_jobs.launcher import Launch, WorkerReporting, launch, metric_by_step, read_summary
from ray_jobs.training_io import local_file, open_output, rank_nodes

VAL_METRICS = ("val_loss", "val_accuracy", "val_macro_f1")


def prepare(
    spec: FinetuneSpec,
    block: ClassificationSpec,
    tok: tokenizers.Tokenizer,
    config: ModelConfig,
    out: str,
) -> ClassifyData:
    """The labelled records read, checked and split; rejected.jsonl and data_stats.json
    written to out."""
    if not storage.is_file(spec.data):
        raise JobError(f"labelled data not found: {spec.data}")
    options = LabelOptions(
        text_field=block.text_field,
        text_pair_field=block.text_pair_field,
        label_field=block.label_field,
        labels=tuple(block.labels) if block.labels is not None else None,
        max_samples=spec.max_samples,
        val_fraction=spec.val_fraction,
        seed=spec.seed,
    )
    try:
        prepared = prepare_labelled(
            local_file(spec.data), tok, block_size=config.block_size, options=options
        )
    except (ValueError, UnicodeDecodeError) as e:
        raise JobError(f"labelled data {spec.data}: {e}") from e
    prepared.stats["file"] = spec.data  # not the scratch copy it was read from
    rejected = "".join(json.dumps(r.to_json()) + "\n" for r in prepared.rejected)
    storage.write_text(storage.join(out, REJECTED_FILE), rejected)
    storage.write_text(storage.join(out, STATS_FILE), json.dumps(prepared.stats, indent=2))
    found = prepared.stats["by_label"]
    if len([n for n in found.values() if n]) < 2:
        raise JobError(
            f"{spec.data}: a classifier needs records of at least two labels; the "
            f"{prepared.stats['kept']} usable records of {prepared.stats['records']} have "
            f"{found} (field {block.label_field!r}; rejected: "
            f"{prepared.stats['rejected_by_reason']}, see {storage.join(out, REJECTED_FILE)})"
        )
    # the workers need the examples, not the rejected records
    return dataclasses.replace(prepared, rejected=[])


def _worker(config: dict[str, Any]) -> None:
    out: str = config["output"]
    base = fetch(config["checkpoint"])  # into this node's scratch, once per node
    reporting = WorkerReporting(out)
    nodes = rank_nodes()
    try:
        summary = train_classifier(
            config["cfg"],
            base,
            config["data"],
            out,
            pad=config["pad_id"],
            pooling=config["pooling"],
            dropout=config["dropout"],
            on_log=reporting.on_log,
            on_checkpoint=reporting.on_checkpoint,
        )
    finally:
        reporting.flush()
    if reporting.rank == 0:
        summary["nodes"] = nodes
        storage.write_json(storage.join(out, SUMMARY_FILE), summary)


def _result(out: str, base: str, prepared: ClassifyData, pooling: str) -> dict[str, Any]:
    summary = read_summary(storage.join(out, SUMMARY_FILE))
    losses = metric_by_step(out, "loss")
    result: dict[str, Any] = {
        "task": "classification",
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "tokens_seen": summary["tokens_seen"],
        "first_loss": losses[min(losses)] if losses else None,
        "final_loss": losses[max(losses)] if losses else None,
    }
    for name in VAL_METRICS:
        values = metric_by_step(out, name)
        # step 0 is the untrained head's: chance level, what training improves on
        result[f"base_{name}"] = values.get(0)
        result[name] = values[max(values)] if values else None
    return result | {
        "labels": list(prepared.labels),
        "pooling": pooling,
        "last": summary["last"],
        "checkpoint": summary["checkpoint"],
        "best_checkpoint": summary["best_checkpoint"],
        "parameters": summary["parameters"],
        "base_checkpoint": base,
        "tokenizer": storage.join(out, TOKENIZER_FILE),
        "data": prepared.stats,
        "rejected_file": storage.join(out, REJECTED_FILE),
        "nodes": summary["nodes"],
    }


def run_classification(spec: FinetuneSpec, block: ClassificationSpec) -> dict[str, Any]:
    out = open_output(spec.output)
    base, model_config = checkpoint_config(spec.checkpoint, archs=("encoder", "decoder"))
    try:
        pooling = pooling_for(model_config.arch, block.pooling)
    except ValueError as e:
        raise JobError(f"classification.pooling: {e}") from e
    tokenizer = find_tokenizer(spec, base)
    tok = open_tokenizer(tokenizer, model_config)
    prepared = prepare(spec, block, tok, model_config, out)
    cfg = _config(spec, len(prepared.train))
    kept = storage.join(out, TOKENIZER_FILE)
    if tokenizer != kept:  # so the classifier's checkpoints carry their tokenizer
        storage.upload(local_file(tokenizer), kept)
    worker_config = {
        "cfg": cfg,
        "dropout": spec.dropout,
        "pooling": pooling,
        "output": out,
        "checkpoint": base,
        "data": prepared,
        "pad_id": pad_id(tok),
    }
    job = Launch(
        kind="finetune",
        output=out,
        workers=spec.workers,
        use_gpu=spec.use_gpu,
        max_failures=spec.max_failures,
        placement_strategy=spec.placement_strategy,
    )
    launch(_worker, worker_config, job)
    return _result(out, base, prepared, pooling)
