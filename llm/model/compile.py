"""torch.compile as an option, for training and generation, where the platform supports it."""

from __future__ import annotations

import shutil
import sys
import warnings

import torch
from torch import nn


def compile_supported(device: str = "cpu") -> tuple[bool, str]:
    """Whether torch.compile's default backend (inductor) can run here, and if not, why."""
    if sys.platform == "win32":
        return False, "inductor does not support Windows"
    if device == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        return False, "inductor on CPU needs a C++ compiler (c++ or g++ on PATH)"
    if device.startswith("cuda") and not torch.cuda.is_available():
        return False, "CUDA is not available"
    return True, ""


def compile_model(model: nn.Module, device: str = "cpu", backend: str = "inductor") -> nn.Module:
    """The model compiled with dynamic shapes, or unchanged (with a warning) where unsupported.

    Dynamic shapes keep generation from recompiling for every KV-cache length and batch size.
    backend="aot_eager" traces forward and backward without generating code (fast, for tests).
    The compiled module shares the original's parameters, so optimizers and checkpoints see the
    same tensors; generation unwraps it to read the config.
    """
    ok, why = compile_supported(device) if backend == "inductor" else (True, "")
    if not ok:
        warnings.warn(f"torch.compile skipped: {why}", stacklevel=2)
        return model
    compiled: nn.Module = torch.compile(model, dynamic=True, backend=backend)  # type: ignore[assignment]
    return compiled
