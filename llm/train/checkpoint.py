"""Checkpoints as plain folders, written so a crash mid-save never leaves a half checkpoint.

A checkpoint folder holds:
    model.safetensors    weights (safetensors dedupes the tied embedding / LM head)
    config.json          the ModelConfig
    optimizer.pt         optimizer.state_dict(), only when an optimizer was given
    trainer_state.json   the caller's trainer_state plus "optimizer_file" and "format"

Everything is written into a hidden sibling folder and renamed into place, so readers see
either the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from llm.model.config import ModelConfig
from llm.model.gpt import GPT

FORMAT = "llmforge.checkpoint/1"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"
_RESERVED_KEYS = ("format", "optimizer_file")
_STEP_DIR = re.compile(r"step_(\d+)")


def step_dir(root: str | Path, step: int) -> Path:
    """The folder name latest_checkpoint looks for: root/step_00001234."""
    return Path(root) / f"step_{step:08d}"


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP prefixes every state_dict key with "module."; save the bare model so a checkpoint
    # loads the same with or without DDP
    return model.module if isinstance(model, DistributedDataParallel) else model


def _diff(a: ModelConfig, b: ModelConfig) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [name for name in da if da[name] != db[name]]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_files(
    folder: Path,
    model: nn.Module,
    config: ModelConfig,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict,
) -> None:
    state = {
        **trainer_state,
        "optimizer_file": OPTIMIZER_FILE if optimizer is not None else None,
        "format": FORMAT,
    }
    # serialise first: a non-JSON trainer_state should fail before the slow weight writes
    state_text = json.dumps(state, indent=2) + "\n"
    safetensors.torch.save_model(_unwrap(model), str(folder / MODEL_FILE))
    config.save(folder / CONFIG_FILE)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
    (folder / STATE_FILE).write_text(state_text)
    # flush file contents before the rename, so the rename never outlives the data on disk
    for path in folder.iterdir():
        _fsync(path)


def _move_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
    else:
        # rename() cannot overwrite a non-empty folder: move the old one aside first, and only
        # delete it once the new one is in place
        old = target.parent / f".old-{target.name}-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old)
    _fsync(target.parent)


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
    reserved = sorted(k for k in _RESERVED_KEYS if k in trainer_state)
    if reserved:
        raise ValueError(f"trainer_state must not contain the reserved keys {reserved}")
    model_config = getattr(_unwrap(model), "config", None)
    if isinstance(model_config, ModelConfig) and model_config != config:
        raise ValueError(
            f"config differs from model.config in fields {_diff(config, model_config)}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_files(tmp, model, config, optimizer, trainer_state)
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path.name} not found in {path.parent}")
    return path


def _read_state(directory: Path) -> dict[str, Any]:
    state = json.loads(_require(directory / STATE_FILE).read_text())
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise ValueError(f"{directory / STATE_FILE}: format must be {FORMAT!r}, got {found!r}")
    return state


def load_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[ModelConfig, dict]:
    """Load weights into model and state into optimizer (each if given).

    Returns the saved config and the trainer_state exactly as it was passed to save_checkpoint.
    """
    directory = Path(directory)
    config = ModelConfig.load(_require(directory / CONFIG_FILE))
    state = _read_state(directory)
    if model is not None:
        target = _unwrap(model)
        model_config = getattr(target, "config", None)
        if isinstance(model_config, ModelConfig) and model_config != config:
            raise ValueError(
                f"model config differs from {directory / CONFIG_FILE} in fields "
                f"{_diff(model_config, config)}"
            )
        device = next(target.parameters()).device
        safetensors.torch.load_model(target, _require(directory / MODEL_FILE), device=str(device))
    if optimizer is not None:
        if state["optimizer_file"] is None:
            raise FileNotFoundError(f"checkpoint {directory} was saved without {OPTIMIZER_FILE}")
        path = _require(directory / state["optimizer_file"])
        optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    trainer_state = {k: v for k, v in state.items() if k not in _RESERVED_KEYS}
    return config, trainer_state


def load_model(directory: str | Path, device: str = "cpu") -> GPT:
    """Build a GPT from a checkpoint folder, on device and in eval mode, ready for inference."""
    directory = Path(directory)
    config = ModelConfig.load(_require(directory / CONFIG_FILE))
    model = GPT(config).to(device)
    safetensors.torch.load_model(model, _require(directory / MODEL_FILE), device=device)
    return model.eval()


def _is_complete(folder: Path) -> bool:
    try:
        state = _read_state(folder)
    except (OSError, ValueError):
        return False
    needed = [CONFIG_FILE, MODEL_FILE]
    if state.get("optimizer_file") is not None:
        needed.append(state["optimizer_file"])
    return all((folder / name).is_file() for name in needed)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete root/step_N folder with the highest N, or None if there is none.

    Hidden in-progress (.tmp-*) and set-aside (.old-*) folders never match step_N.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    steps = []
    for child in root.iterdir():
        match = _STEP_DIR.fullmatch(child.name)
        if match and child.is_dir() and _is_complete(child):
            steps.append((int(match.group(1)), child))
    return max(steps)[1] if steps else None
