"""LoRA checkpoints: the adapter saved alone, bound to the base checkpoint it was trained on.

An adapter checkpoint is a checkpoint folder (``layout``) whose weights are the adapter's:
    adapter_model.safetensors   the LoRA tensors only (peft's file names)
    adapter_config.json         rank, alpha, dropout, targets; the base checkpoint's URI and
                                the sha256 of its weights
    config.json, optimizer.pt (of the adapter's tensors), trainer_state.json ("layout":
    "adapter") as in any checkpoint
An adapter on a base other than its own computes nonsense without any error, so loading one
checks the base's weights against the fingerprint first.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import nn

from llm.model.lora import (
    adapter_base,
    adapter_state,
    load_adapter_state,
    lora_settings,
)
from llm.train.checkpoint.layout import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_FILE,
    DCP_DIR,
    MODEL_FILE,
    require,
)

ADAPTER_FORMAT = "llmforge.lora/1"


class AdapterBaseMismatch(ValueError):
    """The base named for an adapter is not the base it was trained on."""


def weights_fingerprint(checkpoint: str | Path) -> str:
    """sha256 of a checkpoint's weights: model.safetensors, or every file of a DCP folder (so
    the same weights saved sharded have another fingerprint)."""
    folder = Path(checkpoint)
    if (folder / MODEL_FILE).is_file():
        files = [folder / MODEL_FILE]
    else:
        files = sorted(p for p in (folder / DCP_DIR).rglob("*") if p.is_file())
        if not files:
            raise FileNotFoundError(f"{folder} holds neither {MODEL_FILE} nor {DCP_DIR}/")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def write_adapter(folder: Path, model: nn.Module) -> None:
    """The adapter's two files, into folder."""
    base, fingerprint = adapter_base(model)
    config = {
        "format": ADAPTER_FORMAT,
        "peft_type": "LORA",
        **lora_settings(model).to_dict(),
        "base_checkpoint": base,
        "base_fingerprint": fingerprint,
    }
    # safetensors refuses views that share storage: give each tensor its own
    tensors = {k: v.detach().contiguous().clone() for k, v in adapter_state(model).items()}
    safetensors.torch.save_file(tensors, str(folder / ADAPTER_FILE))
    (folder / ADAPTER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def read_adapter_config(folder: str | Path) -> dict[str, Any]:
    path = require(Path(folder) / ADAPTER_CONFIG_FILE)
    config = json.loads(path.read_text())
    if not isinstance(config, dict) or config.get("format") != ADAPTER_FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise ValueError(f"{path}: format must be {ADAPTER_FORMAT!r}, got {found!r}")
    return config


def check_base(adapter: str | Path, base: str | Path, base_uri: str | None = None) -> None:
    """Refuse base (a local checkpoint folder; base_uri: how the caller named it) unless its
    weights are the ones the adapter was trained on."""
    config = read_adapter_config(adapter)
    expected = config.get("base_fingerprint")
    if not expected:
        return  # made by hand, without a recorded base: nothing to check against
    found = weights_fingerprint(base)
    if found != expected:
        raise AdapterBaseMismatch(
            f"adapter {adapter} was trained on base {config.get('base_checkpoint')} (weights "
            f"{expected[:19]}…), but {base_uri or base} has other weights ({found[:19]}…): "
            "name the adapter's own base"
        )


def load_adapter_weights(folder: str | Path, model: nn.Module) -> None:
    """The adapter's tensors into model, which carries an adapter of the same settings."""
    tensors = safetensors.torch.load_file(str(require(Path(folder) / ADAPTER_FILE)))
    device = next(model.parameters()).device
    load_adapter_state(model, {k: v.to(device) for k, v in tensors.items()})
