"""Mixed precision: autocast for the forward pass, loss scaling for fp16.

The parameters and optimizer state stay fp32 (master weights); autocast only runs the matmuls
in bf16/fp16. bf16 has fp32's exponent range and needs no loss scaling; fp16 does, so its
gradients pass through a GradScaler whose state is saved with every checkpoint.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context the forward pass (not the backward) runs in."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (CUDA only; check_config refuses fp16 elsewhere), else None."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def scaler_state(scaler: torch.amp.GradScaler | None) -> dict[str, float] | None:
    """GradScaler state as plain JSON numbers, for trainer_state.json."""
    if scaler is None:
        return None
    return {k: float(v) for k, v in scaler.state_dict().items()}


def load_scaler_state(scaler: torch.amp.GradScaler | None, state: dict[str, float] | None) -> None:
    if scaler is None or state is None:
        return
    restored: dict[str, Any] = dict(state)
    # JSON turned the int counter into a float; GradScaler keeps it as an int
    restored["_growth_tracker"] = int(restored["_growth_tracker"])
    restored["growth_interval"] = int(restored["growth_interval"])
    scaler.load_state_dict(restored)
