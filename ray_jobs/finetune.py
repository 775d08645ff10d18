"""Fine-tune a checkpoint on instruction records under Ray Train (DDP: gloo on CPUs, nccl on
GPUs), through the same launcher (``ray_jobs.launcher``) as ``ray_jobs.train``.

Before any worker starts, the driver checks the checkpoint, finds its tokenizer, reads and
tokenizes the records (writing the rejected ones to ``rejected.jsonl`` and the counts to
``data_stats.json``) and hands the tokenized train and val sets to the workers. Rank 0 reports
metrics (loss, val_loss, lr, tokens/s) to the control plane and, once trained, writes
``finetune_summary.json`` with greedy completions of held-out prompts by the base and the tuned
model. A worker group restarted by ``FailureConfig`` resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import tokenizers
import torch

from contracts.specs import FinetuneSpec
from llm.finetune.batches import batches_per_epoch
from llm.finetune.config import finetune_config
from llm.finetune.data import DataOptions, SFTData, TokenizedSet, prepare
from llm.finetune.samples import complete
from llm.finetune.sft import finetune
from llm.finetune.templates import chat_template, instruction_template
from llm.model.config import ModelConfig
from llm.tokenizer.bpe import PAD_TOKEN, eos_id, load_tokenizer
from llm.tokenizer.shards import read_manifest
from llm.train.checkpoint import CONFIG_FILE, DCP_DIR, MODEL_FILE, load_model, read_state
from llm.train.config import TrainConfig, check_config
from ray_jobs import entrypoint
from ray_jobs.entrypoint import JobError, local_path
from ray_jobs.evaluate import resolve_checkpoint
from ray_jobs.launcher import Launch, WorkerReporting, launch, metric_by_step, read_summary

SUMMARY_FILE = "finetune_summary.json"
REJECTED_FILE = "rejected.jsonl"
STATS_FILE = "data_stats.json"
TOKENIZER_FILE = "tokenizer.json"


def checkpoint_config(uri: str) -> tuple[Path, ModelConfig]:
    """The checkpoint folder uri names (or the latest under a job's output) and its config."""
    path = resolve_checkpoint(uri)
    try:
        config = ModelConfig.load(path / CONFIG_FILE)
        read_state(path)
        if not ((path / MODEL_FILE).is_file() or (path / DCP_DIR).is_dir()):
            raise FileNotFoundError(f"neither {MODEL_FILE} nor {DCP_DIR}/ is there")
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise JobError(f"{uri} is not an llmforge checkpoint ({path}): {e}") from e
    if config.arch != "decoder":
        raise JobError(f"{path}: fine-tuning needs a decoder checkpoint, this one is {config.arch}")
    return path, config


def find_tokenizer(spec: FinetuneSpec, checkpoint: Path) -> Path:
    """spec.tokenizer (a shard folder or a tokenizer.json), else a tokenizer.json in the
    checkpoint folder or the two above it (a finetune job's output keeps one)."""
    if spec.tokenizer is not None:
        path = local_path(spec.tokenizer).resolve()
        if (path / "manifest.json").is_file():
            try:
                return path / read_manifest(path, verify=False)["tokenizer"]["file"]
            except (OSError, ValueError, KeyError) as e:
                raise JobError(f"tokenizer: cannot read {path / 'manifest.json'}: {e}") from e
        if path.is_dir() and (path / TOKENIZER_FILE).is_file():
            return path / TOKENIZER_FILE
        if path.is_file():
            return path
        raise JobError(f"tokenizer: {spec.tokenizer} is neither a shard folder nor a file")
    for folder in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if (folder / TOKENIZER_FILE).is_file():
            return folder / TOKENIZER_FILE
    raise JobError(
        f"no {TOKENIZER_FILE} beside {checkpoint}: set tokenizer to the token-shard folder "
        "the checkpoint was trained on"
    )


def open_tokenizer(path: Path, config: ModelConfig) -> tokenizers.Tokenizer:
    try:
        tok = load_tokenizer(path)
    except Exception as e:  # tokenizers raises its own exception type for a bad file
        raise JobError(f"tokenizer: cannot load {path}: {e}") from e
    if tok.get_vocab_size() != config.vocab_size:
        raise JobError(
            f"tokenizer {path} has {tok.get_vocab_size()} tokens, but the checkpoint's "
            f"vocab_size is {config.vocab_size}: give the tokenizer it was trained with"
        )
    return tok


def _prepare(
    spec: FinetuneSpec, tok: tokenizers.Tokenizer, config: ModelConfig, out: Path
) -> SFTData:
    data = local_path(spec.data).resolve()
    if not data.is_file():
        raise JobError(f"instruction data not found: {spec.data}")
    for name, compile_template in (
        ("template", instruction_template),
        ("chat_template", chat_template),
    ):
        try:  # the API only parsed them; this trial render finds what rendering shows
            compile_template(getattr(spec, name))
        except ValueError as e:
            raise JobError(f"{name}: {e}") from e
    options = DataOptions(
        **spec.model_dump(include={"template", "chat_template", "fields", "format"}),
        train_on_prompt=spec.train_on_prompt,
        max_samples=spec.max_samples,
        val_fraction=spec.val_fraction,
        seed=spec.seed,
    )
    try:
        prepared = prepare(data, tok, eos_id(tok), block_size=config.block_size, options=options)
    except (ValueError, UnicodeDecodeError) as e:
        raise JobError(f"instruction data {spec.data}: {e}") from e
    with (out / REJECTED_FILE).open("w") as f:
        for rejection in prepared.rejected:
            f.write(json.dumps(rejection.to_json()) + "\n")
    (out / STATS_FILE).write_text(json.dumps(prepared.stats, indent=2))
    if not prepared.stats["kept"]:
        reasons = prepared.stats["rejected_by_reason"]
        raise JobError(
            f"{spec.data}: no valid record among {prepared.stats['records']} "
            f"(rejected: {reasons}); see {out / REJECTED_FILE}"
        )
    return prepared


def _config(spec: FinetuneSpec, train_examples: int) -> TrainConfig:
    per_epoch = batches_per_epoch(train_examples, spec.batch_size, spec.workers)
    if per_epoch == 0:
        raise JobError(
            f"{spec.data}: {train_examples} training examples, but batch_size "
            f"{spec.batch_size} x workers {spec.workers} needs at least "
            f"{spec.batch_size * spec.workers}"
        )
    steps = spec.steps or (spec.epochs or 1) * per_epoch
    fields = {
        "lr", "min_lr", "warmup_steps", "schedule", "weight_decay", "grad_clip", "precision",
        "seed", "log_every", "eval_every", "checkpoint_every", "keep_last", "batch_size",
    }  # fmt: skip
    try:
        cfg = finetune_config(steps=steps, **spec.model_dump(include=fields))
        check_config(
            cfg,
            seq_len=None,
            world_size=spec.workers,
            device=torch.device("cuda" if spec.use_gpu else "cpu"),
        )
    except ValueError as e:
        raise JobError(str(e)) from e
    return cfg


def _worker(config: dict[str, Any]) -> None:
    out = Path(config["output"])
    reporting = WorkerReporting(out, checkpoint_storage=None)
    val = config["val"]
    summary = finetune(
        config["cfg"],
        config["checkpoint"],
        config["train"],
        val,
        out,
        pad_id=config["pad_id"],
        dropout=config["dropout"],
        on_log=reporting.on_log,
        on_checkpoint=reporting.on_checkpoint,
    )
    if reporting.rank == 0:
        summary["samples"] = _samples(config, summary["checkpoint"], val)
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))


