"""Fine-tuning's training settings: pretraining's TrainConfig with fine-tuning's defaults.

Apart from the trainer (no torch here), so the fine-tune job spec can show these defaults.
"""

from __future__ import annotations

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
