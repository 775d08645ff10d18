"""Fine-tune a checkpoint on instruction records (or, with method "dpo", on preference pairs)
under Ray Train (DDP: gloo on CPUs, nccl on GPUs), through the same launcher
(``ray_jobs.launcher``) as ``ray_jobs.train``.

Before any worker starts, the driver checks the checkpoint, finds its tokenizer, reads and
tokenizes the records (writing the rejected ones to ``rejected.jsonl`` and the counts to
``data_stats.json``) and hands the tokenized train and val sets to the workers. Rank 0 reports
metrics (loss, val_loss, lr, tokens/s; DPO's rewards and reward accuracy, ``llm.finetune.dpo``;
each DPO worker loads the base checkpoint a second time, frozen, as the reference) to the
control plane and, once trained, writes
``finetune_summary.json`` with greedy completions of held-out prompts by the base and the tuned
model. A worker group restarted by ``FailureConfig`` resumes from the latest checkpoint.
Checkpoint, tokenizer, data and output are local paths or ``s3://`` URIs alike: the driver
reads the small files it checks into its scratch, each worker fetches the base checkpoint into
its node's scratch, and the tuned checkpoints are written like a train job's
(``llm.train.checkpoint.location``). With method 'lora' they are adapters alone, naming the base
checkpoint's URI and the sha256 of its weights (``llm.train.checkpoint.adapter``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import tokenizers
import torch

from contracts.specs import DPOSection, FinetuneSpec
from llm import storage
from llm.finetune.batches import batches_per_epoch
from llm.finetune.config import DPOConfig, LoraSettings, finetune_config
from llm.finetune.data import DataOptions, SFTData, TokenizedSet, prepare
from llm.finetune.dpo import STAT_NAMES, dpo_finetune
from llm.finetune.preferences import PreferenceData, PreferenceSet, prepare_preferences
from llm.finetune.samples import complete
from llm.finetune.sft import finetune
from llm.finetune.templates import chat_template, instruction_template
from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.model.lora import check_targets
from llm.tokenizer.bpe import PAD_TOKEN, eos_id, load_tokenizer
from llm.tokenizer.shards import MANIFEST_FILE
from llm.train.checkpoint import (
    ADAPTER_FILE,
    CLASSIFIER_KEY,
    CONFIG_FILE,
    DCP_DIR,
    FORMAT,
    MODEL_FILE,
    STATE_FILE,
    load_model,
)
from llm.train.checkpoint.location import fetch
from llm.train.config import TrainConfig, check_config
from ray_jobs import entrypoint
from ray_jobs.entrypoint import JobError
from ray_jobs.evaluate import resolve_checkpoint
from ray_jobs.launcher import Launch, WorkerReporting, launch, metric_by_step, read_summary
from ray_jobs.training_io import local_file, open_output, rank_nodes

SUMMARY_FILE = "finetune_summary.json"
REJECTED_FILE = "rejected.jsonl"
STATS_FILE = "data_stats.json"
TOKENIZER_FILE = "tokenizer.json"


def checkpoint_config(uri: str, archs: tuple[str, ...] = ("decoder",)) -> tuple[str, ModelConfig]:
    """The checkpoint folder uri names (or the latest under a job's output) and its config,
    whose arch must be one of archs."""
    path = resolve_checkpoint(uri)
    try:
        config = ModelConfig.from_dict(storage.read_json(storage.join(path, CONFIG_FILE)))
        state = storage.read_json(storage.join(path, STATE_FILE))
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{STATE_FILE}: format must be {FORMAT!r}")
        weights = storage.join(path, MODEL_FILE)
        if storage.is_file(storage.join(path, ADAPTER_FILE)):
            raise ValueError("it is a LoRA adapter: fine-tune its base, or a merge of the two")
        if not (storage.is_file(weights) or storage.is_dir(storage.join(path, DCP_DIR))):
            raise FileNotFoundError(f"neither {MODEL_FILE} nor {DCP_DIR}/ is there")
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise JobError(f"{uri} is not an llmforge checkpoint ({path}): {e}") from e
    if config.arch not in archs:
        needed = " or ".join(archs)
        raise JobError(
            f"{path}: this fine-tuning needs an arch {needed} checkpoint, not {config.arch}"
        )
    if CLASSIFIER_KEY in state:
        raise JobError(f"{path} is a classifier's checkpoint: start from a language model's")
    return path, config


def _absolute(uri: str) -> str:
    return uri if storage.is_remote(uri) else str(storage.filesystem(uri)[1])


def find_tokenizer(spec: FinetuneSpec, checkpoint: str) -> str:
    """spec.tokenizer (a shard folder or a tokenizer.json), else a tokenizer.json in the
    checkpoint folder or the two above it (a finetune job's output keeps one); a path or URI."""
    if spec.tokenizer is not None:
        path = _absolute(spec.tokenizer)
        manifest = storage.join(path, MANIFEST_FILE)
        if storage.is_file(manifest):
            try:
                return storage.join(path, storage.read_json(manifest)["tokenizer"]["file"])
            except (OSError, ValueError, KeyError) as e:
                raise JobError(f"tokenizer: cannot read {manifest}: {e}") from e
        if storage.is_file(storage.join(path, TOKENIZER_FILE)):
            return storage.join(path, TOKENIZER_FILE)
        if storage.is_file(path):
            return path
        raise JobError(f"tokenizer: {spec.tokenizer} is neither a shard folder nor a file")
    folder = checkpoint.rstrip("/")
    for _ in range(3):
        if storage.is_file(storage.join(folder, TOKENIZER_FILE)):
            return storage.join(folder, TOKENIZER_FILE)
        folder = folder.rsplit("/", 1)[0]
    raise JobError(
        f"no {TOKENIZER_FILE} beside {checkpoint}: set tokenizer to the token-shard folder "
        "the checkpoint was trained on"
    )


def open_tokenizer(path: str, config: ModelConfig) -> tokenizers.Tokenizer:
    try:
        tok = load_tokenizer(local_file(path))
    except Exception as e:  # tokenizers raises its own exception type for a bad file
        raise JobError(f"tokenizer: cannot load {path}: {e}") from e
    if tok.get_vocab_size() != config.vocab_size:
        raise JobError(
            f"tokenizer {path} has {tok.get_vocab_size()} tokens, but the checkpoint's "
            f"vocab_size is {config.vocab_size}: give the tokenizer it was trained with"
        )
    return tok


def _prepare(
    spec: FinetuneSpec, tok: tokenizers.Tokenizer, config: ModelConfig, out: str
) -> SFTData | PreferenceData:
    what = "preference data" if spec.method == "dpo" else "instruction data"
    if not storage.is_file(spec.data):
        raise JobError(f"{what} not found: {spec.data}")
    data = local_file(spec.data)
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
    prepared: SFTData | PreferenceData
    eos, block = eos_id(tok), config.block_size
    try:
        if spec.method == "dpo":
            prepared = prepare_preferences(data, tok, eos, block_size=block, options=options)
        else:
            prepared = prepare(data, tok, eos, block_size=block, options=options)
    except (ValueError, UnicodeDecodeError) as e:
        raise JobError(f"{what} {spec.data}: {e}") from e
    prepared.stats["file"] = spec.data  # not the scratch copy it was read from
    rejected = "".join(json.dumps(r.to_json()) + "\n" for r in prepared.rejected)
    storage.write_text(storage.join(out, REJECTED_FILE), rejected)
    storage.write_text(storage.join(out, STATS_FILE), json.dumps(prepared.stats, indent=2))
    if not prepared.stats["kept"]:
        reasons = prepared.stats["rejected_by_reason"]
        raise JobError(
            f"{spec.data}: no valid record among {prepared.stats['records']} "
            f"(rejected: {reasons}); see {storage.join(out, REJECTED_FILE)}"
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


def _lora(spec: FinetuneSpec, config: ModelConfig) -> LoraSettings | None:
    """spec's LoRA settings, their targets checked against the model (built without weights)."""
    if spec.method != "lora":
        return None
    settings = LoraSettings.from_dict(spec.lora.model_dump()) if spec.lora else LoraSettings()
    with torch.device("meta"):
        model = GPT(config)
    try:
        check_targets(model, settings.target_modules)
    except ValueError as e:
        raise JobError(str(e)) from e
    return settings


def _worker(config: dict[str, Any]) -> None:
    out: str = config["output"]
    base = fetch(config["checkpoint"])  # into this node's scratch, once per node
    reporting = WorkerReporting(out)
    nodes = rank_nodes()
    val = config["val"]
    # DPO on every weight, or supervised fine-tuning (of every weight, or LoRA adapters)
    method: Any = functools.partial(finetune, lora=config["lora"], base_uri=config["checkpoint"])
    if config["dpo"] is not None:
        method = functools.partial(dpo_finetune, options=config["dpo"])
    try:
        summary = method(
            config["cfg"],
            base,
            config["train"],
            val,
            out,
            pad_id=config["pad_id"],
            dropout=config["dropout"],
            on_log=reporting.on_log,
            on_checkpoint=reporting.on_checkpoint,
        )
    finally:
        reporting.flush()
    if reporting.rank == 0:
        # DPO's samples: the held-out prompts, the chosen response as reference
        prompts = val.chosen if isinstance(val, PreferenceSet) else val
        summary["samples"] = _samples(config, base, summary["checkpoint"], prompts)
        summary["nodes"] = nodes
        storage.write_json(storage.join(out, SUMMARY_FILE), summary)


def _samples(
    config: dict[str, Any], base: Path, tuned: str, val: TokenizedSet
) -> list[dict[str, Any]]:
    tok = load_tokenizer(local_file(config["tokenizer"]))
    models = {"base": load_model(base), "tuned": load_model(fetch(tuned))}
    return complete(
        models,
        val,
        tok,
        eos=eos_id(tok),
        count=config["samples"],
        max_new_tokens=config["max_new_tokens"],
    )


def _result(out: str, base: str, prepared: SFTData | PreferenceData) -> dict[str, Any]:
    summary = read_summary(storage.join(out, SUMMARY_FILE))
    losses = metric_by_step(out, "loss")
    val = metric_by_step(out, "val_loss")
    result = {
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
        "trainable_parameters": summary["trainable_parameters"],
        "method": summary["method"],
        "base_checkpoint": base,
        "tokenizer": storage.join(out, TOKENIZER_FILE),
        "data": prepared.stats,
        "rejected_file": storage.join(out, REJECTED_FILE),
        "samples": summary["samples"],
        "nodes": summary["nodes"],
    }
    if isinstance(prepared, PreferenceData):  # the last logged figures, and validation's
        names = (*STAT_NAMES, "val_reward_accuracy", "val_reward_margin")
        result["dpo"] = {name: summary["last"].get(name) for name in names}
    return result


def run(spec: FinetuneSpec) -> dict[str, Any]:
    if spec.classification is not None:
        # imported here: that module builds on this one's helpers
        from ray_jobs.finetune_classify import run_classification

        return run_classification(spec, spec.classification)
    out = open_output(spec.output)
    base, model_config = checkpoint_config(spec.checkpoint)
    tokenizer = find_tokenizer(spec, base)
    tok = open_tokenizer(tokenizer, model_config)
    lora = _lora(spec, model_config)
    prepared = _prepare(spec, tok, model_config, out)
    cfg = _config(spec, len(prepared.train))
    kept = storage.join(out, TOKENIZER_FILE)
    if tokenizer != kept:  # so the tuned checkpoints carry their tokenizer
        storage.upload(local_file(tokenizer), kept)
    pad = tok.token_to_id(PAD_TOKEN)
    dpo = spec.method == "dpo"
    worker_config = {
        "cfg": cfg,
        "dropout": spec.dropout,
        "dpo": DPOConfig(**(spec.dpo or DPOSection()).model_dump()) if dpo else None,
        "lora": lora,
        "output": out,
        "checkpoint": base,
        "tokenizer": kept,
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
        placement_strategy=spec.placement_strategy,
    )
    launch(_worker, worker_config, job)
    return _result(out, base, prepared)


if __name__ == "__main__":
    raise SystemExit(entrypoint.main(FinetuneSpec, run))
