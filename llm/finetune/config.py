"""Fine-tuning's training settings: pretraining's TrainConfig with fine-tuning's defaults, and
DPO's own settings, and LoRA's (``llm.model.lora`` applies them).

Apart from the trainer (no torch here), so the fine-tune job spec can show these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm.train.config import TrainConfig

# Fine-tuning's own defaults, where they differ from pretraining's
SFT_DEFAULTS: dict[str, Any] = {
    "lr": 1e-4,  # fine-tuning moves far less than pretraining: 10-30x lower peak
    "min_lr": 1e-5,
    "warmup_steps": 10,
    "weight_decay": 0.0,  # Alpaca and most SFT recipes use none
    "eval_every": 50,
    "spike_factor": None,  # losses vary too much between examples for a spike test; NaN skips
}


def finetune_config(**fields: Any) -> TrainConfig:
    """A TrainConfig with fine-tuning's defaults under the given fields."""
    return TrainConfig(**{**SFT_DEFAULTS, **fields})


@dataclass(frozen=True)
class DPOConfig:
    """Direct Preference Optimization's own settings (``llm.finetune.dpo``)."""

    beta: float = 0.1  # the implicit KL penalty: how far the policy may move from the reference
    label_smoothing: float = 0.0  # cDPO: the assumed probability that a preference is flipped
    reference_free: bool = False  # no reference model: a uniform one, whose log-probs are 0

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


LORA_TARGETS = ("qkv", "proj", "fc")  # every matmul of a block: attention and MLP


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8  # the rank of each update B @ A
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # on the adapter's input only
    target_modules: tuple[str, ...] = LORA_TARGETS  # last names of the linears to adapt

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module")

    def to_dict(self) -> dict[str, Any]:
        return {
            "r": self.r,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "target_modules": list(self.target_modules),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoraSettings:
        return cls(
            r=int(d["r"]),
            alpha=float(d["alpha"]),
            dropout=float(d["dropout"]),
            target_modules=tuple(d["target_modules"]),
        )
