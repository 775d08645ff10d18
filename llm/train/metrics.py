"""Throughput, utilisation and memory figures, and TensorBoard event files."""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import torch

# dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, FLOP/s per device
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def device_peak_flops(device: torch.device, configured: float | None) -> float | None:
    """The configured peak, else the table's entry for this GPU; None (no MFU) on CPUs."""
    if configured is not None:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak of all devices used."""
    return flops_per_token * tokens_per_s / peak_flops


def peak_memory_gb(device: torch.device) -> float:
    """Peak CUDA memory allocated by torch, or the process's peak resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9


class TensorBoard:
    """Scalars to out_dir/tensorboard via torch's SummaryWriter (needs the tensorboard package)."""

    def __init__(self, directory: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ValueError(
                "TrainConfig.tensorboard=True needs the tensorboard package; "
                "pip install tensorboard, or set tensorboard=False"
            ) from e
        self.writer: Any = SummaryWriter(str(directory))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