def _samples(config: dict[str, Any], tuned: str, val: TokenizedSet) -> list[dict[str, Any]]:
    tok = load_tokenizer(config["tokenizer"])
    models = {"base": load_model(config["checkpoint"]), "tuned": load_model(tuned)}
    return complete(
        models,
        val,
        tok,
        eos=eos_id(tok),
        count=config["samples"],
        max_new_tokens=config["max_new_tokens"],
    )


def _result(out: Path, base: Path, prepared: SFTData) -> dict[str, Any]:
    summary = read_summary(out / SUMMARY_FILE)
    losses = metric_by_step(out, "loss")
    val = metric_by_step(out, "val_loss")
    return {
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "tokens_seen": summary["tokens_seen"],
        "first_loss": losses[min(losses)] if losses else None,
        "final_loss": losses[max(losses)] if losses else None,
        "base_val_loss": val.get(0),
        "val_loss": val[max(val)] if val else None,
        "last": summary["last"],
        "checkpoint": summary["checkpoint"],
        "best_checkpoint": summary["best_checkpoint"],
        "parameters": summary["parameters"],
        "base_checkpoint": str(base),
        "tokenizer": str(out / TOKENIZER_FILE),
        "data": prepared.stats,
        "rejected_file": str(out / REJECTED_FILE),
        "samples": summary["samples"],
    }


def run(spec: FinetuneSpec) -> dict[str, Any]:
    base, model_config = checkpoint_config(spec.checkpoint)
    tokenizer = find_tokenizer(spec, base)
    tok = open_tokenizer(tokenizer, model_config)
    out = local_path(spec.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    prepared = _prepare(spec, tok, model_config, out)
    cfg = _config(spec, len(prepared.train))
    if tokenizer != out / TOKENIZER_FILE:  # so the tuned checkpoints carry their tokenizer
        shutil.copyfile(tokenizer, out / TOKENIZER_FILE)
    pad = tok.token_to_id(PAD_TOKEN)
    worker_config = {
        "cfg": cfg,
        "dropout": spec.dropout,
        "output": str(out),
        "checkpoint": str(base),
        "tokenizer": str(out / TOKENIZER_FILE),
        "train": prepared.train,
        "val": prepared.val,
        # padding is masked out of the loss, so any id would do when there is no pad token
        "pad_id": pad if pad is not None else eos_id(tok),
        "samples": spec.samples,
        "max_new_tokens": spec.max_new_tokens,
    }
    job = Launch(
        kind="finetune",
        output=out,
        workers=spec.workers,
        use_gpu=spec.use_gpu,
        max_failures=spec.max_failures,
    )
    launch(_worker, worker_config, job)
    return _result(out, base, prepared)


if __name__ == "__main__":
    raise SystemExit(entrypoint.main(FinetuneSpec, run))
