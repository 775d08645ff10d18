"""Checkpoints as plain folders (see ``layout`` for what one holds), written so a crash
mid-save never leaves a half checkpoint, and kept by one retention policy (``retention``)."""

from llm.train.checkpoint.adapter import AdapterBaseMismatch, check_base, weights_fingerprint
from llm.train.checkpoint.full import load_adapted, load_checkpoint, load_model, save_checkpoint
from llm.train.checkpoint.layout import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_FILE,
    CLASSIFIER_KEY,
    CONFIG_FILE,
    DCP_DIR,
    FORMAT,
    MODEL_FILE,
    STATE_FILE,
    move_into_place,
    read_state,
    step_dir,
)
from llm.train.checkpoint.retention import (
    Retention,
    best_checkpoint,
    complete_checkpoints,
    latest_checkpoint,
    prune_checkpoints,
    record_best,
)
from llm.train.checkpoint.store import Layout, layout_for, restore, save

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_FILE",
    "CLASSIFIER_KEY",
    "CONFIG_FILE",
    "DCP_DIR",
    "FORMAT",
    "MODEL_FILE",
    "STATE_FILE",
    "AdapterBaseMismatch",
    "Layout",
    "Retention",
    "best_checkpoint",
    "check_base",
    "complete_checkpoints",
    "latest_checkpoint",
    "layout_for",
    "load_adapted",
    "load_checkpoint",
    "load_model",
    "move_into_place",
    "prune_checkpoints",
    "read_state",
    "record_best",
    "restore",
    "save",
    "save_checkpoint",
    "step_dir",
    "weights_fingerprint",
]
