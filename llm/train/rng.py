"""torch's RNG states as JSON strings in trainer_state.json, so a resumed run draws the same
dropout masks (and every other random number) as one that never stopped."""

from __future__ import annotations

import base64
from typing import Any

import torch


def _encode(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode()


def _decode(text: str) -> torch.Tensor:
    return torch.ByteTensor(list(base64.b64decode(text)))


def capture(device: torch.device) -> dict[str, str]:
    """{"torch_rng"} plus {"cuda_rng"} on a GPU: the keys trainer_state.json holds."""
    state = {"torch_rng": _encode(torch.get_rng_state())}
    if device.type == "cuda":
        state["cuda_rng"] = _encode(torch.cuda.get_rng_state(device))
    return state


def restore(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(_decode(state["torch_rng"]))
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(_decode(state["cuda_rng"]), device)
