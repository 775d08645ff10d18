"""The trainer's configuration: one flat dataclass that checks itself when built.

The same dataclass is the train job spec's training fields (pydantic validates it there, running
``__post_init__``), so a setting has one name, one default and one rule everywhere. What depends
on the run itself (the device, the world size) is checked by ``check_config`` before the first
step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only a type here: the config is read where torch is not installed
    import torch

SCHEDULES = ("cosine", "linear", "wsd")
OPTIMIZERS = ("adamw", "adafactor", "sgd")
PRECISIONS = ("fp32", "bf16", "fp16")
PARALLELISMS = ("ddp", "fsdp")
FSDP_CHECKPOINTS = ("sharded", "full")
# the objective each model arch trains on (llm.train.pretrain picks it by the arch)
OBJECTIVES = {"decoder": "causal_lm", "encoder": "masked_lm", "encoder_decoder": "span_corruption"}


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch_size: int = 8  # sequences (or examples) per rank per micro-step
    seq_len: int | None = None  # None: the model's block_size
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
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still logged)
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 20
    checkpoint_every: int = 100
    keep_last: int | None = 3  # the newest K checkpoints plus the best; None keeps every one
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
    # None: the model arch's (OBJECTIVES); given, it must be that one (the spec checks)
    objective: str | None = None
    # the objective's noise, by the model's arch: masked LM (encoder), span corruption (T5)
    mask_prob: float = 0.15  # encoder: share of tokens chosen for prediction
    noise_density: float = 0.15  # encoder_decoder: share of each window cut out into spans
    mean_span: float = 3.0  # encoder_decoder: mean length of those spans

    def __post_init__(self) -> None:
        _choice("precision", self.precision, PRECISIONS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("parallelism", self.parallelism, PARALLELISMS)
        _choice("fsdp_checkpoint", self.fsdp_checkpoint, FSDP_CHECKPOINTS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.objective is not None:
            _choice("objective", self.objective, tuple(OBJECTIVES.values()))
        self._check_counts()
        self._check_rates()

    def _check_counts(self) -> None:
        for name in ("steps", "batch_size", "log_every", "eval_every", "eval_batches"):
            _at_least(name, getattr(self, name), 1)
        _at_least("checkpoint_every", self.checkpoint_every, 1)
        _at_least("warmup_steps", self.warmup_steps, 0)
        _at_least("max_rollbacks", self.max_rollbacks, 0)
        for name in ("seq_len", "keep_last", "global_batch_tokens"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        _at_least("max_consecutive_spikes", self.max_consecutive_spikes, 1)

    def _check_rates(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr}")
        for name in ("min_lr", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.eps <= 0:
            raise ValueError(f"TrainConfig.eps must be positive, got {self.eps}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(
                f"TrainConfig.decay_fraction must be in [0, 1], got {self.decay_fraction}"
            )
        if self.spike_factor is not None and self.spike_factor <= 1.0:
            raise ValueError(
                f"TrainConfig.spike_factor must be > 1 or None, got {self.spike_factor}"
            )
        for name in ("mask_prob", "noise_density"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be in (0, 1), got {getattr(self, name)}")
        if self.mean_span < 1:
            raise ValueError(f"TrainConfig.mean_span must be >= 1, got {self.mean_span}")
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise ValueError(f"TrainConfig.peak_flops must be positive, got {self.peak_flops}")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"TrainConfig.{name} must be one of {list(allowed)}, got {value!r}")


def _at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"TrainConfig.{name} must be an int >= {low}, got {value!r}")


def check_config(
    cfg: TrainConfig, *, seq_len: int | None, world_size: int, device: torch.device
) -> int:
    """Raise ValueError where the run cannot honour cfg; return the micro-steps per step."""
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"TrainConfig.precision='fp16' needs a CUDA GPU, but this run is on {device.type}: "
            "the hardware lacks fp16 loss scaling (torch.amp.GradScaler); use 'bf16' or 'fp32'"
        )
    return micro_steps(cfg, seq_len, world_size)


def micro_steps(cfg: TrainConfig, seq_len: int | None, world_size: int) -> int:
    """global_batch_tokens / (batch_size x seq_len x world_size), which must be whole."""
    if cfg.global_batch_tokens is None:
        return 1
    if seq_len is None:
        raise ValueError("TrainConfig.global_batch_tokens needs sequences of one length")
    per_pass = cfg.batch_size * seq_len * world_size
    if cfg.global_batch_tokens % per_pass:
        raise ValueError(
            f"TrainConfig.global_batch_tokens ({cfg.global_batch_tokens}) must be a positive "
            f"multiple of batch_size ({cfg.batch_size}) x seq_len ({seq_len}) x "
            f"world_size ({world_size}) = {per_pass} tokens"
        )
    return cfg.global_batch_tokens // per_pass
