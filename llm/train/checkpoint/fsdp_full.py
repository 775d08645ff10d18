"""FSDP checkpoints gathered into one full checkpoint (the ``fsdp_checkpoint="full"`` choice).

Every rank gathers the full (unsharded) model and optimizer state to rank 0's CPU
(torch.distributed.checkpoint.state_dict with full_state_dict=True, cpu_offload=True), and rank
0 writes it with the same save_checkpoint as single-process and DDP runs, so the checkpoint
loads into any run (FSDP, DDP, one process, load_model). It costs a full copy of the weights
and optimizer state in rank 0's host memory while saving, which suits models up to a few
billion parameters; past that, the sharded DCP folder (``sharded.py``) is the one to use.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from llm.model.config import ModelConfig
from llm.model.encoders import build_model
from llm.train.checkpoint.full import load_checkpoint, save_checkpoint

MakeOptimizer = Callable[[nn.Module], torch.optim.Optimizer]


def _by_index(state: dict[str, Any]) -> dict[str, Any]:
    """A name-keyed optimizer state dict (DCP's format) -> torch's index-keyed one."""
    index: dict[str, int] = {}
    groups = [
        {**g, "params": [index.setdefault(name, len(index)) for name in g["params"]]}
        for g in state["param_groups"]
    ]
    return {"state": {index[k]: v for k, v in state["state"].items()}, "param_groups": groups}


def _by_name(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """torch's index-keyed optimizer state dict -> the name-keyed one DCP loads."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    state = optimizer.state_dict()
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {order[i]: v for i, v in state["state"].items()}, "param_groups": groups}


def save_fsdp_checkpoint(
    directory: Path,
    *,
    model: nn.Module,
    config: ModelConfig,
    optimizer: torch.optim.Optimizer,
    make_optimizer: MakeOptimizer,
    trainer_state: dict[str, Any],
) -> Path | None:
    """Collective: gather to rank 0, which writes a plain checkpoint; returns it on rank 0."""
    # imported here, as in llm.train.checkpoint.sharded: only FSDP runs need DTensor's machinery
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    if dist.get_rank() != 0:
        return None
    plain = build_model(config)
    plain.load_state_dict(model_state)
    plain_optimizer = make_optimizer(plain)
    plain_optimizer.load_state_dict(_by_index(optim_state))
    return save_checkpoint(
        directory,
        model=plain,
        config=config,
        optimizer=plain_optimizer,
        trainer_state=trainer_state,
    )


def load_fsdp_checkpoint(
    directory: Path,
    *,
    model: nn.Module,
    config: ModelConfig,
    optimizer: torch.optim.Optimizer,
    make_optimizer: MakeOptimizer,
) -> dict[str, Any]:
    """Collective: every rank reads the full checkpoint and keeps its shards; returns
    trainer_state."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    plain = build_model(config)
    plain_optimizer = make_optimizer(plain)
    _, state = load_checkpoint(directory, model=plain, optimizer=plain_optimizer)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, plain.state_dict(), options=options)
    set_optimizer_state_dict(model, optimizer, _by_name(plain_optimizer, plain), options=options)
    return state
