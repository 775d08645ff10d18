"""Parallelism applied to a plain single-device model from outside, in torchtitan's order:
activation checkpointing, then compile, then FSDP2 (per block, then the root) or DDP.

How FSDP runs save and restore checkpoints is ``llm.train.checkpoint``'s business.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from llm.model.compile import compile_supported
from llm.model.gpt import GPT


def _loaded(module: str, name: str) -> Any:
    """A class of a torch module imported only where it is used, or None before that: FSDP,
    activation checkpointing and DTensor bring DTensor's ops and sympy, about 2.4 s of every
    DDP or single-process start that never uses them. A model cannot be an FSDPModule, nor a
    norm a DTensor, before their module was imported."""
    loaded = sys.modules.get(module)
    return getattr(loaded, name) if loaded is not None else None


def pick_device() -> torch.device:
    """This rank's GPU (LOCAL_RANK, set by torchrun and Ray Train) if there is one, else CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    index = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def parallelize(
    model: GPT,
    *,
    parallelism: str,
    world_size: int,
    activation_checkpointing: bool,
    compile_model: bool,
) -> nn.Module:
    """Apply the switches to model in place; return the module to call for training."""
    if parallelism == "fsdp" and not dist.is_initialized():
        raise ValueError(
            "TrainConfig.parallelism='fsdp' needs an initialised torch.distributed process "
            "group (a world of one is fine)"
        )
    if compile_model:
        device = next(model.parameters()).device.type
        supported, why = compile_supported(device)
        if not supported:  # before the first step, not as an inductor error mid-run
            raise ValueError(f"TrainConfig.compile=True cannot run here: {why}")
    if activation_checkpointing:
        from torch.distributed._composable import checkpoint as checkpoint_activations
    if parallelism == "fsdp":
        from torch.distributed.fsdp import fully_shard
    for block in model.blocks:
        # the composable checkpoint keeps parameter names, so checkpoints stay interchangeable
        if activation_checkpointing:
            checkpoint_activations(block)
        if compile_model and parallelism == "fsdp":
            block.compile()  # per block: FSDP's all-gathers sit between compiled regions
    if compile_model and parallelism != "fsdp":
        model.compile()
    if parallelism == "fsdp":
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    return DistributedDataParallel(model) if world_size > 1 else model


def sync_gradients(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """Skip the gradient all-reduce on all but the last micro-step of an accumulation."""
    if isinstance(model, DistributedDataParallel) and not sync:
        return model.no_sync()
    fsdp_module = _loaded("torch.distributed.fsdp", "FSDPModule")
    if fsdp_module is not None and isinstance(model, fsdp_module):
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip in place and return the global gradient norm (a DTensor under FSDP)."""
    norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    dtensor = _loaded("torch.distributed.tensor", "DTensor")
    if dtensor is not None and isinstance(norm, dtensor):
        norm = norm.full_tensor()
    return float(norm)
