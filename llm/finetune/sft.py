"""Supervised fine-tuning: the Trainer (``llm.train.trainer``) on tokenized instructions.

Fine-tuning is a configuration of the one trainer, so optimizer, schedules, clipping, autocast,
DDP, the NaN guard, checkpoints and resume are pretraining's. What differs is plugged in: the
model starts from a base checkpoint's weights (optionally with another dropout), the batches are
variable-length examples right-padded per batch (``batches``), and the loss counts only the
IGNORE_INDEX-free targets, which masks the prompt. Checkpoints have pretraining's format, so
evaluate, generate and the HF export read them; their trainer_state also names the base
checkpoint and fingerprints the data, and a resume on other data is refused.

With LoRA settings, the base is frozen and adapters (``llm.model.lora``) train in its linear
layers: the optimizer sees only their tensors, and each checkpoint holds the adapter alone,
bound to the base's weights (``llm.train.checkpoint.adapter``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llm.finetune.batches import Batch, batches_per_epoch, example_batches, in_order
from llm.finetune.data import IGNORE_INDEX, TokenizedSet
from llm.model.config import ModelConfig
from llm.model.gpt import GPT
from llm.model.lora import LoraSettings, add_lora, trainable_parameters
from llm.train.checkpoint import load_model, weights_fingerprint
from llm.train.checkpoint.location import best_of
from llm.train.config import TrainConfig
from llm.train.trainer import CheckpointFn, LogFn, Task, Trainer


def tuned_config(base: ModelConfig, dropout: float | None) -> ModelConfig:
    """The base config, with every dropout site set to ``dropout`` when one is given."""
    if dropout is None:
        return base
    return dataclasses.replace(
        base, dropout=dropout, embd_dropout=None, attn_dropout=None, resid_dropout=None
    )


def load_base(checkpoint: str | Path, dropout: float | None, device: torch.device) -> GPT:
    """The base checkpoint's weights in a GPT whose config carries the fine-tuning dropout."""
    base = load_model(checkpoint, device=str(device))
    config = tuned_config(base.config, dropout)
    if config == base.config:
        return base.train()
    model = GPT(config).to(device)
    model.load_state_dict(base.state_dict())
    return model.train()


def sft_loss(model: nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, int]:
    """The loss over the batch's trained targets (llm.model's loss ignores IGNORE_INDEX ones)."""
    _, loss = model(batch.input_ids.to(device), batch.targets.to(device))
    return loss, batch.tokens


@torch.no_grad()
def evaluate_sft_loss(
    model: nn.Module, data: TokenizedSet, *, batch_size: int, pad_id: int
) -> dict[str, float]:
    """Mean loss over every target token of data (not a mean of per-batch means)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in in_order(data, batch_size, pad_id):
        logits, _ = model(batch.input_ids.to(device))
        targets = batch.targets.to(device)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(),
            targets.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total += float(loss)
        count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    if count == 0:
        raise ValueError("the validation set has no target token")
    loss_value = total / count
    return {"val_loss": loss_value, "val_ppl": math.exp(min(loss_value, 50.0))}


def fine_tuning(
    cfg: TrainConfig,
    base_checkpoint: Path,
    train: TokenizedSet,
    val: TokenizedSet,
    *,
    pad_id: int,
    dropout: float | None,
    lora: LoraSettings | None = None,
    base_uri: str | None = None,
) -> Task:
    """The Task that fine-tunes base_checkpoint on train (and validates on val, if not empty);
    with lora, only adapters train. base_uri: how the adapter names its base (default: the
    local base_checkpoint, for a base fetched into scratch give its URI)."""
    fingerprint = train.fingerprint()
    adapter = lora.to_dict() if lora is not None else None
    if lora is not None and cfg.parallelism == "fsdp":
        raise ValueError(
            "LoRA fine-tuning runs in one process or under DDP, not parallelism 'fsdp'"
        )
    base_weights = weights_fingerprint(base_checkpoint) if lora is not None else ""

    def build_model(device: torch.device) -> GPT:
        model = load_base(base_checkpoint, dropout, device)
        if lora is None:
            return model
        named = base_uri or str(base_checkpoint)
        return add_lora(model, lora, base=named, base_fingerprint=base_weights)

    def check_resume(path: Path, saved: dict[str, Any]) -> None:
        tuned = saved.get("finetune", {})
        if tuned.get("data") != fingerprint:
            raise ValueError(
                f"{path} was fine-tuned on other training data (or another template, seed or "
                "split); resume with the same data and options, or write to a new output"
            )
        if tuned.get("lora") != adapter:
            raise ValueError(
                f"{path} was fine-tuned with LoRA settings {tuned.get('lora')} (None: all "
                f"weights), this run asks for {adapter}; resume with the same, or write to a new "
                "output"
            )

    def evaluate(model: nn.Module) -> dict[str, float]:
        return evaluate_sft_loss(model, val, batch_size=cfg.batch_size, pad_id=pad_id)

    def epoch(step: int, world_size: int) -> dict[str, float]:
        return {"epoch": step / batches_per_epoch(len(train), cfg.batch_size, world_size)}

    return Task(
        build_model=build_model,
        build_batches=lambda rank, world_size: example_batches(
            train,
            batch_size=cfg.batch_size,
            pad_id=pad_id,
            rank=rank,
            world_size=world_size,
            seed=cfg.seed,
        ),
        objective=sft_loss,
        seq_len=None,
        evaluate=evaluate if len(val) else None,
        state={
            "finetune": {
                "base_checkpoint": str(base_checkpoint),
                "data": fingerprint,
                "lora": adapter,
            }
        },
        check_resume=check_resume,
        extra_metrics=epoch,
    )


def finetune(
    cfg: TrainConfig,
    base_checkpoint: str | Path,
    train: TokenizedSet,
    val: TokenizedSet,
    out: str | Path,
    *,
    pad_id: int,
    dropout: float | None = None,
    lora: LoraSettings | None = None,
    base_uri: str | None = None,
    on_log: LogFn | None = None,
    on_checkpoint: CheckpointFn | None = None,
) -> dict[str, Any]:
    """Fine-tune until cfg.steps; on_log gets metrics on rank 0, on_checkpoint on every rank.

    A fresh run first logs the base model's val_loss at step 0, the figure tuning improves on.
    ``dropout`` (None: the checkpoint's) replaces every dropout rate of the base model. With
    ``lora``, adapters train on the frozen base and the checkpoints are adapters naming
    ``base_uri`` (default: base_checkpoint) as their base.
    """
    task = fine_tuning(
        cfg,
        Path(base_checkpoint),
        train,
        val,
        pad_id=pad_id,
        dropout=dropout,
        lora=lora,
        base_uri=base_uri,
    )
    trainer = Trainer(cfg, task, out)
    if trainer.step == 0 and len(val) and trainer.rank == 0 and on_log:
        on_log(0, trainer.evaluate())
    history = trainer.fit(on_log=on_log, on_checkpoint=on_checkpoint)
    return {
        "steps": trainer.step,
        "tokens_seen": trainer.tokens_seen,
        "loss_history": dict(history),
        "last": trainer.last,
        "checkpoint": trainer.checkpoints.latest_location(),
        "best_checkpoint": best_of(trainer.checkpoints.uri),
        "parameters": trainer.model.num_parameters(),
        "trainable_parameters": trainable_parameters(trainer.model),
        "method": "lora" if lora is not None else "full",
        "epochs": trainer.step / batches_per_epoch(len(train), cfg.batch_size, trainer.world_size),
    }
