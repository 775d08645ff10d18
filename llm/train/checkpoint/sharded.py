"""Sharded checkpoints for FSDP2: each rank writes its own shards with torch.distributed.checkpoint.

A sharded checkpoint folder holds:
    dcp/                 the DCP directory (.metadata plus one __<rank>_<n>.distcp per writer):
                         {"model": model state, "optimizer": optimizer state}, keyed by
                         parameter name, so it loads into any world size (DCP reshards)
    config.json          the ModelConfig
    trainer_state.json   the caller's trainer_state plus "format" and "layout": "dcp"

Unlike the full-state path in ``fsdp_full.py`` no rank ever holds the whole model, so this is
the one to use past a few billion parameters. Saving is collective: all ranks write into a
hidden ``.tmp-`` sibling that rank 0 renames into place once every rank has finished, so a
crash mid-save leaves the previous checkpoint whole. Where ranks share no disk, each one's
``.tmp-`` folder is its own: it holds that rank's shards (rank 0's also the metadata) and each
rank renames its own, for ``location`` to upload to object storage. Loading works with or
without a process group: a plain single-process model reads the same folder (``load_model``,
evaluation, export).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from llm.model.config import ModelConfig
from llm.train.checkpoint.layout import (
    CONFIG_FILE,
    DCP_DIR,
    DCP_LAYOUT,
    FORMAT,
    STATE_FILE,
    caller_state,
    check_same_config,
    fsync_tree,
    move_into_place,
    read_state,
)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _dcp() -> tuple[Any, Any, Any]:
    """torch.distributed.checkpoint, its get_state_dict and set_state_dict, imported where a
    sharded checkpoint is read or written: with them come DTensor's ops and sympy, about 2.4 s
    of every process that merely imports the checkpoint package (a DDP worker, an evaluation,
    a job's driver) and never touches a sharded checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    return dcp, get_state_dict, set_state_dict


def save_sharded_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    config: ModelConfig,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
) -> Path:
    """Collective: every rank writes its shards; returns the checkpoint folder on every rank."""
    target = Path(directory)
    # one name for all ranks (they must meet in the same folder), unlike the per-pid tmp of
    # save_checkpoint
    tmp = target.parent / f".tmp-{target.name}"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    # every rank creates it: where ranks share no disk, each stages its own shards in a folder
    # of its own (llm.train.checkpoint.location uploads them)
    tmp.mkdir(parents=True, exist_ok=True)
    dcp, get_state_dict, _ = _dcp()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / DCP_DIR)
    if _rank() == 0:
        config.save(tmp / CONFIG_FILE)
        state = {**trainer_state, "optimizer_file": None, "format": FORMAT, "layout": DCP_LAYOUT}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        fsync_tree(tmp)
        move_into_place(tmp, target)
    _barrier()
    if tmp.is_dir():  # a folder of this rank's own (a shared one rank 0 has moved already)
        fsync_tree(tmp)
        move_into_place(tmp, target)
    return target


def load_sharded_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
) -> dict[str, Any]:
    """Load a sharded checkpoint into model (and optimizer), sharded or plain; returns
    trainer_state. Collective when a process group is initialised."""
    directory = Path(directory)
    saved = ModelConfig.load(directory / CONFIG_FILE)
    check_same_config(getattr(model, "config", None), saved, directory / CONFIG_FILE)
    dcp, get_state_dict, set_state_dict = _dcp()
    if optimizer is None:
        model_state = model.state_dict()
        dcp.load(
            {"model": model_state},
            checkpoint_id=directory / DCP_DIR,
            no_dist=not dist.is_initialized(),
        )
        model.load_state_dict(model_state)
    else:
        model_state, optim_state = get_state_dict(model, optimizer)
        # DCP loads in place into these (sharded) tensors, then they go back into the modules
        dcp.load(
            {"model": model_state, "optimizer": optim_state}, checkpoint_id=directory / DCP_DIR
        )
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
    return caller_state(read_state(directory))
