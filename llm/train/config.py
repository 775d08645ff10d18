"""The training loop's configuration (one flat dataclass) and its checks before the first step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm.train.optim import OPTIMIZERS, SCHEDULES

PRECISIONS = ("fp32", "bf16", "fp16")
PARALLELISMS = ("ddp", "fsdp")
FSDP_CHECKPOINTS = ("sharded", "full")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch_size: int = 8  # sequences per rank per micro-step
    seq_len: int = 128
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 30
    schedule: str = "cosine"  # one of SCHEDULES
    decay_fraction: float = 0.2  # wsd only: share of steps spent decaying
    weight_decay: float = 0.1
    optimizer: str = "adamw"  # one of OPTIMIZERS
    decay_embeddings: bool = True
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 20
    checkpoint_every: int = 100
    keep_last: int | None = None  # None keeps every checkpoint; else the newest K plus the best
    fsdp_checkpoint: str = "sharded"  # FSDP: "sharded" (DCP, per rank) or "full" (gathered)
    precision: str = "fp32"  # autocast dtype; master weights stay fp32
    global_batch_tokens: int | None = None  # None: one micro-step per optimizer step
    parallelism: str = "ddp"  # how to spread over ranks when world_size > 1
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile each block (FSDP) or the whole model
    spike_factor: float | None = 2.0  # skip a step whose loss exceeds this x its EMA
    max_consecutive_spikes: int = 3  # then roll back to the last checkpoint
    rollback_skips_data: bool = True  # after a roll-back, do not replay the batches since it
    max_rollbacks: int = 5
    peak_flops: float | None = None  # per device, for MFU; None: look the device up
    tensorboard: bool = False  # event files in out_dir/tensorboard (rank 0)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"TrainConfig.{name} must be one of {list(allowed)}, got {value!r}")


def check_config(cfg: TrainConfig, *, world_size: int, device: torch.device) -> int:
    """Raise ValueError on a bad combination; return the micro-steps per optimizer step."""
    _choice("precision", cfg.precision, PRECISIONS)
    _choice("schedule", cfg.schedule, SCHEDULES)
    _choice("parallelism", cfg.parallelism, PARALLELISMS)
    _choice("fsdp_checkpoint", cfg.fsdp_checkpoint, FSDP_CHECKPOINTS)
    _choice("optimizer", cfg.optimizer, OPTIMIZERS)
    if cfg.keep_last is not None and cfg.keep_last < 1:
        raise ValueError(f"TrainConfig.keep_last must be at least 1 or None, got {cfg.keep_last}")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"TrainConfig.precision='fp16' needs a CUDA GPU, but this run is on {device.type}: "
            "the hardware lacks fp16 loss scaling (torch.amp.GradScaler); use 'bf16' or 'fp32'"
        )
    if not 0.0 <= cfg.decay_fraction <= 1.0:
        raise ValueError(f"TrainConfig.decay_fraction must be in [0, 1], got {cfg.decay_fraction}")
    if cfg.spike_factor is not None and cfg.spike_factor <= 1.0:
        raise ValueError(f"TrainConfig.spike_factor must be > 1 or None, got {cfg.spike_factor}")
    if cfg.max_consecutive_spikes < 1:
        raise ValueError(
            f"TrainConfig.max_consecutive_spikes must be >= 1, got {cfg.max_consecutive_spikes}"
        )
    if cfg.peak_flops is not None and cfg.peak_flops <= 0:
        raise ValueError(f"TrainConfig.peak_flops must be positive, got {cfg.peak_flops}")
    return micro_steps(cfg, world_size)


def micro_steps(cfg: TrainConfig, world_size: int) -> int:
    """global_batch_tokens / (batch_size x seq_len x world_size), which must be whole."""
    per_pass = cfg.batch_size * cfg.seq_len * world_size
    if cfg.global_batch_tokens is None:
        return 1
    if cfg.global_batch_tokens <= 0 or cfg.global_batch_tokens % per_pass:
        raise ValueError(
            f"TrainConfig.global_batch_tokens ({cfg.global_batch_tokens}) must be a positive "
            f"multiple of batch_size ({cfg.batch_size}) x seq_len ({cfg.seq_len}) x "
            f"world_size ({world_size}) = {per_pass} tokens"
        )
    return cfg.global_batch_tokens // per_pass
