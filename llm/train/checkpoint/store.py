"""The one save/restore dispatch: which writer and reader a run's parallelism calls for.

    "full"       rank 0 writes model.safetensors + optimizer.pt (one process, DDP)
    "fsdp_full"  FSDP ranks gather to rank 0, which writes the same full checkpoint
    "sharded"    FSDP ranks each write their DCP shards (the default under FSDP)

Restoring reads whatever is on disk: a DCP folder reshards into any world size, a full one
loads into a plain model or is scattered into FSDP shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from llm.model.config import ModelConfig
from llm.train.checkpoint.fsdp_full import (
    MakeOptimizer,
    load_fsdp_checkpoint,
    save_fsdp_checkpoint,
)
from llm.train.checkpoint.full import load_checkpoint, save_checkpoint
from llm.train.checkpoint.layout import is_sharded
from llm.train.checkpoint.sharded import load_sharded_checkpoint, save_sharded_checkpoint

Layout = Literal["full", "fsdp_full", "sharded"]


def layout_for(parallelism: str, fsdp_checkpoint: str) -> Layout:
    if parallelism != "fsdp":
        return "full"
    return "sharded" if fsdp_checkpoint == "sharded" else "fsdp_full"


def save(
    target: Path,
    *,
    layout: Layout,
    rank: int,
    model: nn.Module,
    config: ModelConfig,
    optimizer: torch.optim.Optimizer,
    make_optimizer: MakeOptimizer,
    trainer_state: dict[str, Any],
) -> Path | None:
    """Write one checkpoint (collective for the FSDP layouts); the folder on rank 0, else None."""
    if layout == "sharded":
        save_sharded_checkpoint(
            target, model=model, config=config, optimizer=optimizer, trainer_state=trainer_state
        )
    elif layout == "fsdp_full":
        save_fsdp_checkpoint(
            target,
            model=model,
            config=config,
            optimizer=optimizer,
            make_optimizer=make_optimizer,
            trainer_state=trainer_state,
        )
    elif rank == 0:
        save_checkpoint(
            target, model=model, config=config, optimizer=optimizer, trainer_state=trainer_state
        )
    return target if rank == 0 else None


def restore(
    path: Path,
    *,
    fsdp: bool,
    model: nn.Module,
    config: ModelConfig,
    optimizer: torch.optim.Optimizer,
    make_optimizer: MakeOptimizer,
) -> dict[str, Any]:
    """Load model and optimizer state from path (collective under FSDP); the trainer_state."""
    if is_sharded(path):
        return load_sharded_checkpoint(path, model=model, optimizer=optimizer)
    if fsdp:
        return load_fsdp_checkpoint(
            path, model=model, config=config, optimizer=optimizer, make_optimizer=make_optimizer
        )
    return load_checkpoint(path, model=model, optimizer=optimizer)[1]
