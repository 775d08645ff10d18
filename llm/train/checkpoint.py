"""Checkpoints as plain folders, written so a crash mid-save never leaves a half checkpoint.

A checkpoint folder holds:
    model.safetensors    weights (safetensors dedupes the tied embedding / LM head)
    config.json          the ModelConfig
    optimizer.pt         optimizer.state_dict(), only when an optimizer was given
    trainer_state.json   the caller's trainer_state plus "optimizer_file" and "format"

FSDP runs write sharded checkpoints instead (``llm.train.sharded``: a ``dcp/`` folder in place
of the two weight files, "layout": "dcp" in trainer_state.json); every loader here reads both.

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
DCP_DIR = "dcp"
DCP_LAYOUT = "dcp"
_RESERVED_KEYS = ("format", "optimizer_file", "layout")
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


def fsync_tree(folder: Path) -> None:
    """Flush every file under folder, so a rename never outlives the data on disk."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            _fsync(path)


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
    fsync_tree(folder)


def move_into_place(tmp: Path, target: Path) -> None:
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
        move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path.name} not found in {path.parent}")
    return path


def read_state(directory: Path) -> dict[str, Any]:
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
    state = read_state(directory)
    if state.get("layout") == DCP_LAYOUT:
        from llm.train.sharded import load_sharded_checkpoint  # it imports this module

        if model is not None:
            load_sharded_checkpoint(directory, model=model, optimizer=optimizer)
        elif optimizer is not None:
            raise ValueError(f"{directory}: sharded optimizer state loads only with its model")
        return config, {k: v for k, v in state.items() if k not in _RESERVED_KEYS}
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
    if (directory / DCP_DIR).is_dir():
        from llm.train.sharded import load_sharded_checkpoint  # it imports this module

        load_sharded_checkpoint(directory, model=model, optimizer=None)
    else:
        safetensors.torch.load_model(model, _require(directory / MODEL_FILE), device=device)
    return model.eval()


def _is_complete(folder: Path) -> bool:
    try:
        state = read_state(folder)
    except (OSError, ValueError):
        return False
    if state.get("layout") == DCP_LAYOUT:
        return (folder / CONFIG_FILE).is_file() and (folder / DCP_DIR / ".metadata").is_file()
    needed = [CONFIG_FILE, MODEL_FILE]
    if state.get("optimizer_file") is not None:
        needed.append(state["optimizer_file"])
    return all((folder / name).is_file() for name in needed)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete root/step_N folder with the highest N, or None if there is none.

    Hidden in-progress (.tmp-*) and set-aside (.old-*) folders never match step_N.
    """
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


BEST_FILE = "best.json"


def complete_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete root/step_N checkpoint, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.fullmatch(child.name)
        if match and child.is_dir() and _is_complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def best_checkpoint(root: str | Path) -> dict[str, Any] | None:
    """root/best.json ({"step", "val_loss", "path"}) when a validated checkpoint was kept."""
    path = Path(root) / BEST_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def record_best(root: str | Path, step: int, val_loss: float) -> None:
    """Point root/best.json at step's checkpoint (written aside and renamed: never half)."""
    root = Path(root)
    entry = {"step": step, "val_loss": val_loss, "path": step_dir(root, step).name}
    tmp = root / f".{BEST_FILE}.tmp"
    tmp.write_text(json.dumps(entry, indent=2) + "\n")
    os.replace(tmp, root / BEST_FILE)


def prune_checkpoints(root: str | Path, keep_last: int, *, keep_steps: set[int]) -> list[Path]:
    """Delete all but the newest keep_last complete checkpoints and those in keep_steps (the
    best one); return what was deleted. Incomplete folders are left for the next save to
    replace, since one may be another rank's save in progress."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    found = complete_checkpoints(root)
    newest = {step for step, _ in found[-keep_last:]}
    removed = []
    for step, folder in found:
        if step not in newest and step not in keep_steps:
            shutil.rmtree(folder)
            removed.append(folder)
    return removed
