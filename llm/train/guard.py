"""Loss-spike and NaN guard: decide per step whether the optimizer may step.

A non-finite loss (or, without a GradScaler, a non-finite gradient norm) or a loss above
spike_factor x the running mean (EMA) of accepted losses skips the step. After
max_consecutive_spikes skipped steps in a row the caller rolls back to the last checkpoint.
The caller feeds the same global loss on every rank, so all ranks decide alike.
"""

from __future__ import annotations

import math
from typing import Any

_EMA_DECAY = 0.9  # about the last ten steps: fast enough to track a falling loss
_MIN_EMA_STEPS = 5  # the first losses move too fast for a spike test to mean anything


class SpikeGuard:
    def __init__(self, spike_factor: float | None, max_consecutive: int) -> None:
        self.spike_factor = spike_factor
        self.max_consecutive = max_consecutive
        self.ema: float | None = None
        self.ema_steps = 0
        self.consecutive = 0
        self.skipped = 0
        self.rollbacks = 0

    def _is_spike(self, loss: float) -> bool:
        if self.spike_factor is None or self.ema is None or self.ema_steps < _MIN_EMA_STEPS:
            return False
        return loss > self.spike_factor * self.ema

    def accept(self, loss: float, grad_norm: float, *, check_grad_norm: bool = True) -> bool:
        """True if the optimizer may step; a rejected step counts as skipped."""
        bad_norm = check_grad_norm and not math.isfinite(grad_norm)
        if not math.isfinite(loss) or bad_norm or self._is_spike(loss):
            self.consecutive += 1
            self.skipped += 1
            return False
        self.consecutive = 0
        self.ema = loss if self.ema is None else _EMA_DECAY * self.ema + (1 - _EMA_DECAY) * loss
        self.ema_steps += 1
        return True

    @property
    def must_roll_back(self) -> bool:
        return self.consecutive >= self.max_consecutive

    def state_dict(self) -> dict[str, Any]:
        return {
            "ema": self.ema,
            "ema_steps": self.ema_steps,
            "consecutive": self.consecutive,
            "skipped": self.skipped,
            "rollbacks": self.rollbacks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = state["ema"]
        self.ema_steps = int(state["ema_steps"])
        self.consecutive = int(state["consecutive"])
        self.skipped = int(state["skipped"])
        self.rollbacks = int(state["rollbacks"])
