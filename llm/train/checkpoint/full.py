"""Full checkpoints: the whole model in one safetensors file, written by one process.

Single-process and DDP runs write these (rank 0), and so do FSDP runs that gather their state
(``fsdp_full``); a model carrying a LoRA adapter is saved as the adapter alone (``adapter``).
The loaders here also read sharded (DCP) folders and adapters (onto their base), so inference,
evaluation and export take any checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, cast

import safetensors.torch
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from llm.model.config import ModelConfig
from llm.model.encoders import build_model
from llm.model.gpt import GPT
from llm.model.lora import LoraSettings, add_lora, is_adapted
from llm.train.checkpoint.adapter import (
    check_base,
    load_adapter_weights,
    read_adapter_config,
    write_adapter,
)
from llm.train.checkpoint.layout import (
    ADAPTER_FILE,
    ADAPTER_LAYOUT,
    CLASSIFIER_KEY,
    CONFIG_FILE,
    DCP_DIR,
    DCP_LAYOUT,
    FORMAT,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RESERVED_KEYS,
    STATE_FILE,
    caller_state,
    check_same_config,
    fsync_tree,
    move_into_place,
    read_state,
    require,
)
from llm.train.checkpoint.location import fetch
from llm.train.checkpoint.sharded import load_sharded_checkpoint


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP prefixes every state_dict key with "module."; save the bare model so a checkpoint
    # loads the same with or without DDP
    return model.module if isinstance(model, DistributedDataParallel) else model


def _write_files(
    folder: Path,
    model: nn.Module,
    config: ModelConfig,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict,
) -> None:
    adapted = is_adapted(_unwrap(model))
    state = {
        **trainer_state,
        "optimizer_file": OPTIMIZER_FILE if optimizer is not None else None,
        "format": FORMAT,
        **({"layout": ADAPTER_LAYOUT} if adapted else {}),
    }
    # serialise first: a non-JSON trainer_state should fail before the slow weight writes
    state_text = json.dumps(state, indent=2) + "\n"
    if adapted:
        write_adapter(folder, _unwrap(model))
    else:
        safetensors.torch.save_model(_unwrap(model), str(folder / MODEL_FILE))
    config.save(folder / CONFIG_FILE)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
    (folder / STATE_FILE).write_text(state_text)
    fsync_tree(folder)


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    config: ModelConfig,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict,
) -> Path:
    """Write a checkpoint to directory, replacing any checkpoint already there; return it."""
    target = Path(directory)
    reserved = sorted(k for k in RESERVED_KEYS if k in trainer_state)
    if reserved:
        raise ValueError(f"trainer_state must not contain the reserved keys {reserved}")
    own = getattr(_unwrap(model), "config", None)
    if isinstance(own, ModelConfig) and own != config:
        differ = [k for k, v in config.to_dict().items() if own.to_dict()[k] != v]
        raise ValueError(f"config differs from model.config in fields {differ}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_files(tmp, model, config, optimizer, trainer_state)
        move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[ModelConfig, dict[str, Any]]:
    """Load weights into model and state into optimizer (each if given).

    Returns the saved config and the trainer_state exactly as it was passed to save_checkpoint.
    """
    directory = Path(directory)
    config = ModelConfig.load(require(directory / CONFIG_FILE))
    state = read_state(directory)
    if state.get("layout") == DCP_LAYOUT:
        if model is not None:
            load_sharded_checkpoint(directory, model=model, optimizer=optimizer)
        elif optimizer is not None:
            raise ValueError(f"{directory}: sharded optimizer state loads only with its model")
        return config, caller_state(state)
    if model is not None:
        target = _unwrap(model)
        check_same_config(getattr(target, "config", None), config, directory / CONFIG_FILE)
        device = next(target.parameters()).device
        if state.get("layout") == ADAPTER_LAYOUT:
            if not is_adapted(target):
                raise ValueError(
                    f"{directory} is a LoRA adapter: load it into a model with the adapter "
                    "added (llm.model.lora.add_lora), or with load_model onto its base"
                )
            load_adapter_weights(directory, target)
        else:
            safetensors.torch.load_model(
                target, require(directory / MODEL_FILE), device=str(device)
            )
    if optimizer is not None:
        if state["optimizer_file"] is None:
            raise FileNotFoundError(f"checkpoint {directory} was saved without {OPTIMIZER_FILE}")
        path = require(directory / state["optimizer_file"])
        optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return config, caller_state(state)


def load_model(directory: str | Path, device: str = "cpu") -> GPT:
    """Build the checkpoint's model (a GPT, or the encoder or encoder-decoder its config's arch
    names) from a checkpoint folder, on device and in eval mode, ready for inference. A LoRA
    adapter's folder gives its base with the adapter, unmerged (``load_adapted``)."""
    directory = Path(directory)
    if (directory / ADAPTER_FILE).is_file():
        return load_adapted(directory, device=device)
    config = ModelConfig.load(require(directory / CONFIG_FILE))
    if (directory / STATE_FILE).is_file() and CLASSIFIER_KEY in read_state(directory):
        raise ValueError(
            f"{directory} is a classifier's checkpoint (a {config.arch} under a classification "
            "head), not a language model: load it with llm.finetune.classify.load_classifier"
        )
    model = cast(GPT, build_model(config).to(device))
    if (directory / DCP_DIR).is_dir():
        load_sharded_checkpoint(directory, model=model, optimizer=None)
    else:
        safetensors.torch.load_model(model, require(directory / MODEL_FILE), device=device)
    return model.eval()


def load_adapted(adapter: str | Path, base: str | None = None, device: str = "cpu") -> GPT:
    """The base checkpoint with the adapter at adapter on it (not merged), in eval mode.

    base (a path or URI; default: the one the adapter names) must hold the weights the adapter
    was trained on, else AdapterBaseMismatch.
    """
    adapter = Path(adapter)
    config = read_adapter_config(adapter)
    named = base or config.get("base_checkpoint")
    if not named:
        raise ValueError(f"{adapter} names no base checkpoint: give base")
    local = fetch(named)
    check_base(adapter, local, named)
    model = load_model(local, device=device)
    if is_adapted(model):
        raise ValueError(f"the base {named} is itself an adapter; merge it first")
    add_lora(
        model,
        LoraSettings.from_dict(config),
        base=named,
        base_fingerprint=config.get("base_fingerprint", ""),
    )
    load_adapter_weights(adapter, model)
    return model.eval()
