"""The on-disk contract of a checkpoint folder, shared by every way of writing one.

A checkpoint folder holds:
    model.safetensors    weights (safetensors dedupes the tied embedding / LM head)
    config.json          the ModelConfig
    optimizer.pt         optimizer.state_dict(), only when an optimizer was given
    trainer_state.json   the caller's trainer_state plus "optimizer_file" and "format"

Sharded (FSDP, DCP) checkpoints hold a ``dcp/`` folder in place of the two weight files and
"layout": "dcp" in trainer_state.json; LoRA checkpoints hold the adapter alone in place of
model.safetensors (``adapter``) and "layout": "adapter". Every writer builds the folder under a
hidden sibling name and renames it into place, so readers see either the previous checkpoint or
the new one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from llm.model.config import ModelConfig

FORMAT = "llmforge.checkpoint/1"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"
DCP_DIR = "dcp"
DCP_LAYOUT = "dcp"
ADAPTER_FILE = "adapter_model.safetensors"  # peft's names for an adapter's files
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_LAYOUT = "adapter"
RESERVED_KEYS = ("format", "optimizer_file", "layout")
# the trainer_state section of a classifier's checkpoint (llm.finetune.classify): its weights
# are a backbone under a classification head, not a language model
CLASSIFIER_KEY = "classifier"
STEP_DIR = re.compile(r"step_(\d+)")


def step_dir(root: str | Path, step: int) -> Path:
    """The folder name latest_checkpoint looks for: root/step_00001234."""
    return Path(root) / f"step_{step:08d}"


def require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path.name} not found in {path.parent}")
    return path


def read_state(directory: Path) -> dict[str, Any]:
    """trainer_state.json as written, reserved keys included; checks the format tag."""
    state = json.loads(require(directory / STATE_FILE).read_text())
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise ValueError(f"{directory / STATE_FILE}: format must be {FORMAT!r}, got {found!r}")
    return state


def caller_state(state: dict[str, Any]) -> dict[str, Any]:
    """trainer_state exactly as the caller passed it to a save."""
    return {k: v for k, v in state.items() if k not in RESERVED_KEYS}


def is_sharded(directory: str | Path) -> bool:
    return read_state(Path(directory)).get("layout") == DCP_LAYOUT


def check_same_config(own: object, saved: ModelConfig, where: Path) -> None:
    """A model built from another config would load mismatched (or silently reshaped) weights."""
    if isinstance(own, ModelConfig) and own != saved:
        mine, theirs = own.to_dict(), saved.to_dict()
        differ = [name for name in mine if mine[name] != theirs[name]]
        raise ValueError(f"model config differs from {where} in fields {differ}")


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


def is_complete(folder: Path) -> bool:
    """Every file the folder's trainer_state promises is there (a half-copied one is not)."""
    try:
        state = read_state(folder)
    except (OSError, ValueError):
        return False
    if state.get("layout") == DCP_LAYOUT:
        return (folder / CONFIG_FILE).is_file() and (folder / DCP_DIR / ".metadata").is_file()
    needed = [CONFIG_FILE, MODEL_FILE]
    if state.get("layout") == ADAPTER_LAYOUT:
        needed = [CONFIG_FILE, ADAPTER_FILE, ADAPTER_CONFIG_FILE]
    if state.get("optimizer_file") is not None:
        needed.append(state["optimizer_file"])
    return all((folder / name).is_file() for name in needed)
