"""A completion request's sampling parameters, checked with errors that name the field."""

from __future__ import annotations

import math
from dataclasses import dataclass

from llm.serve.errors import ParamError


@dataclass(frozen=True)
class SamplingParams:
    """Per request: how each choice samples its tokens and when it stops (OpenAI's meanings)."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int | None = None
    stop: tuple[str, ...] = ()  # the completion ends before the first of these it produces
    n: int = 1  # choices per prompt
    seed: int | None = None  # choice i samples from its own generator seeded seed + i
    logprobs: int | None = None  # None: none; k: each token's logprob and the k most likely
    echo: bool = False  # the prompt's text (and logprobs) come before the completion
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False  # generate max_tokens regardless of EOS (benchmarks)

    def validate(self) -> None:
        checks = [
            ("max_tokens", self.max_tokens >= 0, "must be >= 0"),
            ("temperature", 0 <= self.temperature <= 2, "must be in [0, 2] (0 means greedy)"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", self.top_k is None or self.top_k >= 1, "must be >= 1 or null"),
            ("n", self.n >= 1, "must be >= 1"),
            ("logprobs", self.logprobs is None or self.logprobs >= 0, "must be >= 0 or null"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "must be in [-2, 2]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "must be in [-2, 2]"),
            ("stop", all(self.stop), "stop strings must not be empty"),
        ]
        for field, ok, message in checks:
            if not ok:
                raise ParamError(field, message)
        for field in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
            if not math.isfinite(getattr(self, field)):
                raise ParamError(field, "must be a finite number")

    @property
    def penalised(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0
